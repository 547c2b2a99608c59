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

from ragdistill.config.stages import ExpertSettings, Inputs, RunContext
from ragdistill.environments.base import TaskInfo
from ragdistill.episodes import EpisodeRecord
from ragdistill.inference.factory import BACKEND_LIBRARIES
from ragdistill.layout import ROLLOUT_OUTPUTS
from ragdistill.retrieval.engines import RetrievalEngines
from ragdistill.rollout.engine import ProgressCallback
from ragdistill.rollout.plan import (
    environment_digest,
    examples_provider,
    open_pool,
    prompt_version,
    select_tasks,
    task_list_facts,
)
from ragdistill.rollout.play import episode_counts, episode_log, write_task_list
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
    from ragdistill.agents.formats import get_format
    from ragdistill.environments.registry import get_profile
    from ragdistill.inference.chat import count_chat_tokens, load_tokenizer
    from ragdistill.models import resolve_model
    from ragdistill.rollout.expert_episodes import write_expert_episodes

    store = ArtifactStore(ctx.run_root)
    tasks = select_tasks(ctx, settings.env, settings.tasks)
    identity = _identity(ctx, settings, inputs, tasks)
    prefix = identity.stage
    label = f"{ctx.run_name}: {prefix}"
    with StageRun(store, prefix, identity, ctx, label=label, outputs=ROLLOUT_OUTPUTS) as run:
        if run.current is not None:
            return run.current
        started = time.perf_counter()
        records = episode_log(store, prefix, ctx.rollout.shard_size)
        finished = {item["task_id"] for item in records.records() if item.get("error_kind") != "transient"}
        pending = [task for task in tasks if task.task_id not in finished]
        if pending:
            model = settings.tokenizer
            tokenizer = load_tokenizer(resolve_model(model), model.trust_remote_code)
            env, agent = settings.env, settings.agent
            with open_pool(ctx, env, len(pending)) as pool:
                write_expert_episodes(
                    pool,
                    pending,
                    get_format(agent.format, get_profile(env.name)),
                    agent,
                    examples_provider(agent, env.name, ctx.data_dir),
                    teacher_hint_source(
                        ctx, settings.retrieval, settings.reranker, env.name, inputs, engines
                    ),
                    lambda messages, completion: count_chat_tokens(tokenizer, messages, completion),
                    model.max_model_len - settings.max_tokens,
                    records,
                    prompt_version=prompt_version(env.name),
                    progress=progress,
                )
        wanted = {task.task_id for task in tasks}
        files = records.compact(keep=lambda record: record["task_id"] in wanted)
        files.append(
            write_task_list(store, prefix, settings.env.name, settings.tasks.split, tasks, ctx.data_dir)
        )
        counts = episode_counts(EpisodeRecord.from_dict(item) for item in read_records(store, prefix))
        return run.finish(
            files,
            counts=counts,
            run_stats={"played_now": len(pending), "seconds": round(time.perf_counter() - started, 2)},
        )
