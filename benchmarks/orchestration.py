"""What Prefect costs, measured in one run: the pipeline flow vs the same stage functions called directly,
and a re-run of a finished pipeline vs its first run.

    .venv/bin/python benchmarks/orchestration.py [--config configs/demo-alfworld.yaml] [--full]
                                                [--episodes 2] [--epochs 1] [--repeat 1]

1. Direct: the stage functions of ``ragdistill.stages`` called in the pipeline flow's order (rollout,
   mine, index, teach, expert, datasets, train, evaluate, promote, report) into a fresh run root.
2. Prefect: ``ragdistill.flows.pipeline.pipeline_flow`` into another fresh run root, reported to the
   project's Prefect server (``orchestration.server``; started before any timing, as ``ragdistill
   pipeline`` would find it running).
3. Re-run: the Prefect pipeline again on the finished root of (2): every stage is a cache hit.

Each run happens in a fresh Python process of its own and is timed from its first stage to its last
(imports and config loading excluded), so no run inherits another's loaded model or warm caches in
memory. ``--repeat N`` runs N rounds, alternating which of direct and Prefect goes first, and keeps each
one's best time: on a shared machine the load moves more between two runs than Prefect costs.

Without ``--full`` the config is shrunk so that ``make bench`` finishes on a laptop: ``--episodes`` tasks
per rollout, expert teacher and evaluation, ``--epochs`` training epochs; the shrink is printed. The
call cap (``agent.max_calls``) stays the config's: the expert's walkthroughs must fit in it, or both
training sets are empty and neither training nor the students' evaluations run. Prints each run's time
and its time outside the stages (wall time minus what the stages report in ``run-stats.json``), the
ratios Prefect ÷ direct (target ≤ 1.10) and re-run ÷ first run (target ≤ 0.05), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
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
        "warm_start.enabled": False,
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
    """The pipeline's stages as plain functions, in the flow's order, with the flow's branching: each is
    handed the content digests of the folders it reads as the run root holds them (what the CLI does)."""
    from collections.abc import Callable

    from ragdistill.config import load_config
    from ragdistill.config.stage_models import StageSettings
    from ragdistill.config.stages import PipelineSettings
    from ragdistill.inference.shared import close_shared_backends
    from ragdistill.layout import STUDENTS
    from ragdistill.stages import run_indexing, run_mining, run_rollout, run_teacher
    from ragdistill.stages.datasets import run_dataset
    from ragdistill.stages.evaluation import run_evaluation
    from ragdistill.stages.expert import run_expert_teacher
    from ragdistill.stages.lifecycle import upstream_inputs
    from ragdistill.stages.promotion import run_promotion
    from ragdistill.stages.report import run_report, write_run_file
    from ragdistill.stages.training import run_training
    from ragdistill.stages.warm_start import run_warm_start
    from ragdistill.store import ArtifactStore

    config = load_config(config_path)
    stages = PipelineSettings.from_experiment(config)
    ctx = stages.ctx
    store = ArtifactStore(ctx.run_root)
    write_run_file(store, config_path.stem, config.model_dump(mode="json"))

    def run(stage: Callable[..., Any], settings: StageSettings, **options: Any) -> Any:
        return stage(ctx, settings, upstream_inputs(store, settings), **options)

    try:
        if config.warm_start.enabled:
            run(run_warm_start, stages.warm_start, reserved=stages.warm_start_reserved())
        run(run_rollout, stages.rollout())
        run(run_mining, stages.mining)
        if config.retrieval.retriever == "faiss":
            run(run_indexing, stages.indexing)
        run(run_teacher, stages.teacher)
        if config.distill.teacher in ("expert", "both"):
            run(run_expert_teacher, stages.expert)
        for name in STUDENTS:
            run(run_dataset, stages.dataset(name))
            run(run_training, stages.training(name))
        for method in config.evaluation.methods:
            run(run_evaluation, stages.evaluation(method))
        run(run_promotion, stages.promotion(), by="pipeline")
        run(run_report, stages.report(config_path.stem))
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


def stage_seconds(run_root: Path) -> float:
    """The time the stages themselves report (``run-stats.json`` of every stage folder): the rest of a
    run's wall time is what runs around them (Prefect's tasks, cache keys, artifacts and API calls, or
    nothing but the calls in the direct run), and is less moved by the machine's load than the total."""
    total = 0.0
    for path in run_root.rglob("run-stats.json"):
        stats = json.loads(path.read_text())
        if isinstance(stats, dict):
            total += float(stats.get("seconds", 0.0))
    return total


