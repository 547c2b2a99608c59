"""Corrupted artifacts are detected, named, and come with the remedy: the ``ragdistill`` command that
rebuilds them, or the stage rebuilding them by itself when it is run again.

Runs on the ``counter-double`` environment with named doubles (test_stages.PolicyDouble for models,
the hashing embedder for the index); the upstream run roots are built once per module and copied.
Pinned elsewhere: a corrupted shard line named by file and line (test_store.py::
test_corrupted_shard_line_is_reported_by_file_and_line), every tampered or missing file of a manifest
named at once (test_store.py::test_manifest_verification_names_tampered_and_missing_files), an altered
rollout shard rebuilt by the rollout itself (test_stages.py::
test_a_deleted_or_altered_shard_makes_the_stage_run_again), a sub-index that does not match its meta
(test_index.py::test_load_detects_a_corrupted_or_missing_sub_index), and a stage folder made by other
settings cleared and played again (test_stages.py::
test_a_setting_the_rollout_reads_starts_it_again_and_one_it_does_not_read_does_not).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.config.stages import PipelineSettings
from ragdistill.inference.adapters import AdapterBaseMismatchError, merged_checkpoint
from ragdistill.retrieval.index import HintIndexError
from ragdistill.stages import StageError, run_indexing, run_mining, run_rollout, run_teacher
from ragdistill.stages.datasets import run_dataset
from ragdistill.stages.training import run_training
from ragdistill.store import (
    ArtifactError,
    ArtifactStore,
    Manifest,
    read_manifest,
    read_records,
    write_manifest,
)
from test_crashes import crash_config, hashing_embedder, upstream
from test_stages import PolicyDouble


def rollout(config: ExperimentConfig, action: str) -> Manifest:
    stages = PipelineSettings.from_experiment(config)
    return run_rollout(stages.ctx, stages.rollout(), {}, backend=PolicyDouble(action))


def mining(config: ExperimentConfig, extractor: PolicyDouble) -> Manifest:
    stages = PipelineSettings.from_experiment(config)
    return run_mining(stages.ctx, stages.mining, upstream(config, stages.mining), backend=extractor)


def indexing(config: ExperimentConfig) -> Manifest:
    stages = PipelineSettings.from_experiment(config)
    return run_indexing(stages.ctx, stages.indexing, upstream(config, stages.indexing))


def teacher(config: ExperimentConfig) -> Manifest:
    stages = PipelineSettings.from_experiment(config)
    return run_teacher(
        stages.ctx, stages.teacher, upstream(config, stages.teacher), backend=PolicyDouble("inc")
    )


def sft_dataset(config: ExperimentConfig) -> Manifest:
    stages = PipelineSettings.from_experiment(config)
    settings = stages.dataset("sft")
    return run_dataset(stages.ctx, settings, upstream(config, settings))


def sft_training(config: ExperimentConfig) -> Manifest:
    stages = PipelineSettings.from_experiment(config)
    settings = stages.training("sft")
    return run_training(stages.ctx, settings, upstream(config, settings))


@pytest.fixture(scope="module")
def mined_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Failed base episodes, the hint bank and the index built from them."""
    root = tmp_path_factory.mktemp("mined")
    config = crash_config(root)
    rollout(config, "wait")
    mining(config, PolicyDouble())
    with hashing_embedder():
        indexing(config)
    return root


