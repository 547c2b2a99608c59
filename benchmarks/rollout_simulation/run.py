"""One simulated rollout: recorded demo episodes replayed on the simulated GPU, against the real
environment in its worker pool, under the lock-step or the continuous engine.

The agent plays with the demo config's agent settings (format, call cap, repeat stop) and environment
options, so the replayed outputs parse and stop as they did when they were recorded; the few-shot
examples are left out (the double replays the recorded token counts, whatever the prompt holds).
"""

from __future__ import annotations

import random
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragdistill.agents.formats import get_format
from ragdistill.config import load_config
from ragdistill.environments.base import TaskInfo
from ragdistill.environments.pool import EnvPool
from ragdistill.environments.registry import get_profile
from ragdistill.rollout import ContinuousRolloutEngine, EngineSettings, RolloutEngine
from rollout_simulation.gpu import GPUShape, ReplayHints, SimulatedGPUBackendDouble
from rollout_simulation.workload import RecordedEpisode

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Simulation:
    env: str
    episodes: int
    concurrency: int
    env_workers: int
    shape: GPUShape
    data_dir: Path
    seed: int = 0

    def draws(self, recorded: list[RecordedEpisode]) -> list[int]:
        """Which recorded episode each simulated episode replays: drawn uniformly, with replacement."""
        rng = random.Random(self.seed)
        return [rng.randrange(len(recorded)) for _ in range(self.episodes)]


@dataclass
class ListSink:
    records: list[dict[str, Any]] = field(default_factory=list)

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def simulate(
    schedule: str, sim: Simulation, recorded: list[RecordedEpisode], tasks: dict[str, TaskInfo]
) -> dict[str, Any]:
    """Play ``sim.episodes`` draws of the recorded episodes with ``sim.concurrency`` in flight."""
    config = load_config(REPO / "configs" / f"demo-{sim.env}.yaml")
    settings = EngineSettings(config.agent, config.models.agent, batch_size=sim.concurrency)
    fmt = get_format(config.agent.format, get_profile(sim.env))
    draws = sim.draws(recorded)
    backend = SimulatedGPUBackendDouble(sim.shape, recorded, draws)
    sink = ListSink()
    options = dict(config.env.options)
    with ExitStack() as stack:
        if schedule == "lockstep":
            pool = stack.enter_context(
                EnvPool(sim.env, options, workers=sim.env_workers, data_dir=sim.data_dir)
            )
            engine: RolloutEngine = RolloutEngine(
                settings, backend, pool, fmt, lambda _: [], sink, hint_source=ReplayHints(draws, recorded)
            )
        else:
            pools = [
                stack.enter_context(EnvPool(sim.env, options, workers=1, data_dir=sim.data_dir))
                for _ in range(sim.env_workers)
            ]
            engine = ContinuousRolloutEngine(
                settings, backend, pools, fmt, lambda _: [], sink, hint_source=ReplayHints(draws, recorded)
            )
        steady = SteadyWindow(backend, sim.episodes - sim.concurrency)
        engine.progress = steady.on_episode
        start = time.perf_counter()
        stats = engine.run([tasks[recorded[index].task_id] for index in draws])
        seconds = time.perf_counter() - start
    backend.close()
    engine_stats = backend.engine.stats
    capacity = sim.shape.capacity(stats.model_calls, stats.completion_tokens)
    return {
        "schedule": schedule,
        "seconds": seconds,
        "episodes": stats.finished,
        "calls": stats.model_calls,
        "gen_tokens": stats.completion_tokens,
        "gen_tokens_per_s": stats.completion_tokens / seconds,
        "capacity_tokens_per_s": capacity,
        "over_capacity": stats.completion_tokens / seconds / capacity,
        "steady_over_capacity": steady.tokens_per_s() / capacity,
        "engine_busy_share": engine_stats.busy_s / seconds,
        "mean_running": engine_stats.running_sum / max(1, engine_stats.iterations),
        "past_the_recording": backend.past_the_recording,
        "stops": _count(record["stop_reason"] for record in sink.records),
    }


class SteadyWindow:
    """Tokens/s while every place is taken: from the first finished episode (the first games have
    loaded) until the last task is admitted (``episodes - concurrency`` episodes have finished), leaving
    out the start, where games load, and the tail, where places stay empty."""

    def __init__(self, backend: SimulatedGPUBackendDouble, finished_at_end: int) -> None:
        self._backend, self._finished_at_end = backend, finished_at_end
        self._marks: dict[str, tuple[float, int]] = {}

    def on_episode(self, _record: Any, finished: int, _total: int) -> None:
        mark = (time.perf_counter(), self._backend.engine.stats.tokens)
        if finished == 1:
            self._marks["start"] = mark
        if finished == self._finished_at_end:
            self._marks["end"] = mark

    def tokens_per_s(self) -> float:
        if "start" not in self._marks or "end" not in self._marks:
            return float("nan")
        (started, first), (ended, last) = self._marks["start"], self._marks["end"]
        return (last - first) / (ended - started) if ended > started else float("nan")


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))