@dataclass
class Round:
    direct_s: float
    prefect_s: float
    rerun_s: float
    direct_outside_stages_s: float
    prefect_outside_stages_s: float
    order: str


def one_round(
    index: int, config: Path, settings: dict[str, Any], work: Path, environment: dict[str, str]
) -> Round:
    """Direct and Prefect runs into fresh roots, then the re-run; even rounds start with the direct run,
    odd ones with Prefect, so that a machine getting busier or quieter favours neither."""
    folder = work / f"round-{index}"
    folder.mkdir()
    direct_config = write_config(config, settings, folder / "direct", folder / "direct.yaml")
    prefect_config = write_config(config, settings, folder / "prefect", folder / "prefect.yaml")
    times: dict[str, float] = {}

    def run(label: str, path: str, config_path: Path) -> None:
        times[label] = timed_child(path, config_path, environment, folder / f"{label}.log")
        outside = ""
        if label != "re-run":
            times[f"{label} outside"] = times[label] - stage_seconds(folder / label)
            outside = f" ({times[f'{label} outside']:.1f} s outside the stages)"
        print(f"round {index + 1}: {label:<8}{times[label]:>9.1f} s{outside}", flush=True)

    prefect_first = index % 2 == 1
    if not prefect_first:
        run("direct", "direct", direct_config)
    run("prefect", "prefect", prefect_config)
    run("re-run", "prefect", prefect_config)
    if prefect_first:
        run("direct", "direct", direct_config)
    order = "prefect, re-run, direct" if prefect_first else "direct, prefect, re-run"
    return Round(
        times["direct"],
        times["prefect"],
        times["re-run"],
        times["direct outside"],
        times["prefect outside"],
        order,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--full", action="store_true", help="run the config as it is, not shrunk")
    parser.add_argument("--episodes", type=int, default=2, help="tasks per rollout, expert and evaluation")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, alternating which run goes first")
    parser.add_argument("--child", choices=["direct", "prefect"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.config)
        return

    from ragdistill.orchestration.server import API_URL_ENV, prefect_api

    settings = shrink(args)
    print(f"config: {args.config}" + (f", shrunk: {settings}" if settings else " (not shrunk)"), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as folder, prefect_api() as api_url:
        environment = {**os.environ, API_URL_ENV: api_url}
        rounds = [
            one_round(index, args.config, settings, Path(folder), environment) for index in range(args.repeat)
        ]
    direct = min(item.direct_s for item in rounds)
    first = min(item.prefect_s for item in rounds)
    rerun = min(item.rerun_s for item in rounds)
    added = min(item.prefect_outside_stages_s - item.direct_outside_stages_s for item in rounds)
    result = {
        "config": str(args.config),
        "shrink": settings,
        "rounds": [asdict(item) for item in rounds],
        "direct_s": direct,
        "prefect_s": first,
        "rerun_s": rerun,
        "prefect_vs_direct": first / direct,
        "rerun_vs_first": rerun / first,
        "prefect_added_outside_stages_s": added,
        "prefect_added_outside_stages_vs_direct": added / direct,
    }
    best = "best of each over the rounds" if len(rounds) > 1 else "one round"
    print(f"Prefect / direct: {result['prefect_vs_direct']:.3f} (target <= 1.10; {best})")
    print(
        f"Prefect's time outside the stages minus the direct run's: {added:.1f} s "
        f"({100 * added / direct:.1f}% of the direct run)"
    )
    print(f"re-run / first run: {result['rerun_vs_first']:.3f} (target <= 0.05)")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
