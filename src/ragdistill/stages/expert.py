"""The expert teacher stage: environment demonstrations of training tasks, as the agent's episodes.

``rollouts/expert`` holds one record per demonstrated task (``ragdistill.rollout.expert_episodes``).

Identity (:class:`~ragdistill.config.stages.ExpertSettings`, whole): the environment and its options,
the task selection (growable), the agent section, the agent model's tokenizer and context window and
its ``max_tokens`` (token counts and context fitting use them), the retrieval settings and re-ranker
role (the prompt holds the hints the RAG teacher would retrieve); inputs: the hint bank's and index's
content digests and the environment's data version (``environment``); growable: the task list's digest
and length; plus the tokenizer's and re-ranker's library versions and the code.
"""

from __future__ import annotations

import time

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import ExpertSettings, Inputs
from ragdistill.environments.base import TaskInfo
from ragdistill.episodes import EpisodeRecord
from ragdistill.inference.factory import BACKEND_LIBRARIES
from ragdistill.layout import ROLLOUT_OUTPUTS
from ragdistill.retrieval.engines import RetrievalEngines
from ragdistill.rollout.collaborators import HintSource, ProgressCallback
from ragdistill.rollout.expert_episodes import Demonstrations, record_demonstrations
from ragdistill.rollout.plan import environment_digest, select_tasks, task_list_facts
from ragdistill.rollout.play import episode_counts
from ragdistill.stages.lifecycle import StageIdentity, StageRun, handed, stage_identity
from ragdistill.stages.teaching import teacher_hint_source
from ragdistill.store import ArtifactStore, Manifest, read_records

TOKENIZER_LIBRARIES = ("transformers", "tokenizers")


def _identity(
    ctx: RunContext, settings: ExpertSettings, inputs: Inputs, tasks: list[TaskInfo]
) -> StageIdentity:
    libraries = {*TOKENIZER_LIBRARIES}
    if settings.reranker is not None:
        libraries.update(BACKEND_LIBRARIES[settings.reranker.backend])
    return stage_identity(
        settings,
        {
            **handed(inputs, *settings.input_dirs()),
            "environment": environment_digest(settings.env.name, ctx.data_dir),
        },
        libraries=sorted(libraries),
        growable=task_list_facts(tasks),
    )


def expert_identity(ctx: RunContext, settings: ExpertSettings, inputs: Inputs) -> StageIdentity:
    """See the module docstring."""
    return _identity(ctx, settings, inputs, select_tasks(ctx, settings.env, settings.tasks))


def run_expert_teacher(
    ctx: RunContext,
    settings: ExpertSettings,
    inputs: Inputs,
    *,
    engines: RetrievalEngines | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Demonstrate the training tasks without a finished record into ``rollouts/expert``; ``engines``:
    the models retrieval runs on (default: shared in the process)."""
    store = ArtifactStore(ctx.run_root)
    tasks = select_tasks(ctx, settings.env, settings.tasks)
    identity = _identity(ctx, settings, inputs, tasks)
    prefix = identity.stage
    label = f"{ctx.run_name}: {prefix}"
    with StageRun(store, prefix, identity, ctx, label=label, outputs=ROLLOUT_OUTPUTS) as run:
        if run.current is not None:
            return run.current
        started = time.perf_counter()
        env = settings.env

        def hints() -> HintSource:
            return teacher_hint_source(ctx, settings.retrieval, settings.reranker, env.name, inputs, engines)

        demonstrations = Demonstrations(env, settings.agent, settings.tokenizer, settings.max_tokens)
        files, played_now = record_demonstrations(
            ctx, store, prefix, demonstrations, tasks, settings.tasks.split, hints, progress
        )
        counts = episode_counts(EpisodeRecord.from_dict(item) for item in read_records(store, prefix))
        return run.finish(
            files,
            counts=counts,
            run_stats={"played_now": played_now, "seconds": round(time.perf_counter() - started, 2)},
        )
