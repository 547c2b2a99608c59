"""The batched lock-step rollout engine (stage A, and the teacher of stage C), and what every engine
shares: an episode's prompt, context budget, parsing, stop rules, faults and record
(``rollout.continuous`` builds the continuous engine on it; ``rollout.schedule`` picks one).

Every turn, each active episode contributes its next prompt to ONE batched generate call; outputs are
parsed; the environment pool steps all the resulting actions in parallel; finished episodes are written
at once as one record each and their places are refilled from the task queue. Only active episodes are
held in memory, so thousands of episodes cost no more memory than ``batch_size`` of them.

Faults stay with their episode: a request the backend could not serve, a prompt that no longer fits
the context, or a game whose worker crashed ends that episode alone, recorded with its reason and
whether it was the episode's own input (``request``) or the infrastructure (``transient``: played again
on resume). Restarting the same rollout plays only the tasks without a finished record: a killed run
loses at most the episodes that were in flight.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ragdistill.agents.control import ContextBudgetError, StopRules, fit_to_budget
from ragdistill.agents.formats import AgentFormat
from ragdistill.config import AgentConfig, RoleConfig
from ragdistill.environments.base import EnvError, ResetResult, StepResult, TaskInfo
from ragdistill.episodes import (
    EpisodeRecord,
    EpisodeSource,
    ErrorKind,
    Step,
    StopReason,
    call_segments,
    turn_segments,
)
from ragdistill.inference.base import Backend, Generation, GenerationRequest
from ragdistill.messages import Segment, render_messages
from ragdistill.rollout.collaborators import (
    EpisodePool,
    HintSource,
    ProgressCallback,
    RecordSink,
    RetrievedHints,
    RolloutStats,
)

__all__ = ["EpisodeRecord", "RolloutEngine", "call_segments"]


@dataclass
class ActiveEpisode:
    """An episode being played: its pool slot, its record so far, its prompt and history."""

    slot: int
    record: EpisodeRecord
    prompt: list[Segment]
    history: list[Segment]
    rules: StopRules
    started: float


@dataclass
class AnsweredTurn:
    """One answered model call, before the environment has taken its action (``env_action``; None when
    the format answered it: a think, an output without an action)."""

    episode: ActiveEpisode
    step: Step
    stop_reason: StopReason | None
    env_action: str | None


@dataclass(frozen=True)
class EngineSettings:
    """What the engine needs beyond its collaborators: the agent's rules, the role it plays with, the
    batch size, and how records name the adapter (its content digest) and the prompt code version."""

    agent: AgentConfig
    role: RoleConfig
    batch_size: int = 16
    adapter_path: str | None = None
    adapter_digest: str | None = None
    prompt_version: str = ""


class RolloutEngine:
    """Plays tasks in lock-step batches; one generate call per turn for all active episodes."""

    takes_many_pools = False
    """Whether the engine drives several environment pools (one pool otherwise)."""

    def __init__(
        self,
        settings: EngineSettings,
        backend: Backend,
        pool: EpisodePool | Sequence[EpisodePool],
        fmt: AgentFormat,
        examples_for: Callable[[TaskInfo], list[str]],
        sink: RecordSink,
        *,
        source: EpisodeSource = "agent",
        hint_source: HintSource | None = None,
        run_id: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.pools = list(pool) if isinstance(pool, Sequence) else [pool]
        if not self.pools or (len(self.pools) > 1 and not self.takes_many_pools):
            raise ValueError(f"{type(self).__name__} drives one environment pool, not {len(self.pools)}")
        self.settings, self.backend, self.pool, self.fmt = settings, backend, self.pools[0], fmt
        self.examples_for, self.sink, self.source = examples_for, sink, source
        self.hint_source, self.progress = hint_source, progress
        self.run_id = run_id or uuid.uuid4().hex[:12]
        role = settings.role
        self.sampling = role.sampling
        self.model_name = role.model.name
        self.budget = role.model.max_model_len - role.sampling.max_tokens
        if self.budget <= 0:
            raise ValueError(
                f"models.agent.sampling.max_tokens ({role.sampling.max_tokens}) leaves no room for the prompt "
                f"in max_model_len ({role.model.max_model_len})"
            )
        self.stats = RolloutStats()
        self._total = 0

    def run(self, tasks: Sequence[TaskInfo]) -> RolloutStats:
        """Play every task. Games for the next admitted tasks load in the pool's workers while the
        model generates for the active episodes (loading a game costs seconds); the pool is only ever
        used by one thread at a time: the loader during ``generate``, this thread otherwise."""
        start = time.perf_counter()
        self._total = len(tasks)
        queue = deque(tasks)
        active: list[ActiveEpisode] = []
        batch_size = self.settings.batch_size
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="env-reset") as loader:
            while queue or active:
                # With nothing to generate, load only one game per worker: the model starts on those
                # while the rest of the batch loads, instead of waiting for every game.
                room = batch_size - len(active) if active else min(batch_size, self.pool.workers)
                admitted = [queue.popleft() for _ in range(min(len(queue), room))]
                loading = loader.submit(self.pool.reset_many, admitted) if admitted else None
                runnable, generations, overflowed = self._generate(active)
                started = self._start(admitted, loading.result()) if loading else []
                for episode, error in overflowed:
                    self._finish(
                        episode, "context_overflow", won=False, reward=0.0, error=error, error_kind="request"
                    )
                active = self._apply(runnable, generations) + started
        self.stats.seconds = time.perf_counter() - start
        return self.stats

    def _start(
        self, tasks: list[TaskInfo], outcomes: list[tuple[int, ResetResult] | EnvError]
    ) -> list[ActiveEpisode]:
        self.stats.started_task_ids.extend(task.task_id for task in tasks)
        started: list[tuple[int, ResetResult]] = []
        for task, outcome in zip(tasks, outcomes, strict=True):
            if isinstance(outcome, EnvError):
                self._write_error(task, str(outcome), error_kind(outcome))
            else:
                started.append(outcome)
        hints: list[RetrievedHints | None] = [None] * len(started)
        if self.hint_source is not None and started:
            hints = list(
                self.hint_source.hints_for([(reset.task, reset.observation) for _, reset in started])
            )
        return [self._episode(slot, reset, hint) for (slot, reset), hint in zip(started, hints, strict=True)]

    def _episode(self, slot: int, reset: ResetResult, hints: RetrievedHints | None) -> ActiveEpisode:
        task = reset.task
        prompt = self.fmt.prompt(
            task,
            reset.observation,
            self.examples_for(task),
            hints.texts if hints and hints.texts else None,
        )
        record = self._new_record(
            task,
            prompt,
            hint_ids=list(hints.ids) if hints else [],
            retrieval_tokens=hints.tokens if hints else 0,
            retrieval_note=hints.reason if hints else None,
        )
        rules = StopRules(self.settings.agent.max_calls, self.settings.agent.repeat_stop)
        return ActiveEpisode(slot, record, prompt, [], rules, time.perf_counter())

    def _count_prompt_tokens(self, segments: list[Segment]) -> int:
        return self.backend.count_tokens(render_messages(segments))[0]

    def _fit(self, episode: ActiveEpisode) -> tuple[list[Segment], int]:
        """The prompt with the fewest oldest turns dropped so that it counts at most ``budget`` tokens,
        counted with the model's tokenizer and chat template (a true bound, not an estimate)."""
        return fit_to_budget([*episode.prompt, *episode.history], self._count_prompt_tokens, self.budget)

    def _generate(
        self, active: list[ActiveEpisode]
    ) -> tuple[list[tuple[ActiveEpisode, int]], list[Generation], list[tuple[ActiveEpisode, str]]]:
        """One batched call for every active episode; touches the backend only, never the pool.

        Returns the episodes that were asked (with the history turns dropped to fit), their generations,
        and the episodes whose fixed prompt no longer fits the context (finished by the caller)."""
        runnable: list[tuple[ActiveEpisode, int]] = []
        overflowed: list[tuple[ActiveEpisode, str]] = []
        requests: list[GenerationRequest] = []
        for episode in active:
            try:
                segments, dropped = self._fit(episode)
            except ContextBudgetError as error:
                overflowed.append((episode, str(error)))
                continue
            runnable.append((episode, dropped))
            requests.append(
                GenerationRequest.sampled(
                    render_messages(segments),
                    self.sampling,
                    stop=list(self.fmt.stop),
                    adapter=self.settings.adapter_path,
                )
            )
        generations = self.backend.generate(requests) if requests else []
        return runnable, generations, overflowed

    def _apply(
        self, runnable: list[tuple[ActiveEpisode, int]], generations: list[Generation]
    ) -> list[ActiveEpisode]:
        """Parse every output, step the environment for all actions at once, record and finish episodes."""
        if len(generations) != len(runnable):
            raise RuntimeError(
                f"backend {self.backend.name!r} returned {len(generations)} answers for {len(runnable)} requests"
            )
        turns = [
            turn
            for (episode, dropped), generation in zip(runnable, generations, strict=True)
            if (turn := self._answered(episode, dropped, generation)) is not None
        ]
        env_actions = [(turn.episode.slot, turn.env_action) for turn in turns if turn.env_action is not None]
        results = iter(self.pool.step_many(env_actions)) if env_actions else iter(())
        return [
            turn.episode
            for turn in turns
            if self._settle(turn, next(results) if turn.env_action is not None else None)
        ]

    def _answered(self, episode: ActiveEpisode, dropped: int, generation: Generation) -> AnsweredTurn | None:
        """The step a generation makes, with the action the environment must take; None when the
        request failed (the episode is then finished with its error)."""
        if generation.error is not None:
            self._finish(
                episode,
                "error",
                won=False,
                reward=0.0,
                error=generation.error,
                error_kind=generation.error_kind or "transient",
            )
            return None
        parsed = self.fmt.parse(generation.text)
        local_observation = self.fmt.observation_without_env(parsed)
        step = Step(
            output=generation.text,
            action=parsed.action,
            is_think=parsed.is_think,
            observation=local_observation or "",
            reward=0.0,
            done=False,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            finish_reason=generation.finish_reason,
            parse_error=parsed.error,
            dropped_turns=dropped,
            history_text=parsed.text,
        )
        stop_reason = episode.rules.update(generation.text)
        env_action = parsed.action if local_observation is None and parsed.action is not None else None
        return AnsweredTurn(episode, step, stop_reason, env_action)

    def _settle(self, turn: AnsweredTurn, outcome: StepResult | EnvError | None) -> bool:
        """Record a turn with what the environment answered (``None``: it took no action); whether the
        episode goes on (else it is finished and written)."""
        episode, step = turn.episode, turn.step
        if turn.env_action is not None:
            if isinstance(outcome, EnvError):
                self._record_step(episode, step)
                self._finish(
                    episode,
                    "error",
                    won=False,
                    reward=0.0,
                    error=str(outcome),
                    error_kind=error_kind(outcome),
                )
                return False
            if outcome is None:
                raise RuntimeError(f"no environment answer for {episode.record.task_id}'s action")
            step.observation, step.reward, step.done = outcome.observation, outcome.reward, outcome.done
            step.info = dict(outcome.info)
            episode.record.env_steps += 1
            self._record_step(episode, step)
            if outcome.done:
                self._finish(episode, "done", won=outcome.won, reward=outcome.reward)
                return False
        else:
            self._record_step(episode, step)
        if turn.stop_reason is not None:
            self._finish(episode, turn.stop_reason, won=False, reward=0.0)
            return False
        return True

    def _record_step(self, episode: ActiveEpisode, step: Step) -> None:
        record = episode.record
        record.steps.append(step)
        record.model_calls += 1
        record.policy_prompt_tokens += step.prompt_tokens
        record.policy_completion_tokens += step.completion_tokens
        record.truncated_turns = max(record.truncated_turns, step.dropped_turns)
        episode.history.extend(turn_segments(step.history_text, step.observation))
        self.stats.model_calls += 1
        self.stats.completion_tokens += step.completion_tokens

    def _finish(
        self,
        episode: ActiveEpisode,
        reason: StopReason,
        *,
        won: bool,
        reward: float,
        error: str | None = None,
        error_kind: ErrorKind | None = None,
    ) -> None:
        record = episode.record
        record.stop_reason = reason
        record.success = bool(won)
        record.score = float(reward)
        record.error = error
        record.error_kind = error_kind
        record.seconds = time.perf_counter() - episode.started
        self._release(episode.slot)
        self._emit(record)

    def _release(self, slot: int) -> None:
        self.pool.release(slot)

    def _emit(self, record: EpisodeRecord) -> None:
        """Write a finished episode at once: from here on a restart will not play it again."""
        self.sink.append(record.to_dict())
        self.stats.finished += 1
        self.stats.won += int(record.success)
        self.stats.errors += int(record.stop_reason == "error")
        self.stats.transient_errors += int(record.is_transient_failure)
        if self.progress:
            self.progress(record, self.stats.finished, self._total)

    def _write_error(self, task: TaskInfo, message: str, kind: ErrorKind) -> None:
        self._emit(self._new_record(task, [], stop_reason="error", error=message, error_kind=kind))

    def _new_record(self, task: TaskInfo, prompt: list[Segment], **fields: Any) -> EpisodeRecord:
        return EpisodeRecord.for_task(
            task,
            run_id=self.run_id,
            agent=self.fmt.name,
            source=self.source,
            model=self.model_name,
            adapter=self.settings.adapter_digest,
            seed=self.sampling.seed,
            prompt=prompt,
            prompt_version=self.settings.prompt_version,
            **fields,
        )


def error_kind(error: EnvError) -> ErrorKind:
    """A crashed or hung worker is the infrastructure's fault; a game that fails is the task's own."""
    return "transient" if error.transient else "request"