@pytest.fixture(autouse=True)
def _stage_c_embeds_with_the_hashing_double() -> Iterator[None]:
    with hashing_embedder():
        yield


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Won base episodes and the SFT set built from them."""
    root = tmp_path_factory.mktemp("dataset")
    config = crash_config(root)
    rollout(config, "inc")
    sft_dataset(config)
    return root


def copy_of(source: Path, tmp_path: Path) -> tuple[ExperimentConfig, ArtifactStore]:
    shutil.copytree(source / "run", tmp_path / "run")
    config = crash_config(tmp_path)
    return config, ArtifactStore(config.run.run_root)


def test_a_truncated_jsonl_shard_is_named_downstream_and_its_episodes_are_played_again(
    mined_root: Path, tmp_path: Path
) -> None:
    config, store = copy_of(mined_root, tmp_path)
    shard = tmp_path / "run" / "rollouts" / "base" / "shard-00000.jsonl"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size - 40])
    with pytest.raises(
        ArtifactError, match=r"(?s)corrupted: .*shard-00000\.jsonl.*`ragdistill rollout -c CONFIG`"
    ):
        sft_dataset(config)
    with pytest.raises(
        ArtifactError, match=r"shard-00000\.jsonl line 3 is not a complete JSON record.*delete it"
    ):
        rollout(config, "wait")
    shard.unlink()
    rebuilt = rollout(config, "wait")
    assert rebuilt.counts["episodes"] == 8
    assert store.read_json("rollouts/base/run-stats.json")["played_now"] == 3, "the shard's three episodes"


def test_an_altered_hint_bank_fails_the_checksum_and_mining_again_rebuilds_it(
    mined_root: Path, tmp_path: Path
) -> None:
    config, store = copy_of(mined_root, tmp_path)
    original = read_manifest(store, "hints")
    bank = tmp_path / "run" / "hints" / "bank.jsonl"
    bank.write_text(bank.read_text().replace("Open", "Close"))
    shutil.rmtree(tmp_path / "run" / "index")  # a current index does not read the bank again
    with pytest.raises(
        ArtifactError, match=r"(?s)corrupted: .*hints/bank\.jsonl \(sha256 .*`ragdistill mine -c CONFIG`"
    ):
        indexing(config)
    extractor = PolicyDouble()
    rebuilt = mining(config, extractor)
    assert not extractor.requests, "the committed extractor answers are reused"
    assert rebuilt.files == original.files


@pytest.mark.parametrize("manifest_text", [None, "{not json", '{"version": 1}'])
def test_a_missing_or_unreadable_upstream_manifest_names_the_command_that_rebuilds_it(
    mined_root: Path, tmp_path: Path, manifest_text: str | None
) -> None:
    config, _ = copy_of(mined_root, tmp_path)
    manifest = tmp_path / "run" / "hints" / "manifest.json"
    if manifest_text is None:
        manifest.unlink()
    else:
        manifest.write_text(manifest_text)
    with pytest.raises(ArtifactError, match=r"hints/manifest\.json .*run `ragdistill mine -c CONFIG`"):
        indexing(config)


def test_a_broken_faiss_file_is_named_and_indexing_again_rebuilds_it(
    mined_root: Path, tmp_path: Path
) -> None:
    config, store = copy_of(mined_root, tmp_path)
    original = read_manifest(store, "index")
    (tmp_path / "run" / "index" / "type-000.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(
        ArtifactError, match=r"(?s)corrupted: .*index/type-000\.faiss.*`ragdistill index -c CONFIG`"
    ):
        teacher(config)
    assert indexing(config).files == original.files


def test_a_broken_faiss_file_with_matching_checksums_is_named_when_loaded(
    mined_root: Path, tmp_path: Path
) -> None:
    """Someone rewrote the checksums over a broken file: loading still names it."""
    config, store = copy_of(mined_root, tmp_path)
    garbage = b"not a faiss index"
    store.write_bytes("index/type-000.faiss", garbage)
    meta = store.read_json("index/meta.json")
    meta["types"][0]["sha256"] = hashlib.sha256(garbage).hexdigest()
    store.write_json("index/meta.json", meta)
    manifest = read_manifest(store, "index")
    write_manifest(store, "index", manifest.stage, manifest.identity, list(manifest.files), manifest.counts)
    with pytest.raises(
        HintIndexError, match=r"type-000\.faiss is not a FAISS index .*`ragdistill index -c CONFIG`"
    ):
        teacher(config)


def test_an_index_from_another_embedding_model_is_refused_by_the_teacher(
    mined_root: Path, tmp_path: Path
) -> None:
    config, _ = copy_of(mined_root, tmp_path)
    other = with_overrides(config, {"retrieval.embedding_model": "another-embedder"})
    with pytest.raises(
        StageError, match=r"embedding model 'all-minilm-l6-v2' .*`ragdistill index -c CONFIG`"
    ):
        teacher(other)


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_a_missing_or_altered_parquet_stops_training_with_the_command_that_rebuilds_it(
    dataset_root: Path, tmp_path: Path, damage: str
) -> None:
    config, _ = copy_of(dataset_root, tmp_path)
    parquet = tmp_path / "run" / "datasets" / "sft" / "data.parquet"
    if damage == "missing":
        parquet.unlink()
    else:
        parquet.write_bytes(parquet.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match=rf"(?s){damage if damage == 'missing' else 'corrupted'}: "
                       r".*datasets/sft/data\.parquet.*`ragdistill build-datasets -c CONFIG`"):  # fmt: skip
        sft_training(config)
    assert not (tmp_path / "run" / "adapters" / "sft" / "adapter").exists()


def test_building_datasets_again_restores_a_deleted_parquet(dataset_root: Path, tmp_path: Path) -> None:
    config, store = copy_of(dataset_root, tmp_path)
    original = read_manifest(store, "datasets/sft")
    (tmp_path / "run" / "datasets" / "sft" / "data.parquet").unlink()
    assert sft_dataset(config).files == original.files


def test_a_dataset_built_for_another_model_is_refused_by_training(dataset_root: Path, tmp_path: Path) -> None:
    config, _ = copy_of(dataset_root, tmp_path)
    other = with_overrides(config, {"models.agent.model.name": "another/model"})
    with pytest.raises(
        StageError,
        match=r"datasets/sft/manifest\.json was built with the tokenizer of 'smollm2-135m' .*'another/model'.*"
        r"`ragdistill build-datasets -c CONFIG`",
    ):
        sft_training(other)


def fake_checkpoint(folder: Path, hidden_size: int, dtype: str = "float32") -> Path:
    """A model folder with only its ``config.json``: enough for the architecture check."""
    folder.mkdir(parents=True)
    config = {
        "model_type": "llama",
        "hidden_size": hidden_size,
        "num_hidden_layers": 30,
        "vocab_size": 49152,
        "torch_dtype": dtype,
        "dtype": dtype,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_an_adapter_trained_on_another_base_model_is_refused(tmp_path: Path) -> None:
    trained_on = fake_checkpoint(tmp_path / "base-a", 576)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "base_model_name_or_path": str(trained_on)})
    )
    config = crash_config(tmp_path)
    other = fake_checkpoint(tmp_path / "base-b", 960)
    playing = with_overrides(
        config, {"models.agent.model.name": str(other), "models.agent.model.adapter": str(adapter)}
    )
    with pytest.raises(
        AdapterBaseMismatchError,
        match=r"trained on the base model .*base-a, not on .*base-b \(hidden_size 576 vs 960\).*ragdistill train",
    ):
        rollout(playing, "inc")
    assert not ArtifactStore(config.run.run_root).exists("rollouts/base/parts")
    with pytest.raises(AdapterBaseMismatchError, match="base-b"):
        merged_checkpoint(str(other), adapter, "sha256:0", cache_root=tmp_path / "cache")

    bf16_copy = fake_checkpoint(tmp_path / "base-a-bf16", 576, dtype="bfloat16")
    assert json.loads((bf16_copy / "config.json").read_text()) != json.loads(
        (trained_on / "config.json").read_text()
    ), "the copy differs from the base it was trained on in its dtype alone"
    fine = with_overrides(playing, {"models.agent.model.name": str(bf16_copy)})
    assert rollout(fine, "inc").counts["episodes"] == 8
    store = ArtifactStore(config.run.run_root)
    assert {record["adapter"] for record in read_records(store, "rollouts/base")} != {None}
