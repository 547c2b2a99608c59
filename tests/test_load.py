"""The load benchmark's code path (benchmarks/load.py) on 96 WebShop episodes: every task once, shards
rotated, and the rollout process's RSS flat after the warm-up.

Each run plays in a child python that does nothing else, not in pytest's process, where earlier tests'
threads, caches and garbage move the RSS. How much memory the run takes does not depend on how loaded
the CPU is (only how long it takes does), so the bound holds on a busy 2-core machine. The bound is
itself checked: the same run with a policy double that keeps 256 KiB per model call breaks it. The
benchmark plays 1000 episodes and records its figure and numbers in BENCHMARKS.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
EPISODES, WARMUP, SAMPLE_EVERY, SHARD_SIZE = 96, 32, 8, 40
RSS_RISE_BOUND_MIB = 2.0
"""How far the rollout process's RSS may rise above its value after the warm-up (measured: < 0.1 MiB)."""
LEAK_KIB_PER_CALL = 256
CHILD = """
import json, sys
from test_load import load_run_in_this_process
print("RESULT " + json.dumps(load_run_in_this_process(sys.argv[1], int(sys.argv[2]))))
"""


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_benchmark", REPO / "benchmarks" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def leaking_policy(bench: ModuleType, kib_per_call: int) -> Any:
    """The benchmark's shopper double, keeping ``kib_per_call`` KiB of written memory per model call."""

    class LeakingShopperDouble(bench.ShopperPolicyDouble):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.kept: list[bytes] = []

        def generate(self, requests: list[Any]) -> list[Any]:
            self.kept.append(b"\x01" * (kib_per_call * 1024))
            return super().generate(requests)

    return LeakingShopperDouble()


def load_run_in_this_process(folder: str, leak_kib_per_call: int) -> dict[str, Any]:
    """What the child runs: the benchmark's ``run_load`` into ``folder``, its result as JSON-ready data."""
    bench = load_benchmark()
    policy = leaking_policy(bench, leak_kib_per_call) if leak_kib_per_call else bench.ShopperPolicyDouble()
    config = bench.load_config_for(
        f"file://{folder}/run", episodes=EPISODES, workers=1, shard_size=SHARD_SIZE
    )
    result = bench.run_load(config, sample_every=SAMPLE_EVERY, warmup=WARMUP, policy=policy)
    bench.write_figure(result, Path(folder) / "rss.png")
    return {**asdict(result), "rotated": result.rotated, "rss_rise_mib": result.rss_rise_after_warmup_mib()}


def load_run(folder: Path, leak_kib_per_call: int = 0) -> dict[str, Any]:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO / "src"), str(TESTS), os.environ.get("PYTHONPATH")])
        ),
    }
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(leak_kib_per_call)],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    results = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    assert child.returncode == 0 and results, child.stderr[-4000:]
    return json.loads(results[-1].removeprefix("RESULT "))


def test_a_load_run_records_every_episode_once_in_rotated_shards_with_flat_memory(tmp_path: Path) -> None:
    result = load_run(tmp_path)

    assert result["episodes"] == EPISODES and result["counts"]["episodes"] == EPISODES
    assert result["counts"]["errors"] == 0 and result["lost"] == [] and result["duplicated"] == []
    assert result["shards"] == [40, 40, 16] and result["parts_left"] == 0 and result["rotated"]
    samples = result["samples"]
    assert [sample[0] for sample in samples] == [1, *range(SAMPLE_EVERY, EPISODES + 1, SAMPLE_EVERY)]
    assert all(sample[1] > 0 and sample[3] >= 1 for sample in samples), "own RSS and the game worker's"
    assert result["rss_rise_mib"] <= RSS_RISE_BOUND_MIB, f"RSS rose after the warm-up: {samples}"
    assert (tmp_path / "rss.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_the_memory_bound_catches_a_policy_that_keeps_memory_per_call(tmp_path: Path) -> None:
    result = load_run(tmp_path, leak_kib_per_call=LEAK_KIB_PER_CALL)
    assert result["lost"] == [] and result["rotated"], "the leak changes nothing else"
    assert result["rss_rise_mib"] > RSS_RISE_BOUND_MIB, f"a leak went unnoticed: {result['samples']}"
