"""GPU check: the project's LoRA training and hf-backend generation on one CUDA GPU, measured in one run.

    python benchmarks/gpu_check.py [--json PATH] [--work-dir DIR] [--budget-s 420] [--dry-run]

Made for a bare GPU machine without a model hub (README, "GPU check": which wheels to bring, how). It
builds randomly initialised checkpoints of the published Qwen2.5-1.5B and Qwen2.5-7B shapes
(``Qwen2Config``; random weights train and generate at the speed of real ones) with a byte-level
tokenizer of the same vocabulary size and a ChatML template, in ``--work-dir`` (18 GB of disk), then
measures:

1. LoRA training (r=64 on every linear projection, the paper configs' recipe) through the project's own
   path: a ``TrainSpec`` given to ``training.launch.launch_training``, which runs ``accelerate launch
   --config_file 1gpu.yaml -m ragdistill.training.launch``; bf16, batch 2 x 2048 tokens, without and
   with gradient checkpointing on each shape: tokens/s after the first steps and peak GPU memory;
2. QLoRA (``training.load_in_4bit``) on the 7B shape, with checkpointing, when bitsandbytes imports;
3. ``inference.hf_backend.HFBackend`` generating 128 tokens greedily at batch 1, 16 and 64 (completion
   tokens/s).

It prints each figure and the ratios between them, then one JSON line; ``--json`` also gets the results
after each part, so a run cut short keeps what it measured. A part not started within ``--budget-s``
seconds is skipped and says so. ``--dry-run`` runs the same code on the CPU with tiny shapes and the
``cpu`` accelerate config (QLoRA is CUDA-only, so skipped) in one to two minutes: tests/test_gpu_check.py.

Imports: torch, transformers, peft, accelerate, trl, datasets (pyarrow), pydantic, pyyaml and
ragdistill's config, training and inference modules from this checkout's src/, none of which imports
prefect, vLLM, FAISS or the environments (tests/test_gpu_check.py records every process's imports).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_check_models import QWEN25_SHAPES, TINY_SHAPES, build_checkpoint, release_memory, write_dataset

REPO = Path(__file__).resolve().parents[1]
REQUIRED_MODULES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "trl",
    "datasets",
    "pyarrow",
    "pydantic",
    "yaml",
)
WHEELS_FILE = "benchmarks/gpu_check_wheels.txt"
HEAVY_MODULES = ("prefect", "vllm", "faiss", "sentence_transformers", "ray", "alfworld", "textworld", "s3fs")
QLORA_MODEL = "qwen2.5-7b"


@dataclass(frozen=True)
class Plan:
    shapes: dict[str, dict[str, Any]]
    accelerate_config: str
    device: str
    seq_len: int
    batch: int
    steps: int
    prompt_words: int
    new_tokens: int
    generation_batches: tuple[int, ...] = (1, 16, 64)
    lora_r: int = 64


GPU_PLAN = Plan(
    QWEN25_SHAPES, "1gpu", "cuda", seq_len=2048, batch=2, steps=8, prompt_words=128, new_tokens=128
)
DRY_PLAN = Plan(TINY_SHAPES, "cpu", "cpu", seq_len=64, batch=2, steps=4, prompt_words=8, new_tokens=8)


@dataclass
class Report:
    """Everything measured so far; written to ``--json`` after each part."""

    mode: str
    json_path: Path | None
    started: float = field(default_factory=time.perf_counter)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, section: str, entry: dict[str, Any]) -> None:
        self.data.setdefault(section, []).append(entry)
        self.save()

    def save(self) -> None:
        self.data["seconds"] = round(time.perf_counter() - self.started, 1)
        if self.json_path is not None:
            self.json_path.write_text(json.dumps(self.data, indent=2, sort_keys=True))

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def import_problems() -> dict[str, str]:
    """Each required module that does not import, and why: missing, or a dependency too old for it."""
    problems = {}
    for name in REQUIRED_MODULES:
        try:
            importlib.import_module(name)
        except Exception as error:  # an old or missing dependency fails an import in many ways
            problems[name] = f"{type(error).__name__}: {error}"
    return problems


def environment(mode: str) -> dict[str, Any]:
    import torch

    versions = {}
    for name in (*REQUIRED_MODULES[:-1], "bitsandbytes"):
        module = sys.modules.get(name) or (importlib.import_module(name) if _importable(name) else None)
        versions[name] = getattr(module, "__version__", "?") if module is not None else None
    on_cuda = torch.cuda.is_available()
    return {
        "mode": mode,
        "device": torch.cuda.get_device_name(0) if on_cuda and mode == "gpu" else "cpu",
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "versions": versions,
    }


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def train(
    plan: Plan, name: str, folder: Path, work: Path, checkpointing: bool, qlora: bool
) -> dict[str, Any]:
    """One training through ``accelerate launch`` with the plan's config, as the train stage runs it."""
    from ragdistill.config import TrainingConfig
    from ragdistill.training.launch import launch_training
    from ragdistill.training.lora import TrainingError
    from ragdistill.training.spec import TrainSpec

    method = "qlora" if qlora else "lora"
    entry: dict[str, Any] = {"model": name, "method": method, "gradient_checkpointing": checkpointing}
    training = TrainingConfig(
        lora_r=plan.lora_r,
        lora_alpha=2 * plan.lora_r,
        max_steps=plan.steps,
        per_device_batch_size=plan.batch,
        max_seq_len=plan.seq_len,
        precision="bf16",
        gradient_checkpointing=checkpointing,
        load_in_4bit=qlora,
        save_steps=plan.steps + 1,
        resume=False,
        tensorboard=False,
        accelerate_config=plan.accelerate_config,
    )
    run = f"{name}-{method}-{'gc' if checkpointing else 'nogc'}"
    dataset = work / f"{name}-data.parquet"
    spec = TrainSpec.from_config(
        training, dataset=str(dataset), base_model=str(folder), output_dir=str(work / run)
    )
    started = time.perf_counter()
    try:
        result = launch_training(spec, plan.accelerate_config)
    except TrainingError as error:
        return {**entry, "status": "failed", "error": str(error)[-2000:]}
    peak = result.peak_memory_bytes
    return {
        **entry,
        "status": "ok",
        "tokens_per_second": result.steady_tokens_per_second or result.tokens_per_second,
        "whole_run_tokens_per_second": result.tokens_per_second,
        "peak_memory_gib": round(peak / 2**30, 2) if peak else None,
        "steps": result.steps,
        "tokens": result.tokens,
        "train_seconds": result.seconds,
        "launch_seconds": round(time.perf_counter() - started, 1),
        "precision": result.precision,
        "loss_head": result.loss_head,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
    }


