"""What Prefect costs, measured in one run: the pipeline flow vs the same stage functions called directly,
and a re-run of a finished pipeline vs its first run.

    .venv/bin/python benchmarks/orchestration.py [--config configs/demo-alfworld.yaml] [--full]
                                                [--episodes 2] [--max-calls 4] [--epochs 1] [--prefect-first]

1. Direct: the stage functions of ``ragdistill.stages`` called in the pipeline flow's order (rollout,
   mine, index, teach, expert, datasets, train, evaluate, promote, report) into a fresh run root.
2. Prefect: ``ragdistill.flows.pipeline.pipeline_flow`` into another fresh run root, reported to the
   project's Prefect server (``orchestration.server``; started before any timing, as ``ragdistill
   pipeline`` would find it running).
3. Re-run: the Prefect pipeline again on the finished root of (2): every stage is a cache hit.

Each run happens in a fresh Python process of its own and is timed from its first stage to its last
(imports and config loading excluded), so no run inherits another's loaded model or warm caches in
memory; ``--prefect-first`` swaps the order, to see how much of a difference is the machine's. Without ``--full`` the config is shrunk so that ``make bench`` finishes on a laptop: few
episodes, few model calls, one training epoch; the shrink is printed. Prints the three times, the ratios
Prefect ÷ direct (target ≤ 1.10) and re-run ÷ first run (target ≤ 0.05), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "demo-alfworld.yaml"


def shrink(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted settings that make the config laptop-sized (none with ``--full``)."""
    if args.full:
        return {}
    return {
        "env.limit": args.episodes,
        "agent.max_calls": args.max_calls,
        "distill.expert_limit": args.episodes,
        "training.epochs": args.epochs,
        "evaluation.limit": args.episodes,
    }


def write_config(source: Path, settings: dict[str, Any], run_root: Path, target: Path) -> Path:
    """A copy of ``source`` with ``settings`` applied and its own run root, validated as a run would."""
    from ragdistill.config import load_config

    config = load_config(source, {**settings, "run.run_root": f"file://{run_root}"})
    target.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return target


def run_direct(config_path: Path) -> None:
    """The pipeline's stages as plain functions, in the flow's order, with the flow's branching."""
    from ragdistill.config import load_config
    from ragdistill.inference.shared import close_shared_backends
    from ragdistill.stages import run_indexing, run_mining, run_rollout, run_teacher
    from ragdistill.stages.datasets import run_dataset
    from ragdistill.stages.evaluation import run_evaluation
    from ragdistill.stages.expert import run_expert_teacher
    from ragdistill.stages.promotion import run_promotion
    from ragdistill.stages.report import run_report, write_run_file
    from ragdistill.stages.training import run_training

    config = load_config(config_path)
    write_run_file(config, str(config_path))
    try:
        run_rollout(config, "base")
        run_mining(config)
        if config.retrieval.retriever == "faiss":
            run_indexing(config)
        run_teacher(config)
        if config.distill.teacher in ("expert", "both"):
            run_expert_teacher(config)
        for name in ("sft", "distill"):
            run_dataset(config, name)
        for name in ("sft", "distill"):
            run_training(config, name)
        for method in config.evaluation.methods:
            run_evaluation(config, method)
        run_promotion(config, by="pipeline")
        run_report(config)
    finally:
        close_shared_backends()


def run_prefect(config_path: Path) -> None:
    from ragdistill.flows.pipeline import pipeline_flow

    pipeline_flow(str(config_path))


def child(path: str, config_path: Path) -> None:
    """One timed run in this process; prints its seconds as the last line."""
    import importlib

    modules = ["datasets", "evaluation", "expert", "promotion", "report", "training"]
    for module in [f"ragdistill.stages.{name}" for name in modules] + ["ragdistill.flows.pipeline"]:
        importlib.import_module(module)  # both runs start with every module loaded, outside the timing
    started = time.perf_counter()
    if path == "direct":
        run_direct(config_path)
    else:
        run_prefect(config_path)
    print(json.dumps({"seconds": time.perf_counter() - started}))


def timed_child(path: str, config_path: Path, environment: dict[str, str], log: Path) -> float:
    command = [sys.executable, __file__, "--child", path, "--config", str(config_path)]
    with log.open("w") as output:
        result = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=output, text=True, env=environment, cwd=REPO
        )
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"the {path} run failed (exit {result.returncode}); the end of its log:\n{tail}")
    return float(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--full", action="store_true", help="run the config as it is, not shrunk")
    parser.add_argument("--episodes", type=int, default=2, help="tasks per rollout, expert and evaluation")
    parser.add_argument("--max-calls", type=int, default=4, help="model calls per episode")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs")
    parser.add_argument(
        "--prefect-first",
        action="store_true",
        help="run the Prefect pipeline (and its re-run) before the direct one",
    )
    parser.add_argument("--child", choices=["direct", "prefect"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.config)
        return

    from ragdistill.orchestration.server import API_URL_ENV, prefect_api

    settings = shrink(args)
    print(f"config: {args.config}" + (f", shrunk: {settings}" if settings else " (not shrunk)"), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as folder:
        work = Path(folder)
        direct_config = write_config(args.config, settings, work / "direct", work / "direct.yaml")
        prefect_config = write_config(args.config, settings, work / "prefect", work / "prefect.yaml")
        with prefect_api() as api_url:
            environment = {**os.environ, API_URL_ENV: api_url}
            if not args.prefect_first:
                direct = timed_child("direct", direct_config, environment, work / "direct.log")
                print(f"direct stage functions: {direct:.1f} s", flush=True)
            first = timed_child("prefect", prefect_config, environment, work / "prefect.log")
            print(f"Prefect pipeline flow:  {first:.1f} s", flush=True)
            rerun = timed_child("prefect", prefect_config, environment, work / "rerun.log")
            print(f"re-run, all cached:     {rerun:.1f} s", flush=True)
            if args.prefect_first:
                direct = timed_child("direct", direct_config, environment, work / "direct.log")
                print(f"direct stage functions: {direct:.1f} s", flush=True)
    result = {
        "config": str(args.config),
        "shrink": settings,
        "order": "prefect, re-run, direct" if args.prefect_first else "direct, prefect, re-run",
        "direct_s": direct,
        "prefect_s": first,
        "rerun_s": rerun,
        "prefect_vs_direct": first / direct,
        "rerun_vs_first": rerun / first,
    }
    print(f"Prefect / direct: {result['prefect_vs_direct']:.3f} (target <= 1.10)")
    print(f"re-run / first run: {result['rerun_vs_first']:.3f} (target <= 0.05)")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
