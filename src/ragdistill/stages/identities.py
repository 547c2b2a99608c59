"""Every stage's identity from its ``(ctx, settings, inputs)``, by the type of its settings model: what
the Prefect tasks' one cache key (``tasks.common``) and the stages themselves compute."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ragdistill.config.ablation import AblationTableSettings
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import (
    CollectSettings,
    DatasetSettings,
    EvaluationSettings,
    ExpertSettings,
    IndexingSettings,
    Inputs,
    MiningSettings,
    PromotionSettings,
    ReportSettings,
    RolloutSettings,
    StageSettings,
    TeacherSettings,
    TrainingSettings,
    WarmStartSettings,
)
from ragdistill.stages.lifecycle import StageIdentity

IdentityFunction = Callable[[RunContext, Any, Inputs], StageIdentity]


def _identities() -> dict[type[StageSettings], IdentityFunction]:
    from ragdistill.stages import (
        ablation,
        collect,
        datasets,
        evaluation,
        expert,
        indexing,
        mining,
        promotion,
        report,
        rollout,
        teaching,
        training,
        warm_start,
    )

    return {
        RolloutSettings: rollout.rollout_identity,
        TeacherSettings: teaching.teacher_identity,
        EvaluationSettings: evaluation.evaluation_identity,
        CollectSettings: collect.collect_identity,
        ExpertSettings: expert.expert_identity,
        MiningSettings: mining.mining_identity,
        IndexingSettings: indexing.indexing_identity,
        DatasetSettings: datasets.dataset_identity,
        TrainingSettings: training.training_identity,
        ReportSettings: report.report_identity,
        PromotionSettings: promotion.promotion_identity,
        WarmStartSettings: warm_start.warm_start_identity,
        AblationTableSettings: ablation.ablation_table_identity,
    }


def identify(ctx: RunContext, settings: StageSettings, inputs: Inputs) -> StageIdentity:
    """The identity the stage of ``settings`` runs under, handed ``inputs``."""
    return _identities()[type(settings)](ctx, settings, inputs)
