"""The expert teacher stage: environment demonstrations of training tasks, as the agent's episodes.

``rollouts/expert`` holds one record per demonstrated task (``ragdistill.expert_episodes``). Identity:
the environment, the agent section, the agent model's tokenizer and context window (token counts and
context fitting use them), the retrieval settings and the hint bank / index contents (the prompt holds
the hints the RAG teacher would retrieve), the task list (growable) and the code.
"""

from __future__ import annotations

import time

from ragdistill.config import ExperimentConfig
from ragdistill.environments.base import TaskInfo
from ragdistill.episodes import EpisodeRecord
from ragdistill.identity import code_fingerprint, digest
from ragdistill.rollout import ProgressCallback
from ragdistill.stages.layout import EXPERT_STAGE, rollout_prefix
from ragdistill.stages.lifecycle import StageIdentity, StageRun
from ragdistill.stages.rollout import (
    env_version,
    episode_counts,
    episode_log,
    examples_provider,
    list_env_tasks,
    open_pool,
    prompt_version,
    write_task_list,
)
from ragdistill.stages.teaching import hint_source_factory, retrieval_inputs, retrieval_settings
from ragdistill.store import ArtifactStore, Manifest, read_records


def expert_tasks(config: ExperimentConfig) -> list[TaskInfo]:
    limit = config.distill.expert_limit or config.env.limit
    return list_env_tasks(config.env.model_copy(update={"limit": limit}))


def expert_identity(config: ExperimentConfig, store: ArtifactStore, tasks: list[TaskInfo]) -> StageIdentity:
    model = config.models.agent.model
    return StageIdentity(
        stage=f"rollout:{EXPERT_STAGE}",
        settings={
            "env": {
                "name": config.env.name,
                "version": env_version(config.env),
                "options": config.env.options,
            },
            "agent": config.agent.model_dump(mode="json"),
            "tokenizer": {"model": model.name, "max_model_len": model.max_model_len},
            "max_tokens": config.models.agent.sampling.max_tokens,
            **retrieval_settings(config),
        },
        code=code_fingerprint("ragdistill.stages.expert"),
        inputs=retrieval_inputs(config, store),
        growable={"tasks": digest([task.task_id for task in tasks]), "task_count": len(tasks)},
    )


def run_expert_teacher(config: ExperimentConfig, *, progress: ProgressCallback | None = None) -> Manifest:
    """Demonstrate the training tasks without a finished record into ``rollouts/expert``."""
    from ragdistill.agents.formats import get_format
    from ragdistill.environments.registry import get_profile
    from ragdistill.expert_episodes import write_expert_episodes
    from ragdistill.inference.chat import count_chat_tokens, load_tokenizer
    from ragdistill.models import resolve_model

    store = ArtifactStore(config.run.run_root)
    tasks = expert_tasks(config)
    prefix = rollout_prefix(EXPERT_STAGE)
    identity = expert_identity(config, store, tasks)
    label = f"{config.run.name}: {prefix}"
    with StageRun(store, prefix, identity, label=label, lease_wait_s=config.run.lease_wait_s) as run:
        if run.current is not None:
            return run.current
        started = time.perf_counter()
        records = episode_log(store, prefix, config)
        finished = {item["task_id"] for item in records.records() if item.get("error_kind") != "transient"}
        pending = [task for task in tasks if task.task_id not in finished]
        if pending:
            role = config.models.agent
            tokenizer = load_tokenizer(resolve_model(role.model), role.model.trust_remote_code)
            env = config.env
            with open_pool(env, len(pending)) as pool:
                write_expert_episodes(
                    pool,
                    pending,
                    get_format(config.agent.format, get_profile(env.name)),
                    config.agent,
                    examples_provider(config.agent, env),
                    hint_source_factory(config),
                    lambda messages, completion: count_chat_tokens(tokenizer, messages, completion),
                    role.model.max_model_len - role.sampling.max_tokens,
                    records,
                    prompt_version=prompt_version(env.name),
                    progress=progress,
                )
        wanted = {task.task_id for task in tasks}
        shards = records.compact(keep=lambda record: record["task_id"] in wanted)
        shards.append(write_task_list(store, prefix, config.env, tasks))
        counts = episode_counts(EpisodeRecord.from_dict(item) for item in read_records(store, prefix))
        return run.finish(
            shards,
            counts=counts,
            run_stats={"played_now": len(pending), "seconds": round(time.perf_counter() - started, 2)},
        )
