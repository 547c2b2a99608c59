"""Per-stage settings and the run context: what each stage's output depends on, and where and how it runs.

A stage function takes ``(ctx, settings, inputs)`` and never sees :class:`ExperimentConfig`:

- :class:`RunContext` — where and how (run root, run name, lease wait, workers, batch and shard sizes,
  engine loading, orchestration). Never hashed: the same stage run elsewhere or faster gives the same
  output.
- one frozen settings model per stage — what. Hashed whole into the stage's identity
  (``stages.lifecycle.StageIdentity``), so a setting a stage reads is part of its identity by
  construction: a stage can only read what its settings model holds.
- ``inputs`` — the content digests of the upstream folders the stage reads, by folder
  (``settings.input_dirs()`` names them).

:class:`PipelineSettings` builds all of them from one experiment config; the CLI and the flows are the
only places that do. Fields in a model's ``GROWABLE`` may change while the finished work in the stage's
folder is kept (a larger task list plays only the new tasks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ragdistill.config.ablation import AblationPoint, AblationTableSettings, ablation_points
from ragdistill.config.experiment import ExperimentConfig
from ragdistill.config.models import RoleConfig
from ragdistill.config.retrieval import HintRules
from ragdistill.config.rollouts import EnvConfig
from ragdistill.config.stage_models import (
    CollectSettings,
    DatasetSettings,
    EnvSettings,
    EvaluationSettings,
    ExperimentRecord,
    ExpertSettings,
    IndexingSettings,
    Inputs,
    MiningSettings,
    PromotionSettings,
    ReportSettings,
    RetrainSettings,
    RetrievalSettings,
    RoleName,
    RoleSettings,
    RolloutSettings,
    RunContext,
    StageSettings,
    TaskSelection,
    TeacherSettings,
    TrainingSettings,
)
from ragdistill.identity import digest
from ragdistill.layout import (
    BASE_STAGE,
    EXPERT_STAGE,
    ROLLOUTS_DIR,
    STUDENTS,
    TEACHER_STAGE,
    collect_stage,
    eval_stage,
    rollout_prefix,
)

__all__ = [
    "STAGE_MODELS",
    "AblationPoint",
    "AblationTableSettings",
    "CollectSettings",
    "DatasetSettings",
    "EnvSettings",
    "EvaluationSettings",
    "ExperimentRecord",
    "ExpertSettings",
    "IndexingSettings",
    "Inputs",
    "MiningSettings",
    "PipelineSettings",
    "PromotionSettings",
    "ReportSettings",
    "RetrainSettings",
    "RetrievalSettings",
    "RoleName",
    "RoleSettings",
    "RolloutSettings",
    "RunContext",
    "StageSettings",
    "TaskSelection",
    "TeacherSettings",
    "TrainingSettings",
    "ablation_points",
    "experiment_record",
    "pipeline_stage_settings",
    "role_settings",
    "run_context",
    "settings_table",
]


def role_settings(config: ExperimentConfig, name: RoleName) -> RoleSettings:
    role: RoleConfig = getattr(config.models, name)
    return RoleSettings(
        name=name,
        model=role.model,
        sampling=role.sampling,
        backend=role.backend.kind,
        served_model_name=role.backend.served_model_name if role.backend.kind == "openai" else None,
    )


def pipeline_stage_settings(config: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Every pipeline stage's settings as JSON, by ``<settings model>:<folder>`` (what each computes)."""
    stages = PipelineSettings(config)
    settings = [
        stages.rollout(),
        stages.mining,
        stages.indexing,
        stages.teacher,
        *(stages.dataset(name) for name in STUDENTS),
        *(stages.training(name) for name in STUDENTS),
        *(stages.evaluation(method) for method in config.evaluation.methods),
    ]
    return {type(item).__name__ + ":" + item.stage_dir(): item.model_dump(mode="json") for item in settings}


def experiment_record(config: ExperimentConfig) -> ExperimentRecord:
    """The experiment ``config`` runs: its run name and environment, and a digest of every stage's
    settings (what it computes, so equal digests mean equal outputs)."""
    dumped = pipeline_stage_settings(config)
    return ExperimentRecord(run_name=config.run.name, env=config.env.name, settings=digest(dumped))


