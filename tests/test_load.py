"""The load benchmark's code path (benchmarks/load.py) on 48 episodes: every task once, shards rotated.

The benchmark itself plays 1000+ episodes and records the memory figure in BENCHMARKS.md; this runs the
same function on the real WebShop environment with the benchmark's shopper policy double."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_benchmark", REPO / "benchmarks" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_load_run_records_every_episode_once_in_rotated_shards_and_samples_memory(tmp_path: Path) -> None:
    bench = load_benchmark()
    config = bench.load_config_for(f"file://{tmp_path}/run", episodes=48, workers=1, shard_size=20)
    result = bench.run_load(config, sample_every=8, warmup=8)

    assert result.episodes == 48 and result.counts["episodes"] == 48 and result.counts["errors"] == 0
    assert result.lost == [] and result.duplicated == []
    assert result.shards == [20, 20, 8] and result.parts_left == 0 and result.rotated
    assert [sample[0] for sample in result.samples] == [1, 8, 16, 24, 32, 40, 48]
    assert all(sample[1] > 0 and sample[3] >= 1 for sample in result.samples) and result.growth > 0
    bench.write_figure(result, tmp_path / "rss.png")
    assert (tmp_path / "rss.png").read_bytes().startswith(b"\x89PNG")
