"""benchmarks/gpu_check.py, made ready for a GPU machine here: its --dry-run runs every part on the CPU
with tiny shapes (the training through `accelerate launch`, generation through the hf backend), and no
process it starts imports what that machine lacks.

Every Python process of the run (the check, accelerate's launcher, each training process) records its
imported top-level modules at exit through a ``sitecustomize`` put first on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = ("qwen2.5-1.5b", "qwen2.5-7b")
BATCHES = (1, 16, 64)
DRY_RUN_NEW_TOKENS = 8
NOT_ON_THE_GPU_MACHINE = {
    "prefect",
    "prefect_ray",
    "vllm",
    "faiss",
    "sentence_transformers",
    "ray",
    "alfworld",
    "textworld",
    "bm25s",
    "s3fs",
    "aiobotocore",
    "rapidfuzz",
    "gguf",
    "fastapi",
    "sqlalchemy",
}
"""Project dependencies that neither the GPU machine nor the wheels brought to it have. (accelerate imports
boto3 whenever it is installed, and works without it, so boto3 is not among them.)"""
IMPORT_RECORDER = """\
import atexit, os, sys

def _record():
    folder = os.environ.get("GPU_CHECK_IMPORT_LOG")
    if folder:
        with open(os.path.join(folder, f"{os.getpid()}.txt"), "w") as log:
            log.write(" ".join(sys.argv) + "\\n")
            log.write("\\n".join(sorted({name.split(".")[0] for name in sys.modules})))

atexit.register(_record)
"""


def wheel_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "benchmarks/gpu_check_wheels.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_the_wheels_to_bring_are_at_the_projects_pinned_versions() -> None:
    cpu = {}
    for line in (REPO / "constraints-cpu.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            cpu[name.lower().replace("_", "-")] = version
    wheels = wheel_pins()
    assert {"trl", "datasets", "pydantic"} <= set(wheels)
    assert {name: cpu.get(name) for name in wheels} == wheels, "regenerate from constraints-cpu.txt"


def test_without_a_gpu_the_check_stops_at_once_and_says_how_to_check_it_here() -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--budget-s", "1"],
        cwd=REPO,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2 and "no CUDA GPU" in run.stdout and "--dry-run" in run.stdout


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, set[str]], Path]:
    folder = tmp_path_factory.mktemp("gpu-check")
    hooks, imports = folder / "hooks", folder / "imports"
    hooks.mkdir()
    imports.mkdir()
    (hooks / "sitecustomize.py").write_text(IMPORT_RECORDER)
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])),
        "GPU_CHECK_IMPORT_LOG": str(imports),
        "OMP_NUM_THREADS": "1",
    }
    json_path = folder / "gpu_check.json"
    command = [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--json", str(json_path)]
    command += ["--work-dir", str(folder / "work")]
    run = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary == json.loads(json_path.read_text()), "the JSON line is what --json holds"
    recorded = {}
    for log in imports.glob("*.txt"):
        command_line, _, modules = log.read_text().partition("\n")
        recorded[command_line] = set(modules.split())
    return summary, recorded, folder / "work"


@pytest.mark.slow
def test_the_dry_run_trains_every_shape_with_and_without_checkpointing_through_accelerate_launch(
    dry_run: tuple[dict[str, Any], dict[str, set[str]], Path],
) -> None:
    summary, _, work = dry_run
    assert summary["mode"] == "dry-run" and summary["device"] == "cpu"
    assert {entry["model"] for entry in summary["build"]} == set(MODELS)
    trainings = {(t["model"], t["method"], t["gradient_checkpointing"]): t for t in summary["training"]}
    expected = {(model, "lora", checkpointing) for model in MODELS for checkpointing in (False, True)}
    assert set(trainings) == expected | {("qwen2.5-7b", "qlora", True)}
    for key in expected:
        training = trainings[key]
        assert training["status"] == "ok", training
        assert training["steps"] == 4 and training["tokens"] == 4 * 2 * 64
        assert training["tokens_per_second"] > 0 and training["peak_memory_gib"] > 0
        assert training["precision"].startswith("bfloat16")
        log = (work / f"{key[0]}-lora-{'gc' if key[2] else 'nogc'}" / "train.log").read_text()
        assert "accelerate.commands.launch" in log.splitlines()[0] and "cpu.yaml" in log.splitlines()[0]
    qlora = trainings[("qwen2.5-7b", "qlora", True)]
    assert qlora["status"] == "skipped" and "CUDA" in qlora["reason"]


@pytest.mark.slow
def test_the_dry_run_generates_at_each_batch_size_and_reports_the_ratios(
    dry_run: tuple[dict[str, Any], dict[str, set[str]], Path],
) -> None:
    summary, _, _ = dry_run
    generations = {(g["model"], g["batch"]): g for g in summary["generation"]}
    assert set(generations) == {(model, batch) for model in MODELS for batch in BATCHES}
    for (_, batch), generation in generations.items():
        assert generation["status"] == "ok", generation
        assert 0 < generation["completion_tokens"] <= batch * DRY_RUN_NEW_TOKENS
        assert generation["tokens_per_second"] > 0
    ratios = summary["ratios"]
    for model in MODELS:
        assert ratios[f"{model}_checkpointing_speed"] > 0 and ratios[f"{model}_checkpointing_memory"] > 0
        assert ratios[f"{model}_generation_batch64_vs_1"] > 0
    assert "qlora_vs_lora_memory" not in ratios, "no ratio from a part that did not run"


@pytest.mark.slow
def test_no_process_of_the_check_imports_what_the_gpu_machine_lacks(
    dry_run: tuple[dict[str, Any], dict[str, set[str]], Path],
) -> None:
    summary, recorded, _ = dry_run
    assert summary["heavy_imports"] == []
    trainings = [line for line in recorded if "ragdistill.training.launch" in line]
    assert len(trainings) >= 4, f"the training processes recorded their imports too: {list(recorded)}"
    for command_line, modules in recorded.items():
        assert not modules & NOT_ON_THE_GPU_MACHINE, (
            f"{command_line}: {sorted(modules & NOT_ON_THE_GPU_MACHINE)}"
        )
    assert any({"trl", "peft", "accelerate"} <= modules for modules in recorded.values())
