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

from ragdistill.config.ablation import AblationTableSettings, ablation_points
from ragdistill.config.experiment import ExperimentConfig
from ragdistill.config.models import RoleConfig
from ragdistill.config.retrieval import HintRules, RetrievalConfig
from ragdistill.config.rollouts import AgentConfig, EnvConfig
from ragdistill.config.run_context import ExperimentRecord, RunContext
from ragdistill.config.stage_models import (
    CollectSettings,
    DatasetSettings,
    EnvSettings,
    EvaluationSeeds,
    EvaluationSettings,
    ExpertSettings,
    IndexingSettings,
    MiningSettings,
    PromotionSettings,
    ReportSettings,
    RetrainSettings,
    RetrievalSettings,
    RoleName,
    RoleSettings,
    RolloutSettings,
    TaskSelection,
    TeacherSettings,
    TrainingSettings,
    WarmStartSettings,
)
from ragdistill.identity import digest
from ragdistill.layout import (
    BASE_STAGE,
    COLLECT_PREFIX,
    EXPERT_STAGE,
    ROLLOUTS_DIR,
    STUDENTS,
    TEACHER_STAGE,
    WARM_START_DIR,
    collect_stage,
    eval_stage,
    eval_stage_seed,
    rollout_prefix,
)


def role_settings(config: ExperimentConfig, name: RoleName) -> RoleSettings:
    """The role's settings; the agent plays on the warm start's checkpoint when ``warm_start`` is on (the
    extractor and the re-ranker always on their configured models)."""
    role: RoleConfig = getattr(config.models, name)
    return RoleSettings(
        name=name,
        model=role.model,
        sampling=role.sampling,
        backend=role.backend.kind,
        served_model_name=role.backend.served_model_name if role.backend.kind == "openai" else None,
        warm_start=name == "agent" and config.warm_start.enabled,
    )


def without_fewshot(agent: AgentConfig) -> AgentConfig:
    """``agent`` playing without few-shot examples: its few-shot settings can change nothing then."""
    return agent.model_copy(update={"fewshot_source": "none", "fewshot_count": 0})


def retrieval_settings(retrieval: RetrievalConfig) -> RetrievalSettings:
    """What of ``retrieval`` changes the hints an episode gets: not the index's own settings (they reach
    the teacher as the index's digest), and ``group_examples`` only for the embedding classifier."""
    return RetrievalSettings(
        **retrieval.model_dump(exclude={"group_examples", "exact_index_max"}),
        group_examples=retrieval.group_examples if retrieval.group == "embedding" else None,
    )


