"""The expert teacher: environment demonstrations rendered as episodes of the agent's own format.

For each training task, the environment's expert actions (through the ``Env`` protocol:
``expert_actions``) are played in the worker pool; the trajectory is rendered as the agent would have
written it (``agents.demonstrations``: ReAct thoughts, StateAct state lines) and recorded exactly as a
rollout records an episode: the same prompt segments (with the hints the RAG teacher would retrieve for
the task in a ``hints`` segment, and few-shot examples that are never the task itself), the same stop
rules and context fitting, the same token counts with the agent model's tokenizer. Records say
``source: expert``; distillation strips their hints and examples like any teacher episode's.

Why: a model too small to win a game even with hints (the laptop demo's 135M model wins none) gives
the RAG teacher no successes to distil; demonstrations do. The expert teacher (``stages.expert``) and
the warm start (``stages.warm_start``) both record them through :func:`record_demonstrations`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ragdistill.agents.control import ContextBudgetError, StopRules, fit_to_budget
from ragdistill.agents.demonstrations import render_expert_turns
from ragdistill.agents.formats import AgentFormat
from ragdistill.config import AgentConfig, ModelSpec
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import EnvSettings
from ragdistill.environments.base import EnvError, TaskInfo
from ragdistill.episodes import EpisodeRecord, Step, StopReason, turn_segments
from ragdistill.messages import ChatMessage, Segment, render_messages
from ragdistill.rollout.collaborators import (
    EpisodePool,
    HintSource,
    ProgressCallback,
    RecordSink,
    RetrievedHints,
)
from ragdistill.rollout.engine import error_kind
from ragdistill.rollout.plan import examples_provider, open_pool
from ragdistill.rollout.plan import prompt_version as prompt_version_of
from ragdistill.rollout.play import episode_log, write_task_list
from ragdistill.store import ArtifactStore
from ragdistill.trajectories import ExpertTrajectory

EXPERT_MODEL = "expert"
"""What an expert record names as its model: the environment's expert, not a language model."""

CountTokens = Callable[[list[ChatMessage], str], tuple[int, int]]


class DemonstrationPool(EpisodePool, Protocol):
    """A pool that also hands out the environment's expert actions (``environments.pool.EnvPool``)."""

    def expert_actions(self, slot: int) -> list[str]: ...


@dataclass(frozen=True)
class Demonstration:
    """What the expert did in one task, as the environment answered it."""

    task: TaskInfo
    trajectory: ExpertTrajectory
    rewards: list[float]
    done: list[bool]
    won: bool
    infos: list[dict[str, Any]] = field(default_factory=list)
    """The environment's info for each step (WebShop: the reward's parts on the purchase)."""


def play_demonstrations(
    pool: DemonstrationPool, tasks: Sequence[TaskInfo]
) -> Iterator[Demonstration | tuple[TaskInfo, EnvError]]:
    """Play every task's expert actions, ``pool.workers`` games at a time, stepping them in lock-step.

    Yields a :class:`Demonstration` per task, or (task, error) when its game would not load or play."""
    width = max(1, pool.workers)
    for start in range(0, len(tasks), width):
        batch = list(tasks[start : start + width])
        active: list[tuple[int, TaskInfo, str, list[str]]] = []
        for task, outcome in zip(batch, pool.reset_many(batch), strict=True):
            if isinstance(outcome, EnvError):
                yield task, outcome
                continue
            slot, reset = outcome
            try:
                actions = pool.expert_actions(slot)
            except EnvError as error:
                pool.release(slot)
                yield task, error
                continue
            active.append((slot, reset.task, reset.observation, actions))
        steps: dict[int, list[tuple[str, str]]] = {slot: [] for slot, *_ in active}
        rewards: dict[int, list[float]] = {slot: [] for slot, *_ in active}
        done: dict[int, list[bool]] = {slot: [] for slot, *_ in active}
        infos: dict[int, list[dict[str, Any]]] = {slot: [] for slot, *_ in active}
        won: dict[int, bool] = {}
        failed: dict[int, EnvError] = {}
        for index in range(max((len(actions) for *_, actions in active), default=0)):
            moving = [(slot, actions[index]) for slot, _, _, actions in active
                      if index < len(actions) and slot not in won and slot not in failed]  # fmt: skip
            if not moving:
                break
            for (slot, action), result in zip(moving, pool.step_many(moving), strict=True):
                if isinstance(result, EnvError):
                    failed[slot] = result
                    continue
                steps[slot].append((action, result.observation.strip()))
                rewards[slot].append(result.reward)
                done[slot].append(result.done)
                infos[slot].append(dict(result.info))
                if result.done:
                    won[slot] = result.won
        for slot, task, observation, _ in active:
            pool.release(slot)
            if slot in failed:
                yield task, failed[slot]
                continue
            trajectory = ExpertTrajectory(
                task_id=task.task_id,
                task_type=task.task_type,
                instruction=task.instruction,
                first_observation=observation.strip(),
                steps=steps[slot],
            )
            yield Demonstration(
                task, trajectory, rewards[slot], done[slot], won.get(slot, False), infos[slot]
            )


