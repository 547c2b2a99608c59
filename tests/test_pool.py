"""The environment pool's mechanics, on a cheap scripted environment (env_doubles.CounterEnvDouble).

Real processes, real pipes, real crashes; only the game is a test double so the tests run in
seconds. The pool on real ALFWorld games is tested in test_alfworld.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from env_doubles import DOUBLE, tasks
from ragdistill.environments.base import EnvError, ResetResult
from ragdistill.environments.pool import EnvPool


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); it is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_many_episodes_over_few_workers_run_in_lockstep_and_reuse_processes() -> None:
    with EnvPool(DOUBLE, {"goal": 2}, workers=2) as pool:
        pids = pool.worker_pids()
        started = pool.reset_many(tasks("a", "b", "c", "d", "e"))
        assert all(not isinstance(item, EnvError) for item in started)
        slots = [item[0] for item in started]  # type: ignore[index]
        assert len(set(slots)) == 5
        assert {reset.observation.split()[-1] for _, reset in started} == {str(pid) for pid in pids}  # type: ignore[misc]
        first = pool.step_many([(slot, "inc") for slot in slots])
        assert [result.observation for result in first] == ["a:1", "b:1", "c:1", "d:1", "e:1"]  # type: ignore[union-attr]
        second = pool.step_many([(slot, "inc") for slot in reversed(slots)])
        assert all(result.won and result.done for result in second)  # type: ignore[union-attr]
        assert pool.expert_actions(slots[0]) == ["inc", "inc"]
        for slot in slots:
            pool.release(slot)
        again = pool.reset_many(tasks("f", "g"))
        assert pool.worker_pids() == pids
        assert {reset.task.task_id for _, reset in again} == {"f", "g"}  # type: ignore[misc]
    assert not any(alive(pid) for pid in pids)


def test_failures_come_back_per_task_and_the_pool_goes_on() -> None:
    with EnvPool(DOUBLE, workers=2) as pool:
        started = pool.reset_many(tasks("ok", "bad", "boom"))
        assert not isinstance(started[0], EnvError)
        assert isinstance(started[1], EnvError) and "game bad is broken" in str(started[1])
        assert not started[1].transient, "a broken game fails the same way every time"
        assert isinstance(started[2], EnvError)
        assert "counter-double test/boom" in str(started[2]) and "ValueError" in str(started[2])
        slot = started[0][0]  # type: ignore[index]
        assert pool.live_slots() == [slot]
        assert pool.step_many([(slot, "inc")])[0].observation == "ok:1"  # type: ignore[union-attr]


def test_a_dead_worker_is_replaced_and_its_episodes_report_errors() -> None:
    with EnvPool(DOUBLE, workers=2) as pool:
        (slot_a, _), (slot_b, _), (slot_c, _) = pool.reset_many(tasks("a", "b", "c"))  # type: ignore[misc]
        old = pool.worker_pids()
        results = pool.step_many([(slot_a, "die"), (slot_b, "inc")])
        assert isinstance(results[0], EnvError) and "exited" in str(results[0])
        assert results[0].transient, "a dead worker is the machinery's fault: the episode is retried"
        assert results[1].observation == "b:1"  # type: ignore[union-attr]
        lost = pool.step_many([(slot_c, "inc")])[0]  # slot c shared the dead worker with slot a
        assert isinstance(lost, EnvError) and "lost" in str(lost)
        assert pool.worker_pids() != old and len(pool.worker_pids()) == 2
        assert not isinstance(pool.reset_many(tasks("d", "e"))[0], EnvError)


def wait_until_gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(pid) for pid in pids)


def pid_of(reset: ResetResult) -> int:
    return int(reset.observation.split()[-1])


def test_a_worn_out_worker_retires_plays_on_and_exits_with_its_last_episode() -> None:
    with EnvPool(DOUBLE, {"goal": 5}, workers=1, recycle_after=2) as pool:
        first_pid = pool.worker_pids()[0]
        (one, reset_one), (two, _) = pool.reset_many(tasks("a", "b"))  # type: ignore[misc]
        (three, reset_three) = pool.reset_many(tasks("c"))[0]  # type: ignore[misc]
        assert pid_of(reset_one) == first_pid and pid_of(reset_three) != first_pid
        assert pool.worker_pids() == [pid_of(reset_three)] and pool.workers == 1
        assert pool.retiring_pids() == [first_pid]
        steps = pool.step_many([(one, "inc"), (three, "inc"), (two, "inc")])
        assert [step.observation for step in steps] == ["a:1", "c:1", "b:1"]  # type: ignore[union-attr]
        pool.release(one)
        assert alive(first_pid) and pool.step_many([(two, "inc")])[0].observation == "b:2"  # type: ignore[union-attr]
        pool.release(two)
        assert wait_until_gone([first_pid])
        assert pool.retiring_pids() == []
        assert pool.games_played_by_pid() == {first_pid: 2, pid_of(reset_three): 1}


def test_no_process_loads_more_than_recycle_after_games_under_a_large_batch() -> None:
    """A rollout's pattern: 16 live episodes over 2 workers, each episode ending after its own number
    of turns and replaced at once, 40 games in all."""
    recycle_after, batch, total = 3, 16, 40
    queue = [f"g{index}" for index in range(total)]
    live: dict[int, list[Any]] = {}  # slot -> [task id, steps taken, turns it lasts]
    loads_seen: Counter[int] = Counter()
    with EnvPool(DOUBLE, {"goal": 100}, workers=2, recycle_after=recycle_after) as pool:
        while queue or live:
            admitted, queue = queue[: batch - len(live)], queue[batch - len(live) :]
            for task_id, outcome in zip(admitted, pool.reset_many(tasks(*admitted)), strict=True):
                assert not isinstance(outcome, EnvError), outcome
                slot, reset = outcome
                assert reset.task.task_id == task_id and reset.observation.startswith(f"start {task_id} in ")
                loads_seen[pid_of(reset)] += 1
                live[slot] = [task_id, 0, 1 + int(task_id[1:]) * 7 % 5]
            assert pool.workers == 2 and len(pool.worker_pids()) == 2
            assert len(pool.retiring_pids()) <= len(live)
            slots = sorted(live, key=lambda slot: (slot * 5) % 7)
            for slot, result in zip(slots, pool.step_many([(slot, "inc") for slot in slots]), strict=True):
                live[slot][1] += 1
                assert not isinstance(result, EnvError), result
                assert result.observation == f"{live[slot][0]}:{live[slot][1]}"
            for slot in [slot for slot in slots if live[slot][1] == live[slot][2]]:
                pool.release(slot)
                del live[slot]
        played = pool.games_played_by_pid()
    assert played == dict(loads_seen)
    assert sum(played.values()) == total
    assert max(played.values()) <= recycle_after
    assert len(played) > 2
    assert wait_until_gone(list(played), timeout_s=2.0)


def test_a_retiring_worker_that_dies_fails_only_its_own_episodes() -> None:
    with EnvPool(DOUBLE, workers=1, recycle_after=2) as pool:
        (old_a, _), (old_b, _) = pool.reset_many(tasks("a", "b"))  # type: ignore[misc]
        (new_c, _) = pool.reset_many(tasks("c"))[0]  # type: ignore[misc]
        (retiring,) = pool.retiring_pids()
        active = pool.worker_pids()
        results = pool.step_many([(old_a, "die"), (new_c, "inc")])
        assert isinstance(results[0], EnvError) and "exited" in str(results[0])
        assert results[1].observation == "c:1"  # type: ignore[union-attr]
        lost = pool.step_many([(old_b, "inc")])[0]
        assert isinstance(lost, EnvError) and "lost" in str(lost)
        assert pool.worker_pids() == active and pool.retiring_pids() == []
        assert not alive(retiring)
        assert not isinstance(pool.reset_many(tasks("d"))[0], EnvError)


def test_a_fresh_worker_that_does_not_start_begins_no_episode_and_is_replaced_next_time() -> None:
    with EnvPool(DOUBLE, workers=1, recycle_after=1) as pool:
        (kept, _) = pool.reset_many(tasks("a"))[0]  # type: ignore[misc]
        pool._start_timeout_s = 0.0  # the fresh process cannot have said "ready" yet
        with pytest.raises(EnvError, match="did not start"):
            pool.reset_many(tasks("b", "c"))
        assert pool.live_slots() == [kept]
        pool._start_timeout_s = 60.0
        started = pool.reset_many(tasks("d"))
        assert not isinstance(started[0], EnvError)
        assert pool.step_many([(kept, "inc")])[0].observation == "a:1"  # type: ignore[union-attr]
        assert max(pool.games_played_by_pid().values()) == 1
        everyone = list(pool.games_played_by_pid())
    assert wait_until_gone(everyone, timeout_s=2.0)


def test_misuse_is_reported() -> None:
    with EnvPool(DOUBLE, workers=1) as pool:
        (slot, _) = pool.reset_many(tasks("a"))[0]  # type: ignore[misc]
        with pytest.raises(ValueError, match="twice"):
            pool.step_many([(slot, "inc"), (slot, "inc")])
        with pytest.raises(ValueError, match="no live episode"):
            pool.step_many([(slot + 100, "inc")])
    with pytest.raises(EnvError, match="closed"):
        pool.reset_many(tasks("b"))
    with pytest.raises(EnvError, match=r"unknown environment 'nope'; registered: \[.*'alfworld'"):
        EnvPool("nope")


def test_keyboard_interrupt_leaves_no_worker_processes(tmp_path: Path) -> None:
    script = tmp_path / "interrupt.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from env_doubles import DOUBLE, tasks
            from ragdistill.environments.pool import EnvPool

            if __name__ == "__main__":
                with EnvPool(DOUBLE, workers=2) as pool:
                    pool.reset_many(tasks("a", "b", "c"))
                    print(" ".join(map(str, pool.worker_pids())), flush=True)
                    raise KeyboardInterrupt
            """
        )
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert "KeyboardInterrupt" in run.stderr
    pids = [int(pid) for pid in run.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)
