"""Rollout throughput, measured in one run: batched vs one episode at a time, and engine vs raw backend.

    .venv/bin/python benchmarks/rollout.py [--config configs/demo-alfworld.yaml] [--episodes 16] [--max-calls 15]

1. Batched: ``--episodes`` ALFWorld training games at batch ``--episodes`` through the real engine
   (vLLM backend, real environment pool).
2. Sequential: the same games at batch 1.
3. Raw: every batch of requests the batched rollout sent, replayed through a fresh backend's
   ``generate`` with nothing else running: what the model alone costs for the same prompts.
4. Raw one at a time: the same requests replayed one per ``generate`` call: the engine's own
   batching gain on these prompts, the ceiling for any rollout's batched ÷ sequential ratio.

Prints episodes/min and generated tokens/s for each, then the two ratios the targets are about:
batched ÷ sequential (target ≥ 5) and batched rollout ÷ raw (target ≥ 0.8). Both runs see the same
tasks, prompts and greedy decoding, and all three run in this one process on this machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field

from ragdistill.config import ExperimentConfig, load_config, with_overrides
from ragdistill.config.stages import PipelineSettings
from ragdistill.inference import make_backend
from ragdistill.inference.base import Generation, GenerationRequest
from ragdistill.stages.rollout import run_rollout


@dataclass
class RecordingBackend:
    """Passes every call to the real backend and keeps the request batches for the raw replay."""

    inner: object
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

    def count_tokens(self, messages, completion: str = ""):
        return self.inner.count_tokens(messages, completion)

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


def _records(config: ExperimentConfig) -> list[dict]:
    from ragdistill.store import ArtifactStore, read_records

    return list(read_records(ArtifactStore(config.run.run_root), "rollouts/bench"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/demo-alfworld.yaml")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--max-calls", type=int, default=15)
    args = parser.parse_args()

    base = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:

        def variant(name: str, batch: int) -> ExperimentConfig:
            return with_overrides(
                base,
                {
                    "run.run_root": f"file://{tmp}/{name}",
                    "env.limit": args.episodes,
                    "agent.max_calls": args.max_calls,
                    "rollout.batch_size": batch,
                    "models.agent.backend.kind": "vllm",
                    "warm_start.enabled": False,  # the configured model: batching, not what it learned
                },
            )

        batched_config, sequential_config = variant("batched", args.episodes), variant("sequential", 1)
        backend = RecordingBackend(make_backend(batched_config.models.agent))
        try:
            batched = timed_rollout(batched_config, backend)
            recorded = backend.batches
            backend.batches = []
            backend.generate_seconds = 0.0
            sequential = timed_rollout(sequential_config, backend)
        finally:
            backend.close()

        replay = make_backend(batched_config.models.agent)
        try:
            replay.generate(recorded[0][:1])  # warm-up outside the timing, as the rollout's backend was warm
            start = time.perf_counter()
            raw_tokens = sum(g.completion_tokens for batch in recorded for g in replay.generate(batch))
            raw_seconds = time.perf_counter() - start
            start = time.perf_counter()
            single_tokens = sum(
                replay.generate([request])[0].completion_tokens for batch in recorded for request in batch
            )
            single_seconds = time.perf_counter() - start
        finally:
            replay.close()

    raw = {"gen_tokens": raw_tokens, "seconds": raw_seconds, "gen_tokens_per_s": raw_tokens / raw_seconds}
    raw_single = {
        "gen_tokens": single_tokens,
        "seconds": single_seconds,
        "gen_tokens_per_s": single_tokens / single_seconds,
    }
    result = {
        "episodes": args.episodes,
        "max_calls": args.max_calls,
        "batched": batched,
        "sequential": sequential,
        "raw_backend": raw,
        "raw_backend_one_at_a_time": raw_single,
        "raw_batched_vs_one_at_a_time_tokens_per_s": raw["gen_tokens_per_s"] / raw_single["gen_tokens_per_s"],
        "batched_vs_sequential_episodes_per_min": batched["episodes_per_min"]
        / sequential["episodes_per_min"],
        "batched_vs_sequential_tokens_per_s": batched["gen_tokens_per_s"] / sequential["gen_tokens_per_s"],
        "rollout_vs_raw_tokens_per_s": batched["gen_tokens_per_s"] / raw["gen_tokens_per_s"],
    }
    print(f"{'run':<12}{'episodes/min':>14}{'gen tok/s':>12}{'seconds':>10}")
    rows = (
        ("batched", batched),
        ("sequential", sequential),
        ("raw backend", raw),
        ("raw, 1 by 1", raw_single),
    )
    for name, row in rows:
        per_min = f"{row['episodes_per_min']:.1f}" if "episodes_per_min" in row else "-"
        print(f"{name:<12}{per_min:>14}{row['gen_tokens_per_s']:>12.1f}{row['seconds']:>10.1f}")
    print(
        f"batched / sequential: {result['batched_vs_sequential_episodes_per_min']:.2f}x episodes/min (target >= 5)"
    )
    print(
        f"rollout / raw backend: {result['rollout_vs_raw_tokens_per_s']:.2f} of raw tokens/s (target >= 0.8)"
    )
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
