"""The per-stage settings models (``config.stages`` builds them from a config; the run context is in
``config.run_context``).

Each stage's settings model holds exactly what that stage's output depends on and is hashed whole into
its identity; :class:`RunContext` holds where and how stages run and is never hashed.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field

from ragdistill.config.base import Frozen
from ragdistill.config.evaluation import PromotionConfig
from ragdistill.config.models import ModelSpec, SamplingConfig
from ragdistill.config.retrieval import HintRules
from ragdistill.config.rollouts import AgentConfig
from ragdistill.config.training import TrainingRecipe
from ragdistill.layout import (
    BASE_STAGE,
    EVAL_PREFIX,
    EXPERT_STAGE,
    HINTS_DIR,
    INDEX_DIR,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    PROMOTION_DIR,
    REPORTS_DIR,
    STUDENTS,
    WARM_START_DIR,
    adapter_dir,
    checked_name,
    dataset_dir,
    eval_stage_seed,
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


class StageSettings(Frozen):
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


class RoleSettings(Frozen):
    """A model role as far as it changes what the model generates."""

    name: RoleName
    model: ModelSpec
    sampling: SamplingConfig
    backend: Literal["vllm", "openai", "hf"]
    served_model_name: str | None = None
    warm_start: bool = False
    """The role plays on the warm start's checkpoint (``warm-start/model``), not on ``model.name``'s
    weights: the stage then reads the warm start, whose content digest is one of its inputs."""

    def input_dirs(self) -> list[str]:
        return [WARM_START_DIR] if self.warm_start else []


class EnvSettings(Frozen):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class TaskSelection(Frozen):
    """Which tasks a rollout plays: positions ``start`` up to ``limit`` of the split's task list."""

    split: str
    limit: int | None = None
    start: int = 0
    balanced: bool | None = None
    shuffle_seed: int | None = None
    task_types: list[str] | None = None


class RetrievalSettings(Frozen):
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

    def input_dirs(self) -> list[str]:
        return self.role.input_dirs()


class TeacherSettings(RolloutSettings):
    """The RAG teacher: a rollout whose prompts carry hints retrieved once per episode."""

    CODE: ClassVar[str] = "ragdistill.stages.teaching"
    source: Literal["agent", "teacher"] = "teacher"
    retrieval: RetrievalSettings
    reranker: RoleSettings | None = None

    def input_dirs(self) -> list[str]:
        return [*self.retrieval.input_dirs(), *self.role.input_dirs()]


class EvaluationSettings(RolloutSettings):
    """One method on the pinned evaluation tasks: the base agent, the RAG teacher or a student."""

    CODE: ClassVar[str] = "ragdistill.stages.evaluation"
    method: Literal["base", "rag", "sft", "distill"]
    retrieval: RetrievalSettings | None = None
    reranker: RoleSettings | None = None
    student_weights: Literal["lora", "merged"] | None = None

    @property
    def label(self) -> str:
        """The method, and the seed when it is not the agent's own (``base``, ``base-seed43``)."""
        return self.stage.removeprefix(EVAL_PREFIX)

    def input_dirs(self) -> list[str]:
        if self.retrieval is not None:
            upstream = self.retrieval.input_dirs()
        else:
            upstream = [adapter_dir(self.method)] if self.method in STUDENTS else []
        return [*upstream, *self.role.input_dirs()]


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
    training: TrainingRecipe
    base_model: ModelSpec
    seed: int
    warm_start: bool = False
    """The student is LoRA on the warm start's checkpoint, not on ``base_model``'s own weights."""

    def stage_dir(self) -> str:
        return adapter_dir(self.name)

    def input_dirs(self) -> list[str]:
        return [dataset_dir(self.name), *([WARM_START_DIR] if self.warm_start else [])]


class WarmStartSettings(StageSettings):
    """Stage 0 (warm start): LoRA on the expert's demonstrations of training tasks, merged into the
    checkpoint the agent role plays on in every later stage."""

    CODE: ClassVar[str] = "ragdistill.stages.warm_start"
    env: EnvSettings
    tasks: TaskSelection
    agent: AgentConfig
    """The format the demonstrations are rendered in, their prompts (few-shot examples) and stop rules."""
    base_model: ModelSpec
    """The agent's configured model: its tokenizer counts and fits the episodes, its weights are trained."""
    max_tokens: int
    """The agent's completion length: an episode's prompt must fit the context window beside it."""
    removed: list[str]
    """Prompt segments dropped from the training examples."""
    training: TrainingRecipe
    seed: int
    hint_share: float = 0.0
    """Share of the demonstrations whose prompt carries a hint block of the environment's example hints
    (``warm_start.hint_share``; the hints are the environment's code, in the stage's code fingerprint)."""
    hints_per_episode: int = 0
    """Hints in such a block (``retrieval.k``; at most the environment's example count)."""

    def stage_dir(self) -> str:
        return WARM_START_DIR


class EvaluationSeeds(Frozen):
    """The sampling seeds every method is evaluated under (``evaluation.seeds``) and the agent's own seed,
    whose evaluation keeps the folder a one-seed run always had (``rollouts/eval-<method>``)."""

    seeds: list[int]
    agent_seed: int

    @classmethod
    def of_run_config(cls, config: dict[str, Any]) -> EvaluationSeeds:
        """The seeds of a run's stored config (``run.json``; one written before ``evaluation.seeds``
        existed evaluated under the agent's seed only)."""
        agent_seed = int(config["models"]["agent"]["sampling"]["seed"])
        return cls(seeds=config["evaluation"].get("seeds") or [agent_seed], agent_seed=agent_seed)

    def stages(self, method: str) -> dict[int, str]:
        """The rollout stage that evaluates ``method`` under each seed, in the order of ``seeds``."""
        return {seed: eval_stage_seed(method, seed, self.agent_seed) for seed in self.seeds}

    def folders(self, method: str) -> list[str]:
        return [rollout_prefix(stage) for stage in self.stages(method).values()]


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
    seeds: EvaluationSeeds

    def stage_dir(self) -> str:
        return REPORTS_DIR

    def input_dirs(self) -> list[str]:
        folders = [folder for method in self.methods for folder in self.seeds.folders(method)]
        students = [*map(dataset_dir, STUDENTS), *map(adapter_dir, STUDENTS)]
        return [WARM_START_DIR, *folders, *students, PROMOTION_DIR]


class PromotionSettings(StageSettings):
    """Stage E (promote): register the students, let the gate decide."""

    CODE: ClassVar[str] = "ragdistill.stages.promotion"
    OPTIONAL_INPUTS: ClassVar[bool] = True
    promotion: PromotionConfig
    env: str
    eval_split: str
    seeds: EvaluationSeeds
    """The gate compares each evaluation's headline averaged over these seeds."""
    registry_root: str | None = None
    """A retrain generation promotes into its parent run root's registry."""
    generation: dict[str, Any] | None = None

    def stage_dir(self) -> str:
        return PROMOTION_DIR

    def input_dirs(self) -> list[str]:
        folders = [rollout_prefix(BASE_STAGE), HINTS_DIR, *self.seeds.folders("base")]
        for name in STUDENTS:
            folders += [dataset_dir(name), adapter_dir(name), *self.seeds.folders(name)]
        return folders


class RetrainSettings(Frozen):
    """The retrain decision: how many new collect failures start a generation."""

    min_failures: int
