"""ALFWorld steps/s with TextWorld's grammar parsed on every step and with the parse cache, in one run.

    .venv/bin/python benchmarks/alfworld_steps.py [--games 6] [--repeats 2] [--data-dir data]

Plays the walkthrough of ``--games`` valid_unseen games (balanced: one per task type first) through
:class:`AlfworldEnv`, alternating TextWorld's own parsers and the cache
(``ragdistill.environments.alfworld.parse_cache``) ``--repeats`` times each, so both see the same machine
load. The cache starts cold in each of its passes. Only ``step`` calls are timed for steps/s; loading a
game (``reset``) is timed separately. Prints both rates per pass, the totals and the ratio
cached ÷ uncached, and checks that both modes saw the same observations.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ragdistill.environments.alfworld import AlfworldEnv, list_tasks, parse_cache
from ragdistill.environments.base import TaskInfo

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Pass:
    cached: bool
    steps: int
    step_seconds: float
    loads: int
    load_seconds: float

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.step_seconds


def play_pass(env: AlfworldEnv, tasks: list[TaskInfo], cached: bool) -> tuple[Pass, list[str]]:
    os.environ[parse_cache.DISABLE_ENV] = "1" if cached else "0"
    parse_cache.uninstall()  # the next reset installs a fresh, cold cache when cached
    result = Pass(cached=cached, steps=0, step_seconds=0.0, loads=0, load_seconds=0.0)
    observations: list[str] = []
    for task in tasks:
        started = time.perf_counter()
        first = env.reset(task)
        result.load_seconds += time.perf_counter() - started
        result.loads += 1
        observations.append(first.observation)
        for action in env.expert_actions():
            started = time.perf_counter()
            step = env.step(action)
            result.step_seconds += time.perf_counter() - started
            result.steps += 1
            observations.append(step.observation)
    return result, observations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--split", default="valid_unseen")
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks" / "results" / "alfworld_steps.json"
    )
    args = parser.parse_args(argv)

    tasks = list_tasks(args.data_dir, args.split, limit=args.games)
    env = AlfworldEnv(args.data_dir)
    passes: list[Pass] = []
    seen: dict[bool, list[str]] = {}
    try:
        for _ in range(args.repeats):
            for cached in (False, True):
                result, observations = play_pass(env, tasks, cached)
                passes.append(result)
                seen.setdefault(cached, observations)
                if observations != seen[cached]:
                    raise SystemExit("a repeat saw other observations than the first pass: not comparable")
                print(
                    f"{'cached  ' if cached else 'uncached'}  {result.steps} steps  "
                    f"{result.steps_per_s:6.1f} steps/s  load {result.load_seconds / result.loads:.2f} s/game"
                )
    finally:
        env.close()
    if seen[False] != seen[True]:
        raise SystemExit("the cache changed what the games said")

    def total(cached: bool) -> dict[str, float]:
        mine = [p for p in passes if p.cached == cached]
        steps = sum(p.steps for p in mine)
        return {
            "steps": steps,
            "steps_per_s": round(steps / sum(p.step_seconds for p in mine), 2),
            "load_s_per_game": round(sum(p.load_seconds for p in mine) / sum(p.loads for p in mine), 3),
        }

    uncached, cached = total(False), total(True)
    summary = {
        "games": len(tasks),
        "repeats": args.repeats,
        "uncached": uncached,
        "cached": cached,
        "steps_per_s_ratio": round(cached["steps_per_s"] / uncached["steps_per_s"], 2),
        "load_time_ratio": round(cached["load_s_per_game"] / uncached["load_s_per_game"], 2),
        "passes": [asdict(p) for p in passes],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({key: value for key, value in summary.items() if key != "passes"}))
    print(
        f"steps/s cached ÷ uncached: {summary['steps_per_s_ratio']}×  "
        f"(load time per game cached ÷ uncached: {summary['load_time_ratio']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
