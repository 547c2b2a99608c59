"""The GPU-shaped simulation of benchmarks/rollout.py --simulate: its cost model, its engine's bookkeeping,
the replay of recorded episodes, and one tiny simulated rollout on each schedule against real WebShop
worker processes (the same calls and tokens either way: the replay is faithful).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from ragdistill.environments.base import TaskInfo  # noqa: E402
from ragdistill.inference.base import ChatMessage, GenerationRequest  # noqa: E402
from rollout_simulation import workload  # noqa: E402
from rollout_simulation.gpu import (  # noqa: E402
    GPUShape,
    ReplayHints,
    SimulatedGPUBackendDouble,
    SimulatedGPUEngine,
)
from rollout_simulation.run import Simulation, simulate  # noqa: E402

SHAPE = GPUShape(per_token_s=0.001, fixed_s=0.004, prefill_s=0.008, batch_limit=4)


def test_a_lockstep_call_costs_a_fixed_cost_plus_a_per_token_cost_flat_up_to_the_limit() -> None:
    for n in (1, 4):
        call = SHAPE.iteration_s(n, n, 1) + 47 * SHAPE.iteration_s(n, 0, 0)  # 48 tokens at most
        assert call == pytest.approx(0.004 + 0.008 * n / 4 + 48 * 0.001)
    assert SHAPE.iteration_s(8, 0, 0) == pytest.approx(2 * SHAPE.iteration_s(4, 0, 0)), "above the limit"
    # Kept full, four sequences share every step and each request is prefilled once:
    assert SHAPE.capacity(calls=4, tokens=40) == pytest.approx(40 / (0.008 + 40 * 0.001 / 4))


def test_the_engine_runs_one_token_per_sequence_per_step_and_finishes_each_as_it_ends() -> None:
    engine = SimulatedGPUEngine(SHAPE)
    finished: list[int] = []
    done = threading.Semaphore(0)

    def finish(tokens: int) -> None:
        finished.append(tokens)
        done.release()

    try:
        engine.submit([3], lambda: finish(3), call=True)
        engine.submit([1], lambda: finish(1), call=False)
        for _ in range(2):
            assert done.acquire(timeout=5)
    finally:
        engine.close()
    assert finished == [1, 3], "the short request does not wait for the long one"
    assert engine.stats.tokens == 4 and engine.stats.iterations == 3
    assert engine.stats.busy_s == pytest.approx(0.004 + 0.008 * 2 / 4 + 3 * 0.001)


def recorded(outputs: list[str], task_id: str = "g0") -> workload.RecordedEpisode:
    return workload.RecordedEpisode(
        run="demo/base",
        env="webshop",
        split="train",
        task_id=task_id,
        agent="act",
        stop_reason="max_calls",
        outputs=outputs,
        prompt_tokens=[100 + i for i in range(len(outputs))],
        completion_tokens=[len(output.split()) for output in outputs],
    )


def test_the_double_replays_each_draw_from_its_own_first_call_and_ends_it_past_the_recording() -> None:
    episodes = [recorded(["search[a b]", "click[x]"]), recorded(["search[c]"], task_id="g1")]
    draws = [0, 1, 0]
    hints = ReplayHints(draws, episodes)
    tags = hints.hints_for(
        [(TaskInfo("webshop", "train", "g0", "t"), ""), (TaskInfo("webshop", "train", "g0", "t"), "")]
    )
    assert [hint.texts for hint in tags] == [["replay-0"], ["replay-2"]]
    backend = SimulatedGPUBackendDouble(SHAPE, episodes, draws)
    try:

        def ask(tag: str) -> list[str]:
            request = GenerationRequest([ChatMessage("user", f"Hints: {tag}.")])
            return [generation.text for generation in backend.generate([request])]

        assert ask("replay-0") == ["search[a b]"] and ask("replay-2") == ["search[a b]"]
        assert ask("replay-0") == ["click[x]"]
        (ended,) = backend.generate([GenerationRequest([ChatMessage("user", "replay-0")])])
        assert ended.failed and "the recording ends here" in (ended.error or "")
        assert backend.past_the_recording == 1
        first = backend.answer(GenerationRequest([ChatMessage("user", "replay-1")]))
        assert (first.prompt_tokens, first.completion_tokens) == (100, 1)
    finally:
        backend.close()


def test_both_schedules_replay_the_same_calls_against_real_webshop_workers() -> None:
    data_dir = REPO / "data"
    if not (data_dir / "webshop").exists():
        pytest.skip("no WebShop data (make data)")
    episodes = workload.load("webshop")
    sim = Simulation(env="webshop", episodes=6, concurrency=3, env_workers=1, shape=SHAPE, data_dir=data_dir)
    tasks = workload.tasks_for(episodes, data_dir)
    lockstep = simulate("lockstep", sim, episodes, tasks)
    continuous = simulate("continuous", sim, episodes, tasks)
    drawn = [episodes[index] for index in sim.draws(episodes)]
    for result in (lockstep, continuous):
        assert result["episodes"] == 6 and result["past_the_recording"] == 0
        assert result["calls"] == sum(episode.calls for episode in drawn)
        assert result["gen_tokens"] == sum(sum(episode.completion_tokens) for episode in drawn)
        assert 0 < result["over_capacity"] <= 1.0
    assert lockstep["stops"] == continuous["stops"]
