"""What a rollout plays: a :class:`RolloutPlan`, built from a stage's settings and the run context.

A plan names the rollout stage, the environment, the role the agent plays with (as the inference layer
loads it: ``stages.lifecycle.role_config``), the agent section, the pinned task list, who the records say
played (``source``), the hint source (built only when episodes are played: a retriever loads an
embedder) and, for weights that already hold an adapter (a merged student), the adapter digest the
records name. The helpers here list a selection's tasks, resolve an adapter reference to a local folder
and its content digest, and build what every episode's prompt needs (few-shot examples, the prompt
code's version, the environment pool).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ragdistill.config import AgentConfig, ModelSpec, RoleConfig
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import EnvSettings, RolloutSettings, TaskSelection
from ragdistill.environments.base import EnvError, TaskInfo
from ragdistill.episodes import EpisodeSource
from ragdistill.identity import code_fingerprint, digest
from ragdistill.rollout.collaborators import HintSource
from ragdistill.store import ArtifactStore

if TYPE_CHECKING:
    from ragdistill.environments.pool import EnvPool


@dataclass(frozen=True)
class RolloutPlan:
    """One rollout stage: where it goes, who plays, on which tasks, with which hints."""

    stage: str
    env: EnvSettings
    split: str
    role: RoleConfig
    agent: AgentConfig
    tasks: list[TaskInfo]
    """The pinned task list, in the order it is played."""
    source: EpisodeSource = "agent"
    hint_source: Callable[[], HintSource] | None = None
    """Built only when episodes are played (a retriever loads an embedder)."""
    record_adapter: str | None = None
    """The adapter digest records name when the weights already hold it (a merged student checkpoint)."""


def plan_rollout(
    ctx: RunContext,
    settings: RolloutSettings,
    *,
    role: RoleConfig,
    tasks: list[TaskInfo] | None = None,
    hint_source: Callable[[], HintSource] | None = None,
    record_adapter: str | None = None,
) -> RolloutPlan:
    """The plan of ``settings`` played by ``role`` (the agent role as the stage loads it: on the warm
    start's checkpoint when it is on, ``stages.rollout.agent_role``) on the tasks of its selection
    (unless ``tasks`` is given)."""
    return RolloutPlan(
        stage=settings.stage,
        env=settings.env,
        split=settings.tasks.split,
        role=role,
        agent=settings.agent,
        tasks=select_tasks(ctx, settings.env, settings.tasks) if tasks is None else tasks,
        source=settings.source,
        hint_source=hint_source,
        record_adapter=record_adapter,
    )


def select_tasks(ctx: RunContext, env: EnvSettings, selection: TaskSelection) -> list[TaskInfo]:
    """The tasks at positions ``selection.start`` up to ``selection.limit`` of the split's task list (in
    the environment's default order unless ``selection.balanced`` or ``selection.shuffle_seed`` say
    otherwise)."""
    from ragdistill.environments.registry import list_tasks, lister_takes

    order: dict[str, bool | int] = {} if selection.balanced is None else {"balanced": selection.balanced}
    if selection.shuffle_seed is not None:
        if not lister_takes(env.name, "shuffle_seed"):
            raise EnvError(
                f"environment {env.name!r} cannot order its tasks by a seed (its task lister takes no "
                "shuffle_seed); remove env.shuffle_seed from the config"
            )
        order["shuffle_seed"] = selection.shuffle_seed
    tasks = list_tasks(
        env.name,
        data_dir=ctx.data_dir,
        split=selection.split,
        limit=selection.limit,
        task_types=selection.task_types,
        **order,
    )
    return tasks[selection.start :]


def task_list_facts(tasks: list[TaskInfo]) -> dict[str, str | int]:
    """What a task list adds to a rollout's growable identity: a larger list keeps finished episodes."""
    return {"task_list": digest([task.task_id for task in tasks]), "task_count": len(tasks)}