def generate(plan: Plan, name: str, folder: Path) -> list[dict[str, Any]]:
    """Completion tokens/s of the hf backend at each of the plan's batch sizes (one warm-up call first)."""
    import torch

    from ragdistill.config import BackendConfig, ModelSpec, RoleConfig, SamplingConfig
    from ragdistill.inference.base import GenerationRequest
    from ragdistill.inference.hf_backend import HFBackend
    from ragdistill.messages import ChatMessage

    rng = random.Random(1)
    window = 8 * plan.prompt_words + plan.new_tokens + 64  # a word is at most 4 byte tokens and a space
    role = RoleConfig(
        model=ModelSpec(name=str(folder), dtype="bfloat16", max_model_len=window),
        backend=BackendConfig(kind="hf", batch_size=max(plan.generation_batches)),
        sampling=SamplingConfig(max_tokens=plan.new_tokens),
    )

    def request() -> GenerationRequest:
        words = " ".join(f"{rng.choice('abcdefgh')}{rng.randrange(100)}" for _ in range(plan.prompt_words))
        return GenerationRequest(
            messages=[ChatMessage("system", "Answer."), ChatMessage("user", words)],
            max_tokens=plan.new_tokens,
        )

    backend = HFBackend(role, model_path=str(folder))
    rows = []
    try:
        backend.generate([request()])
        for batch in plan.generation_batches:
            requests = [request() for _ in range(batch)]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            started = time.perf_counter()
            generations = backend.generate(requests)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            tokens = sum(generation.completion_tokens for generation in generations)
            failures = [generation.error for generation in generations if generation.finish_reason == "error"]
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "status": "failed" if failures else "ok",
                    "completion_tokens": tokens,
                    "prompt_tokens_each": round(sum(g.prompt_tokens for g in generations) / batch),
                    "seconds": round(seconds, 3),
                    "tokens_per_second": round(tokens / seconds, 1),
                    **({"error": failures[0]} if failures else {}),
                }
            )
    finally:
        backend.close()
        release_memory()
    return rows


def ratios(report: dict[str, Any]) -> dict[str, float]:
    """The comparisons the figures are for, each measured within this run."""
    trained = {
        (t["model"], t["method"], t["gradient_checkpointing"]): t
        for t in report.get("training", [])
        if t["status"] == "ok"
    }
    generated = {(g["model"], g["batch"]): g for g in report.get("generation", []) if g["status"] == "ok"}
    found: dict[str, float] = {}

    def ratio(key: str, numerator: Any, denominator: Any, figure: str) -> None:
        if numerator and denominator and numerator.get(figure) and denominator.get(figure):
            found[key] = round(numerator[figure] / denominator[figure], 3)

    for model in QWEN25_SHAPES:
        with_gc, without = trained.get((model, "lora", True)), trained.get((model, "lora", False))
        ratio(f"{model}_checkpointing_speed", with_gc, without, "tokens_per_second")
        ratio(f"{model}_checkpointing_memory", with_gc, without, "peak_memory_gib")
        for batch in (16, 64):
            ratio(
                f"{model}_generation_batch{batch}_vs_1",
                generated.get((model, batch)),
                generated.get((model, 1)),
                "tokens_per_second",
            )
    small, large = trained.get(("qwen2.5-1.5b", "lora", True)), trained.get(("qwen2.5-7b", "lora", True))
    ratio("7b_vs_1.5b_training_speed", large, small, "tokens_per_second")
    qlora = trained.get((QLORA_MODEL, "qlora", True))
    ratio("qlora_vs_lora_memory", qlora, large, "peak_memory_gib")
    ratio("qlora_vs_lora_speed", qlora, large, "tokens_per_second")
    return found


