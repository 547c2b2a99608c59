"""Configs are bounded: a hostile or careless file or override is refused fast, naming the key.

The hostile files (an alias bomb, 1,000 nested brackets, a 24 MB list) are loaded by the real CLI in a
process of its own with its address space capped at 4 GiB, as a careless user would run it; the
rest call the loader directly. Every case here was accepted, or crashed, or ran for minutes, before.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ragdistill.config import ConfigError, ExperimentConfig, load_config, validate_config, with_overrides

MAX_DEPTH = 16  # ragdistill.config.limits, spelled out so that each case runs against older code

LIMITED_CLI = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
sys.argv = ["ragdistill", *sys.argv[1:]]
from ragdistill.cli import main
start = time.perf_counter()
try:
    main()
finally:
    sys.stdout.write(f"\\nloaded-in {time.perf_counter() - start:.3f}\\n")
"""


def run_limited_cli(*arguments: str) -> tuple[int, str, float]:
    """``ragdistill ARGUMENTS`` under a 4 GiB address-space limit: exit code, stderr, and the seconds
    the command took after its imports."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", LIMITED_CLI, *arguments], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`ragdistill {' '.join(arguments)}` still ran after 30 s")
    elapsed = re.search(r"loaded-in ([\d.]+)", done.stdout)
    assert elapsed, done.stdout + done.stderr
    return done.returncode, done.stderr, float(elapsed.group(1))


def alias_bomb() -> str:
    """About 2.6 KB of YAML under ``env.options`` that expands to 9**10 strings of 200 characters."""
    lines = ["env:", "  options:", "    l0: &l0 [" + ", ".join(["x" * 200] * 9) + "]"]
    lines += [
        f"    l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]" for level in range(1, 11)
    ]
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str, name: str = "experiment.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            alias_bomb(),
            r"env\.options\.l4: the config holds more than 20,000 values once its aliases \(\*name\) are expanded",
        ),
        (
            "env:\n  options:\n    deep: " + "[" * 1000 + "]" * 1000 + "\n",
            rf"line 3: env\.options\.deep: nested deeper than {MAX_DEPTH} levels",
        ),
        (
            "env:\n  task_types: [" + ", ".join(["pick_and_place"] * 1_500_000) + "]\n",
            r"[\d,]+ bytes; a config file is at most 256 KiB",
        ),
    ],
    ids=["alias bomb", "1000 nested brackets", "24 MB list"],
)
def test_a_hostile_config_file_is_refused_in_well_under_a_second_under_a_4_gib_limit(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    code, stderr, seconds = run_limited_cli("adapters", "list", "-c", str(path))
    assert code == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert re.search(rf"^error: {re.escape(str(path))}: {message}", stderr), stderr
    assert seconds < 1.0, f"refused after {seconds:.2f} s"


def test_an_anchor_may_share_a_block_but_overrides_stay_apart_and_merge_keys_and_cycles_are_refused(
    tmp_path: Path,
) -> None:
    assert 2_400 < len(alias_bomb()) < 2_800
    shared = write(
        tmp_path,
        "models:\n  agent:\n    backend: &served {kind: openai, base_url: 'http://127.0.0.1:8000/v1'}\n"
        "  extractor:\n    backend: *served\n",
    )
    config = load_config(shared, {"models.agent.backend.max_retries": 9})
    assert config.models.extractor.backend.kind == "openai" == config.models.agent.backend.kind
    assert (config.models.agent.backend.max_retries, config.models.extractor.backend.max_retries) == (9, 4)
    with pytest.raises(
        ConfigError, match=r"line 4: YAML merge keys \(<<\) are not accepted; write the keys out"
    ):
        load_config(write(tmp_path, "run: &run\n  name: x\nenv:\n  <<: *run\n"))
    with pytest.raises(
        ConfigError, match=r": env\.options(\.x)+: nested deeper than 16 levels once its aliases"
    ):
        load_config(write(tmp_path, "env:\n  options: &options {x: *options}\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "run:\n  name: a\nenv:\n  split: train\nrun:\n  name: b\n",
            r"line 5: duplicate key 'run' \(first at line 1\)",
        ),
        (
            "env:\n  split: train\n  limit: 3\n  split: valid_seen\n",
            r"line 4: duplicate key 'split' \(first at line 2\)",
        ),
        (
            "models:\n  agent:\n    sampling: {seed: 1, seed: 2}\n",
            r"line 3: duplicate key 'seed' \(first at line 3\)",
        ),
    ],
    ids=["section", "setting", "flow mapping"],
)
def test_a_duplicate_key_is_refused_naming_the_key_and_both_lines(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {message}"):
        load_config(path)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"run.name": "x" * 50_000_000},
            r"override: run\.name: 50000000 characters; a setting holds at most 4096",
        ),
        (
            {"env.options.deep": nested(1000)},
            rf"override: env\.options\.deep: nested deeper than {MAX_DEPTH} levels",
        ),
        (
            {"env.task_types": ["pick"] * 2_000_000},
            r"override: env\.task_types: 2000000 entries; .* at most 1000",
        ),
        ({"env..limit": 2}, r"override: override key 'env\.\.limit' is not a dotted setting name"),
        ({".".join(["a"] * 40): 1}, r"is not a dotted setting name such as env\.limit \(at most 16 parts"),
        ({"env.options.x": 10**30}, r"override: env\.options\.x: 10+ is out of range"),
    ],
    ids=["50 MB run name", "1000 nested lists", "2M-item list", "empty key part", "40 parts", "huge integer"],
)
def test_overrides_are_bounded_like_files(overrides: dict[str, Any], message: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        with_overrides(ExperimentConfig(), overrides)
    assert time.perf_counter() - start < 1.0


def test_stored_config_data_is_bounded_too() -> None:
    """``ragdistill report`` validates the config a run root's ``run.json`` holds."""
    with pytest.raises(ConfigError, match=r"^runs/x/run\.json: env\.options\.deep: nested deeper"):
        validate_config({"env": {"options": {"deep": nested(1000)}}}, source="runs/x/run.json")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("training:\n  learning_rate: .inf\n", r"training\.learning_rate: inf is not a finite number"),
        ("run:\n  lease_wait_s: .nan\n", r"run\.lease_wait_s: nan is not a finite number"),
        ("env:\n  options: {page_size: -.inf}\n", r"env\.options\.page_size: -inf is not a finite number"),
        ("env:\n  workers: 99999999999999999999\n", r"env\.workers: 99999999999999999999 is out of range"),
        ("models:\n  agent:\n    sampling: {seed: -1}\n", r"models\.agent\.sampling\.seed: Input should be greater"),
        (
            "models:\n  agent:\n    model: {max_model_len: 2048}\n    sampling: {max_tokens: 4096}\n",
            r"models\.agent\.sampling\.max_tokens 4096 leaves no room for a prompt in models\.agent\.model\.max_model_len 2048",
        ),
        (
            "models:\n  extractor:\n    model: {max_model_len: 600}\n    sampling: {max_tokens: 600}\n",
            r"models\.extractor\.sampling\.max_tokens 600 leaves no room .* models\.extractor\.model\.max_model_len 600",
        ),
        (
            "models:\n  reranker:\n    model: {max_model_len: 32}\n",
            r"models\.reranker\.sampling\.max_tokens 256 leaves no room",
        ),
        ("run:\n  name: " + "a" * 101 + "\n", r"run\.name: String should have at most 100 characters"),
        ("env:\n  split: " + "s" * 101 + "\n", r"env\.split: String should have at most 100 characters"),
        ('run:\n  run_root: ""\n', r"run\.run_root: Value error, is empty; give a folder, file://PATH or s3://"),
        ('run:\n  run_root: "  "\n', r"run\.run_root: Value error, is empty"),
        ("run:\n  run_root: memory://runs/x\n", r"run\.run_root: Value error, storage 'memory' is not one a run"),
        ("run:\n  run_root: http://example.com/runs\n", r"run\.run_root: Value error, storage 'http' is not one"),
        ("run:\n  run_root: file://\n", r"run\.run_root: Value error, names no folder after file://"),
        ("run:\n  run_root: s3:///prefix\n", r"run\.run_root: Value error, names no bucket after s3://"),
        ("run:\n  run_root: /\n", r"run\.run_root: Value error, is the file system's root"),
        ('run:\n  run_root: "runs/x\\ny"\n', r"run\.run_root: Value error, holds control characters"),
    ],
    ids=[
        "inf learning rate", "nan lease wait", "-inf in env.options", "integer past 64 bits", "negative seed",
        "agent max_tokens over max_model_len", "extractor max_tokens equal to max_model_len",
        "reranker max_tokens over a tiny window", "101-character run name", "101-character split",
        "empty run root", "blank run root", "memory run root", "http run root", "file:// without a folder",
        "s3:// without a bucket", "the file system's root", "a newline in the run root",
    ],
)  # fmt: skip
def test_every_value_is_range_checked_and_the_error_names_the_key(
    tmp_path: Path, yaml_text: str, message: str
) -> None:
    path = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(path)
    assert str(raised.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "run_root",
    ["runs/x", "/tmp/ragdistill-runs/x", "file://./runs/x", "file:///tmp/runs/x", "s3://bucket/runs/x"],
)
def test_folders_and_file_and_s3_urls_are_run_roots(run_root: str) -> None:
    assert with_overrides(ExperimentConfig(), {"run.run_root": run_root}).run.run_root == run_root


def test_a_completion_that_fits_and_a_100_character_name_are_accepted() -> None:
    config = with_overrides(
        ExperimentConfig(),
        {
            "run.name": "n" * 100,
            "models.agent.model.max_model_len": 2048,
            "models.agent.sampling.max_tokens": 2047,
            "training.learning_rate": 1e-300,
        },
    )
    assert config.models.agent.sampling.max_tokens == 2047 and len(config.run.name) == 100


def test_a_finite_float_is_required_of_configs_built_in_code_too() -> None:
    with pytest.raises(ValueError, match="finite number"):
        ExperimentConfig().training.learning_rate = float("inf")