def expert_record(
    demonstration: Demonstration,
    fmt: AgentFormat,
    agent: AgentConfig,
    prompt: list[Segment],
    hints: RetrievedHints | None,
    count_tokens: CountTokens,
    budget: int,
    *,
    run_id: str,
    prompt_version: str = "",
) -> EpisodeRecord:
    """The demonstration as the record of an episode the agent played with ``prompt``: the expert's
    turns, answered as the environment answered them, under the agent's stop rules and context budget."""
    task = demonstration.task
    record = EpisodeRecord.for_task(
        task,
        run_id=run_id,
        agent=fmt.name,
        source="expert",
        model=EXPERT_MODEL,
        prompt=prompt,
        hint_ids=list(hints.ids) if hints else [],
        retrieval_tokens=hints.tokens if hints else 0,
        retrieval_note=hints.reason if hints else None,
        prompt_version=prompt_version,
    )
    started = time.perf_counter()
    rules = StopRules(agent.max_calls, agent.repeat_stop)
    history: list[Segment] = []
    env_step = -1
    stop: StopReason | None = None
    for output, observation in render_expert_turns(demonstration.trajectory, fmt):
        parsed = fmt.parse(output)
        try:
            segments, dropped = fit_to_budget(
                [*prompt, *history], lambda s: count_tokens(render_messages(s), "")[0], budget
            )
        except ContextBudgetError as error:
            stop, record.error, record.error_kind = "context_overflow", str(error), "request"
            break
        prompt_tokens, completion_tokens = count_tokens(render_messages(segments), output)
        step = Step(
            output=output,
            action=parsed.action,
            is_think=parsed.is_think,
            observation=observation,
            reward=0.0,
            done=False,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason="stop",
            parse_error=parsed.error,
            dropped_turns=dropped,
            history_text=parsed.text,
        )
        if parsed.action is not None and not parsed.is_think:
            env_step += 1
            step.reward = demonstration.rewards[env_step]
            step.done = demonstration.done[env_step]
            step.info = demonstration.infos[env_step] if env_step < len(demonstration.infos) else {}
            record.env_steps += 1
        record.steps.append(step)
        record.model_calls += 1
        record.policy_prompt_tokens += prompt_tokens
        record.policy_completion_tokens += completion_tokens
        record.truncated_turns = max(record.truncated_turns, dropped)
        history.extend(turn_segments(step.history_text, step.observation))
        if step.done:
            stop = "done"
            break
        stop = rules.update(output)
        if stop is not None:
            break
    record.stop_reason = stop or "done"
    record.success = (
        record.stop_reason == "done" and demonstration.won and bool(record.steps) and record.steps[-1].done
    )
    record.score = record.steps[-1].reward if record.success else 0.0
    record.seconds = time.perf_counter() - started
    return record