def describe(section: str, entry: dict[str, Any]) -> str:
    if entry.get("status") != "ok":
        return f"{section} {entry}"
    if section == "training":
        checkpointing = "on" if entry["gradient_checkpointing"] else "off"
        return (
            f"train {entry['model']} {entry['method']} checkpointing {checkpointing}: "
            f"{entry['tokens_per_second']:.0f} tok/s, peak {entry['peak_memory_gib']} GiB, "
            f"{entry['steps']} steps in {entry['train_seconds']} s (launch {entry['launch_seconds']} s)"
        )
    if section == "generation":
        return (
            f"generate {entry['model']} batch {entry['batch']}: {entry['tokens_per_second']:.0f} tok/s "
            f"({entry['completion_tokens']} tokens in {entry['seconds']} s)"
        )
    return f"build {entry['model']}: {entry['parameters'] / 1e6:.1f}M parameters in {entry['seconds']} s"


def run_parts(plan: Plan, work: Path, report: Report, budget_s: float) -> None:
    """Per model: its checkpoint and data, trainings without and with checkpointing (QLoRA on the 7B
    shape), then generation; a part not started within the budget is recorded as skipped."""
    on_cuda = plan.device == "cuda"
    qlora_ready = on_cuda and _importable("bitsandbytes")
    for name, shape in plan.shapes.items():
        folder = work / name
        if report.elapsed() > budget_s:
            report.add(
                "skipped", {"model": name, "reason": f"--budget-s {budget_s:g} spent before its checkpoint"}
            )
            continue
        built = build_checkpoint(name, shape, folder, plan.device)
        write_dataset(
            work / f"{name}-data.parquet", plan.seq_len, plan.steps * plan.batch, shape["vocab_size"]
        )
        report.add("build", built)
        print(describe("build", {**built, "status": "ok"}), flush=True)
        trainings = [(False, False), (True, False)] + ([(True, True)] if name == QLORA_MODEL else [])
        for checkpointing, qlora in trainings:
            run = {
                "model": name,
                "method": "qlora" if qlora else "lora",
                "gradient_checkpointing": checkpointing,
            }
            if report.elapsed() > budget_s:
                entry = {**run, "status": "skipped", "reason": f"--budget-s {budget_s:g} spent"}
            elif qlora and not qlora_ready:
                reason = "needs CUDA" if not on_cuda else "bitsandbytes does not import here"
                entry = {**run, "status": "skipped", "reason": reason}
            else:
                entry = train(plan, name, folder, work, checkpointing, qlora)
            report.add("training", entry)
            print(describe("training", entry), flush=True)
        if report.elapsed() > budget_s:
            report.add(
                "skipped", {"model": name, "reason": f"--budget-s {budget_s:g} spent before generation"}
            )
            continue
        for row in generate(plan, name, folder):
            report.add("generation", row)
            print(describe("generation", row), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="Tiny shapes on the CPU: the same code paths.")
    parser.add_argument("--json", type=Path, help="Also write the results here, after each part.")
    parser.add_argument(
        "--work-dir", type=Path, help="Checkpoints and training outputs (default: a temp folder)."
    )
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="Start no part after this many seconds."
    )
    arguments = parser.parse_args(argv)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    problems = import_problems()
    if problems:
        for name, problem in problems.items():
            print(f"error: cannot import {name}: {problem}")
        print(f"bring the wheels of {WHEELS_FILE} (README, 'GPU check')")
        return 2
    import torch

    if not arguments.dry_run and not torch.cuda.is_available():
        print(
            "error: torch sees no CUDA GPU; run this on a GPU machine, or pass --dry-run to check it on a CPU"
        )
        return 2
    sys.path.insert(0, str(REPO / "src"))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])
    )
    plan = DRY_PLAN if arguments.dry_run else GPU_PLAN
    report = Report("dry-run" if arguments.dry_run else "gpu", arguments.json)
    report.data.update(environment(report.mode))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as temporary:
        work = arguments.work_dir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        run_parts(plan, work, report, arguments.budget_s)
    report.data["ratios"] = ratios(report.data)
    report.data["heavy_imports"] = sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY_MODULES))
    report.save()
    for key, value in report.data["ratios"].items():
        print(f"{key}: {value}")
    print(json.dumps(report.data, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
