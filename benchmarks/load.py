"""Load: 1000+ episodes through the real rollout stage with memory sampled, shards checked, nothing lost.

    .venv/bin/python benchmarks/load.py [--episodes 1000] [--sample-every 25] [--workers 2] [--shard-size 50]

Plays ``--episodes`` WebShop training goals (the project's WebShop environment on the 1000-product
catalog, in ``--workers`` real game worker processes) through ``stages.rollout.run_rollout``: the rollout engine,
the episode log (one object per finished episode) and its compaction into ``shard-*.jsonl`` files of
``rollout.shard_size`` records. The model is :class:`ShopperPolicyDouble`, a deterministic policy
test double (search the goal's words, open the first result, buy), so the run measures the engine, the
environment and storage, not a model.

Samples this process's resident set size (``/proc/self/status`` VmRSS, through psutil) every
``--sample-every`` finished episodes, and the game workers' too. Prints the growth ratio (RSS at the end
÷ RSS after the warm-up, the first ``--warmup`` episodes), checks that every task id is recorded exactly
once, that the shards rotated (ceil(episodes / shard_size) shards, none over the size, no parts left),
writes a figure of RSS against episodes, and ends with a one-line verdict.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from ragdistill.config import ExperimentConfig, load_config, with_overrides
from ragdistill.config.stages import PipelineSettings
from ragdistill.episodes import EpisodeRecord
from ragdistill.inference.base import Backend, ChatMessage, Generation, GenerationRequest
from ragdistill.rollout.plan import select_tasks
from ragdistill.stages.rollout import run_rollout
from ragdistill.store import ArtifactStore, read_manifest, read_records, shard_paths

REPO = Path(__file__).resolve().parents[1]
STAGE = "load"
FLAT_GROWTH = 1.10
"""RSS growth over the run (end ÷ after warm-up) below which memory counts as flat."""
_ITEM = re.compile(r"\b(B0[0-9A-Z]{8})\b", re.IGNORECASE)
_GOAL = re.compile(r"Instruction:\s*(?:\[SEP\]\s*)?(.+?)(?:\s*\[SEP\]|\n|$)", re.IGNORECASE)


class ShopperPolicyDouble:
    """A deterministic policy test double for WebShop: on the search page it searches the goal's first
    words, on a results page it opens the first item, on an item page it buys. Token counts are words."""

    name = "shopper-policy-double"

    def __init__(self) -> None:
        self.calls = 0

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        return sum(len(m.content.split()) + 1 for m in messages), len(completion.split())

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.calls += len(requests)
        out = []
        for request in requests:
            text = self.action(request.messages[-1].content)
            prompt, completion = self.count_tokens(request.messages, text)
            out.append(Generation(text, "stop", prompt, completion))
        return out

    @staticmethod
    def action(observation: str) -> str:
        if "buy now" in observation.lower():
            return "click[buy now]"
        item = _ITEM.search(observation)
        if item:
            return f"click[{item.group(1).lower()}]"
        goal = _GOAL.search(observation)
        words = (goal.group(1) if goal else observation).split()[:6]
        return f"search[{' '.join(words)}]"

    def close(self) -> None:
        pass


@dataclass
class LoadResult:
    episodes: int
    seconds: float
    shard_size: int
    shards: list[int] = field(default_factory=list)
    """Records per shard file, in order."""
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    parts_left: int = 0
    samples: list[tuple[int, float, float, int]] = field(default_factory=list)
    """(finished episodes, this process's RSS in MiB, its child processes' RSS in MiB, how many children:
    the game workers, any retiring ones, multiprocessing's resource tracker)."""
    warmup: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    """The stage manifest's counts (episodes, won, errors, …)."""

    @property
    def rotated(self) -> bool:
        expected = math.ceil(self.episodes / self.shard_size)
        return len(self.shards) == expected and max(self.shards) <= self.shard_size and not self.parts_left

    def rss_after_warmup(self) -> float:
        return next(sample[1] for sample in self.samples if sample[0] >= self.warmup)

    @property
    def growth(self) -> float:
        return self.samples[-1][1] / self.rss_after_warmup()

    def rss_rise_after_warmup_mib(self) -> float:
        """How far this process's RSS rose above its value at the end of the warm-up, at its highest."""
        after = [sample[1] for sample in self.samples if sample[0] >= self.warmup]
        return max(after) - self.rss_after_warmup()

    @property
    def flat(self) -> bool:
        return self.growth < FLAT_GROWTH

    def verdict(self) -> str:
        ok = self.flat and self.rotated and not self.lost and not self.duplicated
        return (
            f"{'PASS' if ok else 'FAIL'}: {self.episodes} episodes in {self.seconds:.0f} s; RSS "
            f"{self.rss_after_warmup():.0f} -> {self.samples[-1][1]:.0f} MiB after warm-up (x{self.growth:.3f}, "
            f"{'flat' if self.flat else 'GROWING'}); {len(self.shards)} shards of <= {self.shard_size} "
            f"({'rotated' if self.rotated else 'NOT rotated'}); {len(self.lost)} lost, "
            f"{len(self.duplicated)} duplicated"
        )


def load_config_for(
    run_root: str, episodes: int, workers: int, shard_size: int, config_path: Path | None = None
) -> ExperimentConfig:
    """The demo WebShop config on ``episodes`` training goals, with no few-shot examples (each prompt stays
    small and alike) and at most 4 model calls an episode."""
    config = load_config(config_path or REPO / "configs" / "demo-webshop.yaml")
    return with_overrides(
        config,
        {
            "run.run_root": run_root,
            "env.split": "train",
            "env.limit": episodes,
            "env.workers": workers,
            "env.data_dir": str(REPO / "data"),
            "agent.fewshot_source": "none",
            "agent.max_calls": 4,
            "rollout.shard_size": shard_size,
            "rollout.batch_size": 8,
            "warm_start.enabled": False,  # the load is the rollout machinery's, on the configured model
        },
    )


def rss_mib(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def run_load(
    config: ExperimentConfig, sample_every: int = 25, warmup: int = 100, policy: Backend | None = None
) -> LoadResult:
    """Play the config's tasks into ``rollouts/load`` with RSS sampled; check what was stored.
    ``policy``: the model (default :class:`ShopperPolicyDouble`)."""
    me = psutil.Process()
    samples: list[tuple[int, float, float, int]] = []

    def sample(_record: EpisodeRecord, finished: int, total: int) -> None:
        if finished % sample_every == 0 or finished == total or finished == 1:
            children = [child for child in me.children(recursive=True) if child.is_running()]
            samples.append((finished, rss_mib(me), sum(rss_mib(c) for c in children), len(children)))

    settings = PipelineSettings.from_experiment(config)
    ctx, rollout = settings.ctx, settings.rollout(STAGE)
    tasks = [task.task_id for task in select_tasks(ctx, rollout.env, rollout.tasks)]
    started = time.perf_counter()
    run_rollout(ctx, rollout, backend=policy or ShopperPolicyDouble(), progress=sample)
    seconds = time.perf_counter() - started

    store = ArtifactStore(config.run.run_root)
    prefix = f"rollouts/{STAGE}"
    manifest = read_manifest(store, prefix)
    recorded = [record["task_id"] for record in read_records(store, prefix, manifest)]
    shards = [
        sum(1 for line in store.read_text(path).splitlines() if line.strip())
        for path in shard_paths(store, prefix)
    ]
    seen: set[str] = set()
    duplicated = [task for task in recorded if task in seen or seen.add(task)]  # type: ignore[func-returns-value]
    return LoadResult(
        episodes=len(tasks),
        seconds=seconds,
        shard_size=config.rollout.shard_size,
        shards=shards,
        lost=sorted(set(tasks) - set(recorded)),
        duplicated=duplicated,
        parts_left=len(store.list(f"{prefix}/parts")),
        samples=samples,
        warmup=min(warmup, len(tasks)),
        counts=dict(manifest.counts),
    )


def write_figure(result: LoadResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [s[0] for s in result.samples]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    ax.plot(done, [s[1] for s in result.samples], label="rollout process", color="tab:blue")
    ax.plot(done, [s[2] for s in result.samples], label="child processes (sum)", color="tab:orange")
    ax.axvline(result.warmup, color="grey", linestyle=":", label=f"end of warm-up ({result.warmup})")
    ax.set_xlabel("finished episodes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"{result.episodes} WebShop episodes: rollout RSS x{result.growth:.3f} after warm-up, "
        f"{len(result.shards)} shards",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--sample-every", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--figure", type=Path, default=REPO / "benchmarks" / "results" / "load-rss.png")
    parser.add_argument("--json", type=Path, default=None, help="also write the samples and checks here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ragdistill-load-") as folder:
        config = load_config_for(f"file://{folder}/run", args.episodes, args.workers, args.shard_size)
        result = run_load(config, args.sample_every, args.warmup)
    write_figure(result, args.figure)
    summary = {
        "episodes": result.episodes,
        "seconds": round(result.seconds, 1),
        "episodes_per_s": round(result.episodes / result.seconds, 2),
        "rss_after_warmup_mib": round(result.rss_after_warmup(), 1),
        "rss_end_mib": round(result.samples[-1][1], 1),
        "rss_peak_mib": round(max(s[1] for s in result.samples), 1),
        "growth": round(result.growth, 4),
        "rss_rise_after_warmup_mib": round(result.rss_rise_after_warmup_mib(), 2),
        "children_rss_end_mib": round(result.samples[-1][2], 1),
        "children_rss_range_mib": [
            round(min(s[2] for s in result.samples), 1),
            round(max(s[2] for s in result.samples), 1),
        ],
        "children_count_range": [min(s[3] for s in result.samples), max(s[3] for s in result.samples)],
        "shards": len(result.shards),
        "records_per_shard": sorted(set(result.shards)),
        "stage_counts": result.counts,
        "lost": len(result.lost),
        "duplicated": len(result.duplicated),
        "figure": str(args.figure),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({**summary, "samples": asdict(result)["samples"]}, indent=2))
    print(result.verdict())
    return 0 if result.verdict().startswith("PASS") else 1


if __name__ == "__main__":
    sys.exit(main())