def write_expert_episodes(
    pool: DemonstrationPool,
    tasks: Sequence[TaskInfo],
    fmt: AgentFormat,
    agent: AgentConfig,
    examples_for: Callable[[TaskInfo], list[str]],
    hint_source: HintSource | None,
    count_tokens: CountTokens,
    budget: int,
    sink: RecordSink,
    *,
    prompt_version: str = "",
    progress: Callable[[EpisodeRecord, int, int], None] | None = None,
) -> int:
    """Demonstrate every task and append one record each to ``sink``; returns how many were written.
    A game that will not load or play is recorded as an error episode, like a rollout's."""
    run_id = uuid.uuid4().hex[:12]
    written = 0
    for outcome in play_demonstrations(pool, tasks):
        if isinstance(outcome, Demonstration):
            task = outcome.task
            hints = (
                hint_source.hints_for([(task, outcome.trajectory.first_observation)])[0]
                if hint_source
                else None
            )
            prompt = fmt.prompt(
                task,
                outcome.trajectory.first_observation,
                examples_for(task),
                hints.texts if hints and hints.texts else None,
            )
            record = expert_record(
                outcome,
                fmt,
                agent,
                prompt,
                hints,
                count_tokens,
                budget,
                run_id=run_id,
                prompt_version=prompt_version,
            )
        else:
            task, error = outcome
            record = EpisodeRecord.for_task(
                task,
                run_id=run_id,
                agent=fmt.name,
                source="expert",
                model=EXPERT_MODEL,
                prompt=[],
                stop_reason="error",
                error=str(error),
                error_kind=error_kind(error),
                prompt_version=prompt_version,
            )
        sink.append(record.to_dict())
        written += 1
        if progress:
            progress(record, written, len(tasks))
    return written


@dataclass(frozen=True)
class Demonstrations:
    """How the expert's demonstrations become episodes: in ``env``, rendered in the agent's format with
    its prompts and stop rules, fitted to the context window of ``tokenizer``'s model beside a
    completion of ``max_tokens`` and counted with its tokenizer."""

    env: EnvSettings
    agent: AgentConfig
    tokenizer: ModelSpec
    max_tokens: int


def record_demonstrations(
    ctx: RunContext,
    store: ArtifactStore,
    prefix: str,
    how: Demonstrations,
    tasks: list[TaskInfo],
    split: str,
    hint_source: Callable[[], HintSource | None],
    progress: ProgressCallback | None = None,
) -> tuple[list[str], int]:
    """Demonstrate the ``tasks`` without a finished record into the record log under ``prefix``
    (``rollout.expert_episodes``; ``hint_source`` is built only when one is played), then compact it to
    exactly ``tasks`` and write its task list. Returns the files written and how many were played now."""
    from ragdistill.agents.formats import get_format
    from ragdistill.environments.registry import get_profile
    from ragdistill.inference.chat import count_chat_tokens, load_tokenizer
    from ragdistill.models import resolve_model

    records = episode_log(store, prefix, ctx.rollout.shard_size)
    finished = {item["task_id"] for item in records.records() if item.get("error_kind") != "transient"}
    pending = [task for task in tasks if task.task_id not in finished]
    if pending:
        env, agent, model = how.env, how.agent, how.tokenizer
        tokenizer = load_tokenizer(resolve_model(model), model.trust_remote_code)
        with open_pool(ctx, env, len(pending)) as pool:
            write_expert_episodes(
                pool,
                pending,
                get_format(agent.format, get_profile(env.name)),
                agent,
                examples_provider(agent, env.name, ctx.data_dir),
                hint_source(),
                lambda messages, completion: count_chat_tokens(tokenizer, messages, completion),
                model.max_model_len - how.max_tokens,
                records,
                prompt_version=prompt_version_of(env.name),
                progress=progress,
            )
    position = {task.task_id: index for index, task in enumerate(tasks)}
    files = records.compact(
        keep=lambda record: record["task_id"] in position, order=lambda r: position[r["task_id"]]
    )
    files.append(write_task_list(store, prefix, how.env.name, split, tasks, ctx.data_dir))
    return files, len(pending)