def run_context(config: ExperimentConfig, *, experiment_check: bool = False) -> RunContext:
    """Where and how ``config``'s stages run; ``experiment_check``: each of them checks (and records) the
    run root's experiment first (``stages.experiment``), as every run the CLI or a flow starts does."""
    return RunContext(
        run_root=config.run.run_root,
        run_name=config.run.name,
        env_name=config.env.name,
        lease_wait_s=config.run.lease_wait_s,
        data_dir=config.env.data_dir,
        env_workers=config.env.workers,
        max_games_per_worker=config.env.max_games_per_worker,
        rollout=config.rollout,
        mining_chunk_size=config.mining.chunk_size,
        backends={name: getattr(config.models, name).backend for name in ("agent", "extractor", "reranker")},
        orchestration=config.orchestration,
        allow_unknown_files=config.run.allow_unknown_files,
        experiment=experiment_record(config) if experiment_check else None,
        replace_experiment=config.run.replace_experiment,
    )


@dataclass(frozen=True)
class PipelineSettings:
    """Every stage's settings and the run context, built from one experiment config. ``experiment_check``:
    its stages check and record the run root's experiment (see :func:`run_context`)."""

    config: ExperimentConfig
    experiment_check: bool = False

    @classmethod
    def from_experiment(cls, config: ExperimentConfig, *, experiment_check: bool = False) -> PipelineSettings:
        return cls(config, experiment_check)

    @property
    def ctx(self) -> RunContext:
        return run_context(self.config, experiment_check=self.experiment_check)

    def _env(self) -> EnvSettings:
        return EnvSettings(name=self.config.env.name, options=self.config.env.options)

    def _tasks(self, env: EnvConfig | None = None, **update: Any) -> TaskSelection:
        env = env or self.config.env
        selection = TaskSelection(
            split=env.split,
            limit=env.limit,
            balanced=env.balanced,
            shuffle_seed=env.shuffle_seed,
            task_types=env.task_types,
        )
        return selection.model_copy(update=update)

    def _retrieval(self) -> tuple[RetrievalSettings, RoleSettings | None]:
        retrieval = self.config.retrieval
        settings = RetrievalSettings(
            **retrieval.model_dump(exclude={"group_examples", "exact_index_max"}),
            group_examples=retrieval.group_examples if retrieval.group == "embedding" else None,
        )
        uses_reranker = retrieval.retriever == "llm-rerank" or retrieval.group == "llm"
        return settings, role_settings(self.config, "reranker") if uses_reranker else None

    def rollout(self, stage: str = BASE_STAGE) -> RolloutSettings:
        """Stage A: the base agent on the configured training tasks (``stage``: another folder)."""
        return RolloutSettings(
            stage=stage,
            env=self._env(),
            tasks=self._tasks(),
            agent=self.config.agent,
            role=role_settings(self.config, "agent"),
        )

    @property
    def mining(self) -> MiningSettings:
        mining = self.config.mining
        return MiningSettings(
            rules=HintRules(**mining.model_dump(exclude={"chunk_size"})),
            extractor=role_settings(self.config, "extractor"),
            dedupe_embedding_model=self.config.retrieval.embedding_model
            if mining.dedupe == "embedding"
            else None,
        )

    @property
    def indexing(self) -> IndexingSettings:
        retrieval = self.config.retrieval
        return IndexingSettings(
            embedding_model=retrieval.embedding_model, exact_index_max=retrieval.exact_index_max
        )

    @property
    def teacher(self) -> TeacherSettings:
        retrieval, reranker = self._retrieval()
        return TeacherSettings(
            **self.rollout(TEACHER_STAGE).model_dump(exclude={"source"}),
            retrieval=retrieval,
            reranker=reranker,
        )

    @property
    def expert(self) -> ExpertSettings:
        retrieval, reranker = self._retrieval()
        agent = self.config.models.agent
        return ExpertSettings(
            env=self._env(),
            tasks=self._tasks(limit=self.config.distill.expert_limit or self.config.env.limit),
            agent=self.config.agent,
            tokenizer=agent.model,
            max_tokens=agent.sampling.max_tokens,
            retrieval=retrieval,
            reranker=reranker,
        )

    def teacher_stages(self) -> list[str]:
        """The rollout stages the distill set learns from (``distill.teacher``)."""
        return {"rag": [TEACHER_STAGE], "expert": [EXPERT_STAGE], "both": [TEACHER_STAGE, EXPERT_STAGE]}[
            self.config.distill.teacher
        ]

    def dataset(self, name: Literal["sft", "distill"]) -> DatasetSettings:
        distill = self.config.distill
        stages = [BASE_STAGE] if name == "sft" else self.teacher_stages()
        return DatasetSettings(
            name=name,
            env=self.config.env.name,
            sources=[rollout_prefix(stage) for stage in stages],
            removed=["fewshot"] if name == "sft" else ["hints", "fewshot"],
            max_invalid_actions=distill.max_invalid_actions,
            min_score=distill.min_score,
            overlong=distill.overlong,
            max_seq_len=self.config.training.max_seq_len,
            tokenizer=self.config.models.agent.model,
        )

    def training(self, name: Literal["sft", "distill"]) -> TrainingSettings:
        agent = self.config.models.agent
        return TrainingSettings(
            name=name, training=self.config.training, base_model=agent.model, seed=agent.sampling.seed
        )

    def evaluation(self, method: Literal["base", "rag", "sft", "distill"]) -> EvaluationSettings:
        """``method`` on the evaluation split's tasks, in the environment's default order."""
        evaluation = self.config.evaluation
        base = self.rollout(eval_stage(method)).model_dump(exclude={"tasks", "agent"})
        tasks = TaskSelection(
            split=evaluation.split, limit=evaluation.limit, task_types=self.config.env.task_types
        )
        agent = self.config.agent
        if method in STUDENTS and not evaluation.student_fewshot:
            agent = agent.model_copy(update={"fewshot_source": "none", "fewshot_count": 0})
        if method == "rag":
            retrieval, reranker = self._retrieval()
            base["source"] = "teacher"
            return EvaluationSettings(
                **base, tasks=tasks, agent=agent, method=method, retrieval=retrieval, reranker=reranker
            )
        weights = evaluation.student_weights if method in STUDENTS else None
        return EvaluationSettings(**base, tasks=tasks, agent=agent, method=method, student_weights=weights)

    def collect(self, batch: int) -> CollectSettings:
        """Collect batch ``batch``: positions ``start + batch·size`` to ``start + (batch+1)·size``."""
        collect, env = self.config.collect, self.config.env
        if collect.start is not None:
            first = collect.start
        else:
            first = (env.limit or 0) if collect.split == env.split else 0
        begin = first + batch * collect.batch_size
        tasks = self._tasks(split=collect.split, start=begin, limit=begin + collect.batch_size)
        base = self.rollout(collect_stage(batch)).model_dump(exclude={"tasks"})
        return CollectSettings(**base, tasks=tasks, batch=batch)

    def reserved_tasks(self) -> dict[str, TaskSelection]:
        """The task selections a collect batch must not play, by the folder that plays them: the base
        rollout's (the teacher plays the same), the expert teacher's when the distill set learns from it,
        and the evaluation's, so collected failures are new tasks and evaluation tasks stay unseen."""
        reserved = {self.rollout().stage_dir(): self.rollout().tasks}
        if EXPERT_STAGE in self.teacher_stages():
            reserved[self.expert.stage_dir()] = self.expert.tasks
        reserved[f"{ROLLOUTS_DIR}/{eval_stage('*')}"] = self.evaluation("base").tasks
        return reserved

    def report(self, config_name: str | None = None) -> ReportSettings:
        config = self.config
        return ReportSettings(
            config_name=config_name or config.run.name,
            run_name=config.run.name,
            env=config.env.name,
            agent_format=config.agent.format,
            model=config.models.agent.model.name,
            methods=list(config.evaluation.methods),
            eval_split=config.evaluation.split,
            student_weights=config.evaluation.student_weights,
            student_fewshot=config.evaluation.student_fewshot,
            distill_teacher=config.distill.teacher,
            min_score=config.distill.min_score,
            hint_group=config.retrieval.group,
        )

    def promotion(
        self, registry_root: str | None = None, generation: dict[str, Any] | None = None
    ) -> PromotionSettings:
        return PromotionSettings(
            promotion=self.config.promotion,
            env=self.config.env.name,
            eval_split=self.config.evaluation.split,
            registry_root=registry_root,
            generation=generation,
        )

    @property
    def retrain(self) -> RetrainSettings:
        return RetrainSettings(min_failures=self.config.retrain.min_failures)

    def ablation_table(self) -> AblationTableSettings:
        """The retrieval ablation's table over the grid ``ablation.*`` asks for."""
        config = self.config
        return AblationTableSettings(
            env=config.env.name,
            eval_split=config.evaluation.split,
            grid=config.ablation,
            teacher_stages=self.teacher_stages(),
            points=ablation_points(config),
        )


STAGE_MODELS: tuple[tuple[str, type[StageSettings] | type[RetrainSettings]], ...] = (
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
