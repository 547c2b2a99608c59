"""The whole experiment: every section, and the checks that need more than one of them."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, model_validator

from ragdistill.config.base import DEFAULT_GPU_SHARE, StrictModel
from ragdistill.config.evaluation import (
    CollectConfig,
    EvaluationConfig,
    PromotionConfig,
    RetrainConfig,
    RunConfig,
)
from ragdistill.config.models import VLLM_LORA_RANKS, ModelsConfig, RoleConfig, engine_key
from ragdistill.config.retrieval import AblationConfig, MiningConfig, RetrievalConfig
from ragdistill.config.rollouts import AgentConfig, EnvConfig, OrchestrationConfig, RolloutConfig
from ragdistill.config.training import DistillConfig, TrainingConfig
from ragdistill.config.warm_start import TaskRange, WarmStartConfig, describe_positions


class ExperimentConfig(StrictModel):
    run: RunConfig = Field(default_factory=RunConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    warm_start: WarmStartConfig = Field(default_factory=WarmStartConfig)
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
    ablation: AblationConfig = Field(default_factory=AblationConfig)

    def engine_roles(self) -> dict[str, RoleConfig]:
        """The model roles a pipeline run loads (the re-ranker only for the ``llm-rerank`` retriever)."""
        roles = {"agent": self.models.agent, "extractor": self.models.extractor}
        if self.retrieval.retriever == "llm-rerank":
            roles["reranker"] = self.models.reranker
        return roles

    def warm_start_first(self) -> int:
        """Position of the warm start's first task (``warm_start.start``; see :class:`WarmStartConfig`)."""
        warm_start, env = self.warm_start, self.env
        if warm_start.start is not None:
            return warm_start.start
        return (env.limit or 0) if warm_start.split == env.split else 0

    def collect_first(self) -> int:
        """Position of collect batch 0's first task: ``collect.start``, else after the pipeline's own tasks
        of the collect split (the base rollout's and, when it is on, the warm start's)."""
        collect, env, warm_start = self.collect, self.env, self.warm_start
        if collect.start is not None:
            return collect.start
        first = (env.limit or 0) if collect.split == env.split else 0
        if warm_start.enabled and warm_start.split == collect.split:
            first = max(first, self.warm_start_first() + warm_start.limit)
        return first

    def task_ranges(self) -> dict[str, TaskRange]:
        """The positions the warm start, the base rollout, the collect batches and the evaluation take, by
        name. The evaluation lists its split in the environment's default order: when ``env.balanced``
        orders the others differently, it counts as taking the whole split."""
        env, evaluation = self.env, self.evaluation
        first = self.warm_start_first()
        same_order = env.balanced is None
        return {
            "warm_start": TaskRange(
                "the warm start", self.warm_start.split, first, first + self.warm_start.limit
            ),
            "rollout": TaskRange("the base rollout (and the RAG teacher)", env.split, 0, env.limit),
            "collect": TaskRange("the collect batches", self.collect.split, self.collect_first(), None),
            "evaluation": TaskRange(
                "the evaluation", evaluation.split, 0, evaluation.limit if same_order else None
            ),
        }

    @model_validator(mode="after")
    def _warm_start_tasks_are_its_own(self) -> ExperimentConfig:
        """The warm start learns from tasks no later stage plays: never the base rollout's (its failures are
        mined), the collect batches' (their failures must be new) or the evaluation's (unseen by training)."""
        if not self.warm_start.enabled:
            return self
        ranges = self.task_ranges()
        warm = ranges.pop("warm_start")
        problems = []
        for name, other in ranges.items():
            shared = warm.overlap(other)
            if shared is not None:
                problems.append(
                    f"It overlaps {other.who} ({other.describe()} of split {other.split!r}) at "
                    f"{describe_positions(*shared)}: {_overlap_remedy(self, name, warm)}"
                )
        if problems:
            raise ValueError(
                f"the warm start demonstrates {warm.describe()} of split {warm.split!r} (warm_start.start, "
                "warm_start.limit), which must be tasks no other stage plays. " + " ".join(problems)
            )
        return self

    @model_validator(mode="after")
    def _warm_start_weights_load_here(self) -> ExperimentConfig:
        """The warm start's checkpoint is loaded by this process's engine; a server serves its own model."""
        if self.warm_start.enabled and self.models.agent.backend.kind == "openai":
            raise ValueError(
                "warm_start.enabled needs the agent's weights loaded here (models.agent.backend.kind vllm or "
                "hf): an OpenAI-compatible server plays its own model, not the run's warm-start checkpoint. "
                "Use backend vllm or hf, or turn the warm start off and serve a warm-started model yourself"
            )
        return self

    @model_validator(mode="after")
    def _students_fit_the_agent_engine(self) -> ExperimentConfig:
        """Students evaluated as LoRA adapters on the agent's vLLM engine must fit its largest rank."""
        backend = self.models.agent.backend
        students = {"sft", "distill"} & set(self.evaluation.methods)
        if (
            students
            and self.evaluation.student_weights == "lora"
            and backend.kind == "vllm"
            and self.training.lora_r > backend.max_lora_rank
        ):
            fitting = [rank for rank in VLLM_LORA_RANKS if rank >= self.training.lora_r]
            raise ValueError(
                f"training.lora_r {self.training.lora_r} is above models.agent.backend.max_lora_rank "
                f"{backend.max_lora_rank}, the largest LoRA rank the agent's vLLM engine loads, so the "
                f"{'/'.join(sorted(students))} student could not be evaluated: raise max_lora_rank to "
                f"{fitting[0] if fitting else 'a larger vLLM rank'}, lower training.lora_r, or set "
                "evaluation.student_weights: merged"
            )
        return self

    @model_validator(mode="after")
    def _in_process_engines_fit_one_gpu(self) -> ExperimentConfig:
        """In-process vLLM engines stay loaded for the whole run and share the GPU: together they may ask
        for at most all of one GPU's memory (``gpu_memory_utilization`` is per engine). Engines without a
        setting get an even share of what the others leave, at most ``DEFAULT_GPU_SHARE`` in all."""
        engines: dict[str, list[tuple[str, RoleConfig]]] = {}
        for name, role in self.engine_roles().items():
            if role.backend.kind == "vllm":
                # The warm-started agent loads weights of its own: never one engine with another role.
                own = "+warm-start" if name == "agent" and self.warm_start.enabled else ""
                engines.setdefault(engine_key(role) + own, []).append((name, role))
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
    def _completions_fit_each_context_window(self) -> ExperimentConfig:
        """Each role's completion of ``max_tokens`` must leave room for a prompt in its model's context
        window. (A ``RoleConfig`` built in code, e.g. for a backend test, may still set any pair.)"""
        for name in ModelsConfig.model_fields:
            role: RoleConfig = getattr(self.models, name)
            if role.sampling.max_tokens >= role.model.max_model_len:
                raise ValueError(
                    f"models.{name}.sampling.max_tokens {role.sampling.max_tokens} leaves no room for a prompt "
                    f"in models.{name}.model.max_model_len {role.model.max_model_len}; lower max_tokens or "
                    "raise max_model_len"
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


def _overlap_remedy(config: ExperimentConfig, name: str, warm: TaskRange) -> str:
    """What to change when the warm start's tasks overlap those of ``name`` (a :meth:`task_ranges` key)."""
    if name == "rollout":
        if config.env.limit is None:
            return "set env.limit (the base rollout plays every task of its split), or warm_start.split to another split."
        return (
            f"set warm_start.start to {config.env.limit} or more (or leave it empty: it then starts right after "
            "the base rollout's tasks), or warm_start.split to another split."
        )
    if name == "collect":
        return (
            f"set collect.start to {warm.end} or more (or leave it empty: batches then start after the warm "
            "start's tasks), or collect.split to another split."
        )
    return "set warm_start.split to a training split: the evaluation's tasks must stay unseen."


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