def pipeline_stage_settings(config: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Every pipeline stage's settings as JSON, by ``<settings model>:<folder>`` (what each computes)."""
    stages = PipelineSettings(config)
    settings = [
        *([stages.warm_start] if config.warm_start.enabled else []),
        stages.rollout(),
        stages.mining,
        stages.indexing,
        stages.teacher,
        *(stages.dataset(name) for name in STUDENTS),
        *(stages.training(name) for name in STUDENTS),
        *(evaluation for method in config.evaluation.methods for evaluation in stages.evaluations(method)),
    ]
    return {type(item).__name__ + ":" + item.stage_dir(): item.model_dump(mode="json") for item in settings}


def experiment_record(config: ExperimentConfig) -> ExperimentRecord:
    """The experiment ``config`` runs: its run name and environment, and a digest of every stage's
    settings (what it computes, so equal digests mean equal outputs)."""
    dumped = pipeline_stage_settings(config)
    return ExperimentRecord(run_name=config.run.name, env=config.env.name, settings=digest(dumped))


@dataclass(frozen=True)
class PipelineSettings:
    """Every stage's settings and the run context, built from one experiment config. ``experiment_check``:
    its stages check and record the run root's experiment; ``warm_start_root``: the run root holding the
    warm start when not this one (see :meth:`RunContext.of_experiment`)."""

    config: ExperimentConfig
    experiment_check: bool = False
    warm_start_root: str | None = None

    @classmethod
    def from_experiment(
        cls, config: ExperimentConfig, *, experiment_check: bool = False, warm_start_root: str | None = None
    ) -> PipelineSettings:
        return cls(config, experiment_check, warm_start_root)

    @property
    def ctx(self) -> RunContext:
        experiment = experiment_record(self.config) if self.experiment_check else None
        return RunContext.of_experiment(self.config, experiment, self.warm_start_root)

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
        uses_reranker = retrieval.retriever == "llm-rerank" or retrieval.group == "llm"
        reranker = role_settings(self.config, "reranker") if uses_reranker else None
        return retrieval_settings(retrieval), reranker

    @property
    def warm_start(self) -> WarmStartSettings:
        """Stage 0: ``warm_start.limit`` training tasks from ``warm_start.start``, trained for the warm
        start's own length (``training.*`` otherwise)."""
        warm_start, training = self.config.warm_start, self.config.training
        first = self.config.warm_start_first()
        agent = self.config.models.agent
        length = {
            "epochs": warm_start.epochs or training.epochs,
            "learning_rate": warm_start.learning_rate or training.learning_rate,
            "max_steps": None,
        }
        return WarmStartSettings(
            env=self._env(),
            tasks=self._tasks(split=warm_start.split, start=first, limit=first + warm_start.limit),
            agent=self.config.agent if warm_start.fewshot else without_fewshot(self.config.agent),
            base_model=agent.model,
            max_tokens=agent.sampling.max_tokens,
            removed=[] if warm_start.fewshot else ["fewshot"],
            training=training.recipe().model_copy(update=length),
            seed=agent.sampling.seed,
            hint_share=warm_start.hint_share,
            hints_per_episode=self.config.retrieval.k if warm_start.hint_share else 0,
        )

    def warm_start_reserved(self) -> dict[str, TaskSelection]:
        """The task selections the warm start must not demonstrate, by the folders that play them: the base
        rollout's (the teacher plays the same), every collect batch's (from the first one on) and the
        evaluation's."""
        collect = self.config.collect
        return {
            self.rollout().stage_dir(): self.rollout().tasks,
            f"{ROLLOUTS_DIR}/{COLLECT_PREFIX}*": self._tasks(
                split=collect.split, start=self.config.collect_first(), limit=None
            ),
            f"{ROLLOUTS_DIR}/{eval_stage('*')}": self.evaluation("base").tasks,
        }

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
            name=name,
            training=self.config.training.recipe(),
            base_model=agent.model,
            seed=agent.sampling.seed,
            warm_start=self.config.warm_start.enabled,
        )

    @property
    def evaluation_seeds(self) -> EvaluationSeeds:
        """The agent's sampling seeds of every evaluation (``evaluation.seeds``, else its own seed)."""
        agent_seed = self.config.models.agent.sampling.seed
        return EvaluationSeeds(seeds=self.config.evaluation.seeds or [agent_seed], agent_seed=agent_seed)

    def evaluations(self, method: Literal["base", "rag", "sft", "distill"]) -> list[EvaluationSettings]:
        """``method``'s evaluation under each seed of :attr:`evaluation_seeds`, in their order."""
        return [self.evaluation(method, seed) for seed in self.evaluation_seeds.seeds]

    def evaluation(
        self, method: Literal["base", "rag", "sft", "distill"], seed: int | None = None
    ) -> EvaluationSettings:
        """``method`` on the evaluation split's tasks, in the environment's default order, with the agent
        sampling under ``seed`` (default: the first evaluation seed). The seed is part of the settings
        (the role's sampling) and names the folder (:func:`~ragdistill.layout.eval_stage_seed`)."""
        evaluation = self.config.evaluation
        seeds = self.evaluation_seeds
        seed = seeds.seeds[0] if seed is None else seed
        if seed not in seeds.seeds:
            raise ValueError(
                f"seed {seed} is not an evaluation seed of this config (evaluation.seeds: "
                f"{', '.join(map(str, seeds.seeds))}): add it there, or pick one of them"
            )
        rollout = self.rollout(eval_stage_seed(method, seed, seeds.agent_seed))
        if seed != seeds.agent_seed:
            role = rollout.role
            sampling = role.sampling.model_copy(update={"seed": seed})
            rollout = rollout.model_copy(update={"role": role.model_copy(update={"sampling": sampling})})
        base = rollout.model_dump(exclude={"tasks", "agent"})
        tasks = TaskSelection(
            split=evaluation.split, limit=evaluation.limit, task_types=self.config.env.task_types
        )
        agent = self.config.agent
        if method in STUDENTS and not evaluation.student_fewshot:
            agent = without_fewshot(agent)
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
        collect = self.config.collect
        begin = self.config.collect_first() + batch * collect.batch_size
        tasks = self._tasks(split=collect.split, start=begin, limit=begin + collect.batch_size)
        base = self.rollout(collect_stage(batch)).model_dump(exclude={"tasks"})
        return CollectSettings(**base, tasks=tasks, batch=batch)

    def reserved_tasks(self) -> dict[str, TaskSelection]:
        """The task selections a collect batch must not play, by the folder that plays them: the base
        rollout's (the teacher plays the same), the warm start's when it is on, the expert teacher's when
        the distill set learns from it, and the evaluation's, so collected failures are new tasks and
        evaluation tasks stay unseen."""
        reserved = {self.rollout().stage_dir(): self.rollout().tasks}
        if self.config.warm_start.enabled:
            reserved[WARM_START_DIR] = self.warm_start.tasks
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
            seeds=self.evaluation_seeds,
        )

    def promotion(
        self, registry_root: str | None = None, generation: dict[str, Any] | None = None
    ) -> PromotionSettings:
        return PromotionSettings(
            promotion=self.config.promotion,
            env=self.config.env.name,
            eval_split=self.config.evaluation.split,
            seeds=self.evaluation_seeds,
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