def environment_digest(env_name: str, data_dir: Path) -> str:
    """The content digest of the environment's data version (``environments.registry``)."""
    from ragdistill.environments.registry import environment_version

    return digest(environment_version(env_name, data_dir))


@dataclass(frozen=True)
class ResolvedAdapter:
    path: str | None = None
    digest: str | None = None


def resolve_adapter(
    store: ArtifactStore, reference: str | None, base: ModelSpec | None = None
) -> ResolvedAdapter:
    """A role's adapter as a local folder plus its content digest. A relative reference
    (``adapters/distill/adapter``) names a folder under the run root; URLs are fetched into a cache.
    With ``base``, an adapter trained on another base model is refused (``check_adapter_base``)."""
    if reference is None:
        return ResolvedAdapter()
    from ragdistill.inference.adapters import adapter_digest, check_adapter_base, materialize_adapter
    from ragdistill.models import resolve_model

    if (
        "://" not in reference
        and not reference.startswith("/")
        and store.exists(f"{reference}/adapter_config.json")
    ):
        reference = store.uri(reference)
    folder = materialize_adapter(reference)
    if base is not None:
        check_adapter_base(folder, resolve_model(base))
    return ResolvedAdapter(str(folder), adapter_digest(folder))


def examples_provider(agent: AgentConfig, env_name: str, data_dir: Path) -> Callable[[TaskInfo], list[str]]:
    """The few-shot examples for a task, built once per task type. An expert example is a solved
    training game: never the game being played."""
    from ragdistill.agents.fewshot import build_examples

    examples: dict[tuple[str, str | None], list[str]] = {}

    def examples_for(task: TaskInfo) -> list[str]:
        key = (task.task_type, task.task_id if task.split == "train" else None)
        if key not in examples:
            examples[key] = build_examples(
                agent.fewshot_source,
                agent.format,
                task.task_type,
                agent.fewshot_count,
                data_dir,
                exclude_task_id=key[1],
                env_name=env_name,
            )
        return examples[key]

    return examples_for


def prompt_version(env_name: str) -> str:
    """A short fingerprint of what writes an environment's prompts: the formats and few-shot code, the
    registry with the built-in profiles, and the environment's agent style (for a profile registered
    at run time, whose module the registry does not import)."""
    from ragdistill.environments.registry import get_profile

    code = code_fingerprint(
        "ragdistill.agents.formats", "ragdistill.agents.fewshot", "ragdistill.environments.registry"
    )
    return digest([code, repr(get_profile(env_name).agent)])[:16]


def open_pool(ctx: RunContext, env: EnvSettings, tasks: int) -> EnvPool:
    """Worker processes for ``tasks`` episodes of ``env`` (never more workers than tasks)."""
    from ragdistill.environments.pool import EnvPool

    return EnvPool(
        env.name,
        env.options,
        workers=min(ctx.env_workers, tasks),
        data_dir=ctx.data_dir,
        recycle_after=ctx.max_games_per_worker,
    )


@contextmanager
def open_pools(ctx: RunContext, env: EnvSettings, tasks: int) -> Iterator[list[EnvPool]]:
    """One single-process pool per environment worker (never more than tasks), started side by side:
    the continuous engine drives each from its own thread, so a game loading in one process holds up
    only the episodes that live in it."""
    from ragdistill.environments.pool import EnvPool

    def start() -> EnvPool:
        return EnvPool(
            env.name, env.options, workers=1, data_dir=ctx.data_dir, recycle_after=ctx.max_games_per_worker
        )

    count = max(1, min(ctx.env_workers, tasks))
    with ExitStack() as stack:
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="env-pool-start") as starter:
            futures = [starter.submit(start) for _ in range(count)]
        pools: list[EnvPool] = []
        failure: BaseException | None = None
        for future in futures:
            try:
                pools.append(stack.enter_context(future.result()))
            except BaseException as error:  # every pool that started is closed before this is raised
                failure = failure or error
        if failure is not None:
            raise failure
        yield pools
