"""Rollout throughput in one run: the real engine lock-step and continuous, and the GPU-shaped simulation.

    .venv/bin/python benchmarks/rollout.py [--config configs/demo-alfworld.yaml] [--episodes 16] [--max-calls 15]
    .venv/bin/python benchmarks/rollout.py --simulate [--sim-env webshop] [--sim-concurrency 64]
    .venv/bin/python benchmarks/rollout.py --record RUN_ROOT [RUN_ROOT ...]

Real engine (vLLM in process, real environment pool; skipped with ``--simulate``), on ``--episodes``
ALFWorld training games, all in flight at once:

1. lock-step and 2. continuous (``rollout.schedule``), on the same games;
3. sequential: the same games one episode at a time (lock-step at batch 1);
4. raw: the requests each rollout sent, replayed through a fresh engine's ``generate`` with nothing else
   running (the lock-step batches as they were sent; the continuous requests in batches of
   ``--episodes``): what the model alone costs for the same prompts;
5. raw one at a time: the same requests one per ``generate`` call: the engine's own batching gain, the
   ceiling for any rollout's batched ÷ sequential ratio.

Simulation (``rollout_simulation``): recorded demo episodes replayed on a simulated GPU (fixed cost +
per-token cost, flat up to a batch limit) against the real environment in its pool, lock-step vs
continuous; it reports each rollout's generated tokens/s over the simulated engine's capacity.

The last line is one JSON object with every figure; with ``--simulate`` it holds
``continuous_over_capacity`` and ``continuous_over_lockstep``. BENCHMARKS.md explains each ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragdistill.config import ExperimentConfig, load_config, with_overrides
from ragdistill.config.stages import PipelineSettings
from ragdistill.inference import make_backend
from ragdistill.inference.base import Backend, ChatMessage, Generation, GenerationRequest
from ragdistill.inference.streaming import Done, GenerationStream, open_stream
from ragdistill.preload import describe_preload, find_libraries, started_with_preload
from ragdistill.stages.rollout import run_rollout
from rollout_simulation import workload
from rollout_simulation.gpu import GPUShape
from rollout_simulation.run import Simulation, simulate

REPO = Path(__file__).resolve().parents[1]


@dataclass
class RecordingBackend:
    """Passes every call to the real backend and keeps the requests for the raw replay."""

    inner: Backend
    batches: list[list[GenerationRequest]] = field(default_factory=list)
    generate_seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.inner.name

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.batches.append(list(requests))
        start = time.perf_counter()
        out = self.inner.generate(requests)
        self.generate_seconds += time.perf_counter() - start
        return out

    def open_stream(self) -> GenerationStream:
        return RecordingStream(self, open_stream(self.inner))

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        return self.inner.count_tokens(messages, completion)

    def close(self) -> None:
        self.inner.close()


@dataclass
class RecordingStream:
    owner: RecordingBackend
    inner: GenerationStream

    def submit(self, request: GenerationRequest, done: Done) -> None:
        self.owner.batches.append([request])
        self.inner.submit(request, done)

    def close(self) -> None:
        self.inner.close()


def timed_rollout(config: ExperimentConfig, backend: RecordingBackend) -> dict[str, float]:
    settings = PipelineSettings.from_experiment(config)
    start = time.perf_counter()
    manifest = run_rollout(settings.ctx, settings.rollout("bench"), backend=backend)
    seconds = time.perf_counter() - start
    tokens = sum(sum(step["completion_tokens"] for step in record["steps"]) for record in _records(config))
    episodes = manifest.counts["episodes"]
    return {
        "episodes": episodes,
        "seconds": seconds,
        "episodes_per_min": 60 * episodes / seconds,
        "gen_tokens": tokens,
        "gen_tokens_per_s": tokens / seconds,
        "generate_share": backend.generate_seconds / seconds,
    }


def _records(config: ExperimentConfig) -> list[dict[str, Any]]:
    from ragdistill.store import ArtifactStore, read_records

    return list(read_records(ArtifactStore(config.run.run_root), "rollouts/bench"))


def replay(backend: Backend, batches: list[list[GenerationRequest]]) -> dict[str, float]:
    start = time.perf_counter()
    tokens = sum(generation.completion_tokens for batch in batches for generation in backend.generate(batch))
    seconds = time.perf_counter() - start
    return {"gen_tokens": tokens, "seconds": seconds, "gen_tokens_per_s": tokens / seconds}


def real_engine(args: argparse.Namespace) -> dict[str, Any]:
    base = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:

        def variant(name: str, batch: int, schedule: str) -> ExperimentConfig:
            return with_overrides(
                base,
                {
                    "run.run_root": f"file://{tmp}/{name}",
                    "env.limit": args.episodes,
                    "agent.max_calls": args.max_calls,
                    "rollout.batch_size": batch,
                    "rollout.schedule": schedule,
                    "models.agent.backend.kind": "vllm",
                    "warm_start.enabled": False,  # the configured model: batching, not what it learned
                },
            )

        lockstep_config = variant("lockstep", args.episodes, "lockstep")
        backend = RecordingBackend(make_backend(lockstep_config.models.agent))
        runs: dict[str, dict[str, float]] = {}
        sent: dict[str, list[list[GenerationRequest]]] = {}
        try:
            for name, batch, schedule in (
                ("lockstep", args.episodes, "lockstep"),
                ("continuous", args.episodes, "continuous"),
                ("sequential", 1, "lockstep"),
            ):
                backend.batches, backend.generate_seconds = [], 0.0
                runs[name] = timed_rollout(variant(name, batch, schedule), backend)
                sent[name] = backend.batches
        finally:
            backend.close()

        flat = [request for batch in sent["continuous"] for request in batch]
        continuous_batches = [flat[i : i + args.episodes] for i in range(0, len(flat), args.episodes)]
        fresh = make_backend(lockstep_config.models.agent)
        try:
            fresh.generate(sent["lockstep"][0][:1])  # warm-up outside the timing, as the rollouts' engine was
            raw = replay(fresh, sent["lockstep"])
            raw_continuous = replay(fresh, continuous_batches)
            raw_single = replay(fresh, [[request] for batch in sent["lockstep"] for request in batch])
        finally:
            fresh.close()

    ceiling = raw["gen_tokens_per_s"] / raw_single["gen_tokens_per_s"]

    def over_sequential(name: str) -> float:
        return runs[name]["episodes_per_min"] / runs["sequential"]["episodes_per_min"]

    complete, preload = describe_preload(find_libraries(), started_with_preload())
    return {
        "episodes": args.episodes,
        "max_calls": args.max_calls,
        "preload": {"complete": complete, "summary": preload},
        **runs,
        "raw_backend": raw,
        "raw_backend_continuous_requests": raw_continuous,
        "raw_backend_one_at_a_time": raw_single,
        "raw_batched_vs_one_at_a_time_tokens_per_s": ceiling,
        "lockstep_vs_sequential_episodes_per_min": over_sequential("lockstep"),
        "continuous_vs_sequential_episodes_per_min": over_sequential("continuous"),
        "continuous_vs_sequential_share_of_ceiling": over_sequential("continuous") / ceiling,
        "lockstep_vs_raw_tokens_per_s": runs["lockstep"]["gen_tokens_per_s"] / raw["gen_tokens_per_s"],
        "continuous_vs_raw_tokens_per_s": runs["continuous"]["gen_tokens_per_s"]
        / raw_continuous["gen_tokens_per_s"],
        "continuous_vs_lockstep_tokens_per_s": runs["continuous"]["gen_tokens_per_s"]
        / runs["lockstep"]["gen_tokens_per_s"],
    }


def print_real(result: dict[str, Any]) -> None:
    print(f"vLLM on CPU: {result['preload']['summary']}")
    print(f"{'run':<24}{'episodes/min':>14}{'gen tok/s':>12}{'seconds':>10}")
    for name, key in (
        ("lock-step", "lockstep"),
        ("continuous", "continuous"),
        ("sequential", "sequential"),
        ("raw, lock-step batches", "raw_backend"),
        ("raw, continuous requests", "raw_backend_continuous_requests"),
        ("raw, 1 by 1", "raw_backend_one_at_a_time"),
    ):
        row = result[key]
        per_min = f"{row['episodes_per_min']:.1f}" if "episodes_per_min" in row else "-"
        print(f"{name:<24}{per_min:>14}{row['gen_tokens_per_s']:>12.1f}{row['seconds']:>10.1f}")
    print(
        f"continuous / raw: {result['continuous_vs_raw_tokens_per_s']:.2f} (lock-step / raw: "
        f"{result['lockstep_vs_raw_tokens_per_s']:.2f}); continuous / sequential: "
        f"{result['continuous_vs_sequential_episodes_per_min']:.2f}x against a ceiling of "
        f"{result['raw_batched_vs_one_at_a_time_tokens_per_s']:.2f}x "
        f"({result['continuous_vs_sequential_share_of_ceiling']:.2f} of it)"
    )


def simulation(args: argparse.Namespace) -> dict[str, Any]:
    recorded = workload.load(args.sim_env, Path(args.workload))
    data_dir = Path(args.data_dir)
    shape = GPUShape(
        per_token_s=args.per_token_ms / 1000,
        fixed_s=args.fixed_ms / 1000,
        prefill_s=args.prefill_ms / 1000,
        batch_limit=args.batch_limit,
    )
    sim = Simulation(
        env=args.sim_env,
        episodes=args.sim_episodes,
        concurrency=args.sim_concurrency,
        env_workers=args.sim_env_workers,
        shape=shape,
        data_dir=data_dir,
    )
    tasks = workload.tasks_for(recorded, data_dir)
    lockstep = simulate("lockstep", sim, recorded, tasks)
    continuous = simulate("continuous", sim, recorded, tasks)
    return {
        "env": args.sim_env,
        "workload": workload.describe(recorded),
        "shape": {
            "per_token_ms": args.per_token_ms,
            "fixed_ms": args.fixed_ms,
            "prefill_ms": args.prefill_ms,
            "batch_limit": args.batch_limit,
        },
        "episodes": args.sim_episodes,
        "concurrency": args.sim_concurrency,
        "env_workers": args.sim_env_workers,
        "lockstep": lockstep,
        "continuous": continuous,
        "lockstep_over_capacity": lockstep["over_capacity"],
        "continuous_over_capacity": continuous["over_capacity"],
        "continuous_steady_over_capacity": continuous["steady_over_capacity"],
        "continuous_over_lockstep": continuous["gen_tokens_per_s"] / lockstep["gen_tokens_per_s"],
    }


def print_simulation(result: dict[str, Any]) -> None:
    print(
        f"simulated GPU ({result['env']}, {result['episodes']} episodes, {result['concurrency']} in flight, "
        f"{result['env_workers']} environment workers): capacity "
        f"{result['continuous']['capacity_tokens_per_s']:.0f} tok/s"
    )
    print(
        f"{'schedule':<12}{'gen tok/s':>12}{'÷ capacity':>12}{'steady ÷ cap.':>15}{'engine busy':>13}"
        f"{'mean batch':>12}{'seconds':>10}"
    )
    for name in ("lockstep", "continuous"):
        row = result[name]
        print(
            f"{name:<12}{row['gen_tokens_per_s']:>12.0f}{row['over_capacity']:>12.2f}"
            f"{row['steady_over_capacity']:>15.2f}{row['engine_busy_share']:>13.2f}"
            f"{row['mean_running']:>12.1f}{row['seconds']:>10.1f}"
        )
    print(f"continuous / lock-step: {result['continuous_over_lockstep']:.2f}x")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/demo-alfworld.yaml")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--max-calls", type=int, default=15)
    parser.add_argument("--simulate", action="store_true", help="run the simulation alone")
    parser.add_argument("--record", nargs="+", metavar="RUN_ROOT", help="write the workload file and exit")
    parser.add_argument("--workload", default=str(workload.WORKLOAD_FILE))
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    parser.add_argument(
        "--sim-env",
        default="webshop",
        help="whose recorded episodes to replay in their own environment (webshop: games load in "
        "milliseconds; alfworld: ~2 s a game, minutes on 2 cores)",
    )
    parser.add_argument("--sim-episodes", type=int, default=256)
    parser.add_argument("--sim-concurrency", type=int, default=64)
    parser.add_argument("--sim-env-workers", type=int, default=2)
    parser.add_argument("--per-token-ms", type=float, default=15.0, help="one decode step, up to the limit")
    parser.add_argument("--fixed-ms", type=float, default=5.0, help="a step that admits requests, flat")
    parser.add_argument("--prefill-ms", type=float, default=35.0, help="a full batch's prefill")
    parser.add_argument("--batch-limit", type=int, default=32)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.record:
        episodes = workload.record([Path(root) for root in args.record])
        workload.save(episodes, Path(args.workload))
        print(json.dumps({"written": args.workload, "episodes": len(episodes)}))
        return
    result: dict[str, Any] = {}
    if not args.simulate:
        result["real"] = real_engine(args)
        print_real(result["real"])
    result["simulation"] = simulation(args)
    print_simulation(result["simulation"])
    for key in (
        "continuous_over_capacity",
        "continuous_steady_over_capacity",
        "continuous_over_lockstep",
        "lockstep_over_capacity",
    ):
        result[key] = result["simulation"][key]
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
