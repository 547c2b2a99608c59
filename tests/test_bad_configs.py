"""Bad configs and data are rejected before any work starts, with what to fix: the CLI exits non-zero,
prints the setting at fault and writes nothing under the run root.

Pinned elsewhere (tests/test_config.py): the messages for an unknown key, a wrong type, several problems
at once, invalid YAML and a missing file, StateAct with ReAct transcripts, and engines that ask for more
than one GPU.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import env_doubles  # noqa: F401  (registers the counter-double environment)
from conftest import installed, require
from ragdistill.cli import app
from ragdistill.config import ConfigError, ExperimentConfig, with_overrides

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "configs" / "demo-alfworld.yaml").read_text())


def demo_config(tmp_path: Path, changes: dict[str, Any]) -> Path:
    """The demo config with dotted-key ``changes`` (a value of None removes the key), its run root in
    ``tmp_path/run``."""
    data = yaml.safe_load(yaml.safe_dump(DEMO))
    data["run"]["run_root"] = f"file://{tmp_path}/run"
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def nothing_written(tmp_path: Path) -> bool:
    return not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*"))


REJECTED: dict[str, tuple[str, dict[str, Any], str]] = {
    "unknown key": ("rollout", {"agent.formt": "react"}, r"agent\.formt: unknown key"),
    "wrong type": ("rollout", {"env.limit": "eight"}, r"env\.limit: .*'eight'"),
    "lora rank above the engine's": (
        "train",
        {"training.lora_r": 128, "evaluation.student_weights": "lora"},
        r"training\.lora_r 128 is above models\.agent\.backend\.max_lora_rank 64.*raise max_lora_rank to 128",
    ),
    "lora rank vllm does not take": (
        "rollout",
        {"models.agent.backend.max_lora_rank": 48},
        r"max_lora_rank 48 is not one vLLM accepts; use one of \(1, 8, 16, 32, 64",
    ),
    "unknown model": (
        "rollout",
        {"models.agent.model.name": "smollm2-13m"},
        r"models\.agent\.model\.name: unknown model 'smollm2-13m'; use a short name \(smollm2-135m\)",
    ),
    "missing model folder": (
        "mine",
        {"models.extractor.model.name": "/no/such/checkpoint"},
        r"models\.extractor\.model\.name: '/no/such/checkpoint' looks like a local folder but there is none",
    ),
    "unknown embedding model": (
        "index",
        {"retrieval.embedding_model": "minilm"},
        r"retrieval\.embedding_model: unknown model 'minilm'; use a short name \(all-minilm-l6-v2\)",
    ),
    "few-shot source the environment lacks": (
        "rollout",
        {"env.name": "webshop", "agent.fewshot_source": "react"},
        r"agent\.fewshot_source: environment 'webshop' offers no 'react' few-shot examples; use one of: expert",
    ),
    "accelerate config missing here": (
        "train",
        {"training.accelerate_config": "/no/such/accelerate.yaml"},
        r"training\.accelerate_config: accelerate config '/no/such/accelerate\.yaml' is neither a shipped name",
    ),
    "a learning rate that is not finite": (
        "train",
        {"training.learning_rate": float("inf")},
        r"training\.learning_rate: inf is not a finite number",
    ),
    "completions longer than the context window": (
        "rollout",
        {"models.agent.sampling.max_tokens": 8192},
        r"models\.agent\.sampling\.max_tokens 8192 leaves no room for a prompt in models\.agent\.model\.max_model_len",
    ),
    "a run root on http": (
        "rollout",
        {"run.run_root": "http://127.0.0.1:9/runs"},
        r"run\.run_root: Value error, storage 'http' is not one a run root may be on \(only file, s3\)",
    ),
    "a student without a dataset": (
        "build-datasets",
        {"env.name": "counter-double", "distill.teacher": "expert"},
        r"distill\.teacher: 'expert' needs expert demonstrations, which environment 'counter-double' cannot "
        r"render, so the distill student would have no training set; use 'rag'",
    ),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_a_bad_config_is_rejected_before_any_work_with_what_to_fix(tmp_path: Path, case: str) -> None:
    command, changes, message = REJECTED[case]
    path = demo_config(tmp_path, changes)
    result = CliRunner().invoke(app, [command, "-c", str(path)])
    assert result.exit_code == 2, result.output
    assert str(path) in result.output
    assert re.search(message, " ".join(result.output.split())), result.output
    assert nothing_written(tmp_path)


def test_a_flow_checks_its_config_against_this_machine_before_any_work(tmp_path: Path) -> None:
    from ragdistill.flows.parameters import experiment_config

    path = demo_config(tmp_path, {"models.agent.model.name": "smollm2-13m"})
    with pytest.raises(
        ConfigError, match=r"models\.agent\.model\.name: unknown model 'smollm2-13m'"
    ) as raised:
        experiment_config(str(path))
    assert str(path) in str(raised.value)
    assert nothing_written(tmp_path)


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    """The installed entry point's behaviour (``ragdistill.cli.main``), in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "ragdistill.cli", *arguments], capture_output=True, text=True, timeout=180
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"env.name": "alfwrld"},
            r"error: unknown environment 'alfwrld'; registered: \['alfworld', 'webshop'\]",
        ),
        (
            {"env.data_dir": "/no/such/data"},
            r"error: ALFWorld games not found at /no/such/data/alfworld/json_2\.1\.1; install them with "
            r"`ragdistill data setup",
        ),
    ],
    ids=["unknown environment", "missing data folder"],
)
def test_an_unknown_environment_or_missing_data_stops_the_stage_before_it_writes(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    # the rollout itself, not the warm start the demo runs before it (its own checks: test_warm_start.py)
    result = run_cli("rollout", "-c", str(demo_config(tmp_path, {**changes, "warm_start.enabled": False})))
    assert result.returncode == 2, result.stdout + result.stderr
    assert re.search(message, result.stderr) and "Traceback" not in result.stderr
    assert nothing_written(tmp_path)


def test_the_lora_rank_check_applies_only_where_an_engine_loads_the_students() -> None:
    big = {"training.lora_r": 128}
    with pytest.raises(ConfigError, match=r"training\.lora_r 128 is above"):
        with_overrides(ExperimentConfig(), big)
    assert with_overrides(ExperimentConfig(), {**big, "evaluation.student_weights": "merged"})
    assert with_overrides(ExperimentConfig(), {**big, "evaluation.methods": ["base", "rag"]})
    assert with_overrides(ExperimentConfig(), {**big, "models.agent.backend.max_lora_rank": 128})
    assert with_overrides(ExperimentConfig(), {**big, "models.agent.backend.kind": "hf"})


@pytest.mark.slow
def test_the_lora_ranks_are_the_ones_the_installed_vllm_accepts() -> None:
    from typing import get_args

    from ragdistill.config.models import VLLM_LORA_RANKS

    require(installed("vllm"), "vLLM is not installed (`make setup` installs the cpu extra)")
    from vllm.config import lora

    assert get_args(lora.MaxLoRARanks) == VLLM_LORA_RANKS
