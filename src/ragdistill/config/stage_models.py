"""The per-stage settings models and the run context (``config.stages`` builds them from a config).

Each stage's settings model holds exactly what that stage's output depends on and is hashed whole into
its identity; :class:`RunContext` holds where and how stages run and is never hashed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ragdistill.config.evaluation import PromotionConfig
from ragdistill.config.models import BackendConfig, ModelSpec, RoleConfig, SamplingConfig
from ragdistill.config.retrieval import HintRules
from ragdistill.config.rollouts import AgentConfig, OrchestrationConfig, RolloutConfig
from ragdistill.config.training import TrainingConfig
from ragdistill.layout import (
    BASE_STAGE,
    EXPERT_STAGE,
    HINTS_DIR,
    INDEX_DIR,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    PROMOTION_DIR,
    REPORTS_DIR,
    STUDENTS,
    adapter_dir,
    checked_name,
    dataset_dir,
    eval_stage,
    rollout_prefix,
)

Inputs = dict[str, str]
"""Content digests of the upstream folders a stage reads, by folder under the run root."""

RoleName = Literal["agent", "extractor", "reranker"]


def _checked_folder(folder: str) -> str:
    """A folder under the run root: names joined by ``/``, each one a name (never ``..``, never absolute)."""
    for part in folder.split("/"):
        checked_name(part)
    return folder


StageName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)]
"""A stage's folder name under ``rollouts/`` (validated like ``run.name``)."""
RunFolder = Annotated[str, AfterValidator(_checked_folder)]
"""A folder under the run root (``rollouts/base``): names only, so it cannot leave the run root."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExperimentRecord(_Frozen):
    """Which experiment a run belongs to (``stages.experiment``): its run name and environment define it,
    ``settings`` (a digest of every stage's settings) says what it last ran with."""

    run_name: str
    env: str
    settings: str


class RunContext(_Frozen):
    """Where and how stages run; never part of an identity."""

    run_root: str
    run_name: str
    env_name: str = ""
    """For names and logs only (task runs are named ``<stage>-<env>-<run>``)."""
    lease_wait_s: float = 0.0
    data_dir: Path = Path("data")
    env_workers: int = 2
    max_games_per_worker: int = 200
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """Batch size, shard size and count, error share and transient retries of every rollout."""
    mining_chunk_size: int = 32
    backends: dict[str, BackendConfig] = Field(default_factory=dict)
    """How each model role's engine is loaded (by role name); what it generates is in the settings."""
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    allow_unknown_files: bool = False
    """A stage runs even when its folder holds files ragdistill did not write (left in place)."""
    experiment: ExperimentRecord | None = None
    """The experiment every stage checks the run root against before it claims a folder (None: none)."""
    replace_experiment: bool = False
    """This experiment may take over a run root that records another one."""

    def role_config(self, role: RoleSettings, **backend_update: Any) -> RoleConfig:
        """The role as the inference layer loads it: its settings plus this context's engine settings."""
        backend = self.backends.get(role.name) or BackendConfig(kind=role.backend)
        if backend_update:
            backend = backend.model_copy(update=backend_update)
        return RoleConfig(model=role.model, backend=backend, sampling=role.sampling)


class StageSettings(_Frozen):
    """What every stage's settings model offers: its folder, its upstream folders and its code."""

    CODE: ClassVar[str]
    """The module whose code (and every ragdistill module it imports) produces the stage's output."""
    GROWABLE: ClassVar[frozenset[str]] = frozenset()
    OPTIONAL_INPUTS: ClassVar[bool] = False
    """True: the stage reads whichever of its input folders finished (the report, the promotion)."""

    def stage_dir(self) -> str:
        raise NotImplementedError

    def input_dirs(self) -> list[str]:
        """The upstream folders whose content the stage reads (their digests are its inputs)."""
        return []


class RoleSettings(_Frozen):
    """A model role as far as it changes what the model generates."""

    name: RoleName
    model: ModelSpec
    sampling: SamplingConfig
    backend: Literal["vllm", "openai", "hf"]
    served_model_name: str | None = None


class EnvSettings(_Frozen):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class TaskSelection(_Frozen):
    """Which tasks a rollout plays: positions ``start`` up to ``limit`` of the split's task list."""

    split: str
    limit: int | None = None
    start: int = 0
    balanced: bool | None = None
    shuffle_seed: int | None = None
    task_types: list[str] | None = None


class RetrievalSettings(_Frozen):
    """What changes which hints an episode gets (the index's own settings reach it as its digest)."""

    retriever: Literal["faiss", "bm25", "llm-rerank"]
    k: int
    embedding_model: str
    query: Literal["instruction", "instruction+observation"]
    group: Literal["task", "embedding", "llm"]
    group_examples: int | None = None
    """Only for the embedding group classifier, which learns from that many training tasks."""

    def input_dirs(self) -> list[str]:
        return [HINTS_DIR, INDEX_DIR] if self.retriever == "faiss" else [HINTS_DIR]


class RolloutSettings(StageSettings):
    """Stage A, and every rollout after it: who plays which tasks, how."""

    CODE: ClassVar[str] = "ragdistill.stages.rollout"
    GROWABLE: ClassVar[frozenset[str]] = frozenset({"tasks"})
    stage: StageName
    env: EnvSettings
    tasks: TaskSelection
    agent: AgentConfig
    role: RoleSettings
    source: Literal["agent", "teacher"] = "agent"

    def stage_dir(self) -> str:
        return rollout_prefix(self.stage)


class TeacherSettings(RolloutSettings):
    """The RAG teacher: a rollout whose prompts carry hints retrieved once per episode."""

    CODE: ClassVar[str] = "ragdistill.stages.teaching"
    source: Literal["agent", "teacher"] = "teacher"
    retrieval: RetrievalSettings
    reranker: RoleSettings | None = None

    def input_dirs(self) -> list[str]:
        return self.retrieval.input_dirs()


class EvaluationSettings(RolloutSettings):
    """One method on the pinned evaluation tasks: the base agent, the RAG teacher or a student."""

    CODE: ClassVar[str] = "ragdistill.stages.evaluation"
    method: Literal["base", "rag", "sft", "distill"]
    retrieval: RetrievalSettings | None = None
    reranker: RoleSettings | None = None
    student_weights: Literal["lora", "merged"] | None = None

    def input_dirs(self) -> list[str]:
        if self.retrieval is not None:
            return self.retrieval.input_dirs()
        return [adapter_dir(self.method)] if self.method in STUDENTS else []


class CollectSettings(RolloutSettings):
    """A collect batch: the registry's current adapter (else the base model) on new training tasks."""

    CODE: ClassVar[str] = "ragdistill.stages.collect"
    batch: int


class ExpertSettings(StageSettings):
    """The expert teacher: the environment's demonstrations in the agent's format, with retrieved hints."""

    CODE: ClassVar[str] = "ragdistill.stages.expert"
    GROWABLE: ClassVar[frozenset[str]] = frozenset({"tasks"})
    env: EnvSettings
    tasks: TaskSelection
    agent: AgentConfig
    tokenizer: ModelSpec
    """Token counts and context fitting use the agent model's tokenizer and window."""
    max_tokens: int
    retrieval: RetrievalSettings
    reranker: RoleSettings | None = None

    def stage_dir(self) -> str:
        return rollout_prefix(EXPERT_STAGE)

    def input_dirs(self) -> list[str]:
        return self.retrieval.input_dirs()


class MiningSettings(StageSettings):
    """Stage B: hints mined from a rollout's failures."""

    CODE: ClassVar[str] = "ragdistill.stages.mining"
    rules: HintRules
    extractor: RoleSettings
    source: RunFolder = rollout_prefix(BASE_STAGE)
    dedupe_embedding_model: str | None = None
    """The embedding model of ``rules.dedupe == "embedding"``."""

    def stage_dir(self) -> str:
        return HINTS_DIR

    def input_dirs(self) -> list[str]:
        return [self.source]


class IndexingSettings(StageSettings):
    """Stage C (index): the FAISS index over the hint bank."""

    CODE: ClassVar[str] = "ragdistill.stages.indexing"
    embedding_model: str
    exact_index_max: int

    def stage_dir(self) -> str:
        return INDEX_DIR

    def input_dirs(self) -> list[str]:
        return [HINTS_DIR]


class DatasetSettings(StageSettings):
    """Stage D (datasets): one training set from the successful episodes of its source rollouts."""

    CODE: ClassVar[str] = "ragdistill.stages.datasets"
    name: Literal["sft", "distill"]
    env: str
    """The environment whose invalid-action text (and default invalid-action limit) the filter uses."""
    sources: list[RunFolder]
    removed: list[str]
    max_invalid_actions: int | None
    min_score: float | None
    overlong: Literal["drop_oldest", "skip"]
    max_seq_len: int
    tokenizer: ModelSpec

    def stage_dir(self) -> str:
        return dataset_dir(self.name)

    def input_dirs(self) -> list[str]:
        return [*self.sources, HINTS_DIR] if self.name == "distill" else list(self.sources)


class TrainingSettings(StageSettings):
    """Stage D (train): a LoRA student on one training set."""

    CODE: ClassVar[str] = "ragdistill.stages.training"
    name: Literal["sft", "distill"]
    training: TrainingConfig
    base_model: ModelSpec
    seed: int

    def stage_dir(self) -> str:
        return adapter_dir(self.name)

    def input_dirs(self) -> list[str]:
        return [dataset_dir(self.name)]


class ReportSettings(StageSettings):
    """Stage E (report): what the report says about the run beside what it reads (the rendering reads
    these from the run's ``run.json``)."""

    CODE: ClassVar[str] = "ragdistill.stages.report"
    OPTIONAL_INPUTS: ClassVar[bool] = True
    config_name: str
    run_name: str
    env: str
    agent_format: str
    model: str
    methods: list[str]
    eval_split: str
    student_weights: Literal["lora", "merged"]
    student_fewshot: bool
    distill_teacher: str
    min_score: float | None
    hint_group: str

    def stage_dir(self) -> str:
        return REPORTS_DIR

    def input_dirs(self) -> list[str]:
        folders = [rollout_prefix(eval_stage(method)) for method in self.methods]
        return [*folders, *map(dataset_dir, STUDENTS), *map(adapter_dir, STUDENTS), PROMOTION_DIR]


class PromotionSettings(StageSettings):
    """Stage E (promote): register the students, let the gate decide."""

    CODE: ClassVar[str] = "ragdistill.stages.promotion"
    OPTIONAL_INPUTS: ClassVar[bool] = True
    promotion: PromotionConfig
    env: str
    eval_split: str
    registry_root: str | None = None
    """A retrain generation promotes into its parent run root's registry."""
    generation: dict[str, Any] | None = None

    def stage_dir(self) -> str:
        return PROMOTION_DIR

    def input_dirs(self) -> list[str]:
        folders = [rollout_prefix(BASE_STAGE), HINTS_DIR, rollout_prefix(eval_stage("base"))]
        for name in STUDENTS:
            folders += [dataset_dir(name), adapter_dir(name), rollout_prefix(eval_stage(name))]
        return folders


class RetrainSettings(_Frozen):
    """The retrain decision: how many new collect failures start a generation."""

    min_failures: int
