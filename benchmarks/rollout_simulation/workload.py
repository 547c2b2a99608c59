"""Recorded demo episodes as replay scripts: what the simulated rollout plays.

An episode's script is what the real model said at each call of a demo run (the outputs, with their
prompt and completion token counts) and the game it played. The simulation plays the same game in the
real environment and answers each call with the recorded output: the episode lengths, output lengths
and prompt lengths are the demos' own, never chosen for the benchmark.

``record`` reads every agent-played episode (not the expert's demonstrations, not an episode ended by an
error) of the rollout folders of one or more run roots; ``save``/``load`` keep them in one JSON file
(``benchmarks/results/demo-episodes.json``), so the simulation does not need the run roots.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ragdistill.environments.base import TaskInfo

WORKLOAD_FILE = Path(__file__).resolve().parents[1] / "results" / "demo-episodes.json"


@dataclass(frozen=True)
class RecordedEpisode:
    run: str
    """The run root's name and rollout folder it was recorded in (``demo-alfworld/base``)."""
    env: str
    split: str
    task_id: str
    agent: str
    stop_reason: str
    outputs: list[str]
    prompt_tokens: list[int]
    completion_tokens: list[int]

    @property
    def calls(self) -> int:
        return len(self.outputs)


def record(run_roots: list[Path]) -> list[RecordedEpisode]:
    """Every agent-played episode stored under ``<root>/rollouts/*/shard-*.jsonl`` of each run root."""
    episodes: list[RecordedEpisode] = []
    for root in run_roots:
        shards = sorted(root.glob("rollouts/*/shard-*.jsonl"))
        if not shards:
            raise SystemExit(f"{root} holds no rollouts/<stage>/shard-*.jsonl: name a finished run root")
        for shard in shards:
            for line in shard.read_text().splitlines():
                data = json.loads(line)
                if data["source"] == "expert" or data["stop_reason"] == "error" or not data["steps"]:
                    continue
                steps = data["steps"]
                episodes.append(
                    RecordedEpisode(
                        run=f"{root.name}/{shard.parent.name}",
                        env=data["env"],
                        split=data["split"],
                        task_id=data["task_id"],
                        agent=data["agent"],
                        stop_reason=data["stop_reason"],
                        outputs=[step["output"] for step in steps],
                        prompt_tokens=[step["prompt_tokens"] for step in steps],
                        completion_tokens=[step["completion_tokens"] for step in steps],
                    )
                )
    return episodes


def save(episodes: list[RecordedEpisode], path: Path = WORKLOAD_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(episode) for episode in episodes], indent=1) + "\n")


def load(env: str, path: Path = WORKLOAD_FILE) -> list[RecordedEpisode]:
    """The recorded episodes of ``env``."""
    if not path.exists():
        raise SystemExit(f"{path} is missing: record it with `benchmarks/rollout.py --record RUN_ROOT ...`")
    episodes = [RecordedEpisode(**item) for item in json.loads(path.read_text()) if item["env"] == env]
    if not episodes:
        raise SystemExit(f"{path} holds no {env} episodes; record a {env} demo run root with --record")
    return episodes


def describe(episodes: list[RecordedEpisode]) -> dict[str, Any]:
    """The distributions the simulation draws from: calls per episode, tokens per call."""
    calls = [episode.calls for episode in episodes]
    completions = [tokens for episode in episodes for tokens in episode.completion_tokens]
    prompts = [tokens for episode in episodes for tokens in episode.prompt_tokens]
    return {
        "episodes": len(episodes),
        "runs": sorted({episode.run for episode in episodes}),
        "calls_per_episode": _spread(calls),
        "completion_tokens_per_call": _spread(completions),
        "prompt_tokens_per_call": _spread(prompts),
    }


def _spread(values: list[int]) -> dict[str, float]:
    return {
        "min": min(values),
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 1),
        "max": max(values),
    }


def tasks_for(episodes: list[RecordedEpisode], data_dir: Path) -> dict[str, TaskInfo]:
    """The environment's own task objects of the recorded episodes (with the extras their reset needs)."""
    from ragdistill.environments.registry import list_tasks

    found: dict[str, TaskInfo] = {}
    for split in sorted({episode.split for episode in episodes}):
        wanted = {episode.task_id for episode in episodes if episode.split == split}
        for task in list_tasks(episodes[0].env, data_dir=data_dir, split=split, limit=None):
            if task.task_id in wanted:
                found[task.task_id] = task
    missing = {episode.task_id for episode in episodes} - set(found)
    if missing:
        raise SystemExit(f"tasks of the recorded episodes are not in {data_dir}: {sorted(missing)[:5]}")
    return found
