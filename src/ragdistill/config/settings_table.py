"""The README's "what each stage reads" table, generated from the per-stage settings models (re-exported
by ``config.stages``; ``tests/test_stage_settings.py`` keeps the README's copy current)."""

from __future__ import annotations

from ragdistill.config.ablation import AblationTableSettings
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import (
    CollectSettings,
    DatasetSettings,
    EvaluationSettings,
    ExpertSettings,
    IndexingSettings,
    MiningSettings,
    PromotionSettings,
    ReportSettings,
    RetrainSettings,
    RolloutSettings,
    StageSettings,
    TeacherSettings,
    TrainingSettings,
    WarmStartSettings,
)

STAGE_MODELS: tuple[tuple[str, type[StageSettings] | type[RetrainSettings]], ...] = (
    ("0 warm start", WarmStartSettings),
    ("A rollout", RolloutSettings),
    ("B mine", MiningSettings),
    ("C index", IndexingSettings),
    ("C teach", TeacherSettings),
    ("D expert", ExpertSettings),
    ("D datasets", DatasetSettings),
    ("D train", TrainingSettings),
    ("E evaluate", EvaluationSettings),
    ("E promote", PromotionSettings),
    ("E report", ReportSettings),
    ("loop collect", CollectSettings),
    ("loop retrain", RetrainSettings),
    ("ablation table", AblationTableSettings),
)
"""Every stage's settings model, in pipeline order (the README's table is generated from it)."""


def settings_table() -> str:
    """The README's "what each stage reads" table, generated from the settings models: each stage's
    settings (hashed whole into its identity), the code its identity fingerprints, and what it never
    reads (everything in :class:`RunContext`)."""
    rows = [
        "| stage | settings model (hashed whole) | fields | code fingerprinted |",
        "|---|---|---|---|",
    ]
    for label, model in STAGE_MODELS:
        fields = ", ".join(f"`{name}`" for name in model.model_fields)
        code = f"`{model.CODE}`" if issubclass(model, StageSettings) else "— (a decision, not an output)"
        rows.append(f"| {label} | `{model.__name__}` | {fields} | {code} |")
    context = ", ".join(f"`{name}`" for name in RunContext.model_fields)
    rows.append(f"| never | `RunContext` (where and how) | {context} | — |")
    return "\n".join(rows)
