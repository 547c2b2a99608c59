"""Collect batches, the retrain watermark and skip rule, generations, and the failure-triggered retrain.

The fast tests play the counter-double environment with policy doubles (tests/test_stages.py). The slow
test runs the retrain flow on the Prefect test server; the trigger that starts it on a real server is
tests/test_events_trigger.py, the loop's inputs and commands tests/test_loop.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.adapter_registry import AdapterRegistry, current_adapter
from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.config.stages import PipelineSettings
from ragdistill.inference.base import Backend
from ragdistill.leases import LeaseHeldError
from ragdistill.stages.collect import (
    CollectBatch,
    finished_batches,
    next_batch,
    recorded_failures,
    run_collect,
)
from ragdistill.stages.lifecycle import upstream_inputs
from ragdistill.stages.mining import run_mining
from ragdistill.stages.report import write_run_file
from ragdistill.stages.retrain import (
    WATERMARK_FILE,
    advance_watermark,
    generation_root,
    pending_failures,
    prepare_generation,
    read_watermark,
    retrain_lease,
    skip_reason,
)
from ragdistill.stages.rollout import run_rollout
from ragdistill.store import ArtifactStore, Manifest, read_manifest, read_records
from test_adapter_registry import evaluate, promote, skip_training, student, write_upstream
from test_prefect_server import fresh_prefect_home  # noqa: F401  (fixture)
from test_stages import PolicyDouble, counter_config

REPO = Path(__file__).resolve().parents[1]


def collect_config(tmp_path: Path, **overrides: object) -> ExperimentConfig:
    settings: dict[str, object] = {
        "env.limit": 2,
        "env.workers": 1,
        "env.split": "test",
        "collect.split": "test",
        "collect.batch_size": 2,
        "retrain.min_failures": 3,
    }
    return counter_config(tmp_path, **{**settings, **overrides})


def base_rollout(config: ExperimentConfig, backend: Backend) -> Manifest:
    """Stage A of ``config``, ``backend`` playing the agent."""
    stages = PipelineSettings.from_experiment(config)
    return run_rollout(stages.ctx, stages.rollout(), {}, backend=backend)


def mine(config: ExperimentConfig, backend: Backend) -> Manifest:
    """Stage B of ``config`` on the base rollout its run root holds now, ``backend`` extracting."""
    stages = PipelineSettings.from_experiment(config)
    settings = stages.mining
    inputs = upstream_inputs(ArtifactStore(stages.ctx.run_root), settings)
    return run_mining(stages.ctx, settings, inputs, backend=backend)


def collect(config: ExperimentConfig, backend: Backend) -> tuple[CollectBatch, Manifest]:
    """The next collect batch of ``config`` (the lowest one not finished), as the collect flow plays it."""
    stages = PipelineSettings.from_experiment(config)
    batch = next_batch(ArtifactStore(stages.ctx.run_root))
    return run_collect(stages.ctx, stages.collect(batch), backend=backend)


def generation_config(config: ExperimentConfig, generation: int) -> ExperimentConfig:
    """The config every stage of generation ``generation`` runs with, as the retrain flow builds it."""
    return with_overrides(config, {"run.run_root": generation_root(config.run.run_root, generation)})


def played_task_ids(config: ExperimentConfig, stage: str) -> list[str]:
    store = ArtifactStore(config.run.run_root)
    return [
        record["task_id"]
        for record in read_records(store, f"rollouts/{stage}", read_manifest(store, f"rollouts/{stage}"))
    ]


def test_successive_collects_play_new_tasks_with_the_base_model_before_any_promotion(tmp_path: Path) -> None:
    config = collect_config(tmp_path)
    base_rollout(config, PolicyDouble("wait"))
    store = ArtifactStore(config.run.run_root)
    first, _ = collect(config, PolicyDouble("wait"))
    second, _ = collect(config, PolicyDouble("inc"))
    assert (first.stage, second.stage) == ("collect-0000", "collect-0001")
    assert first.adapter is None and second.adapter is None
    base = set(played_task_ids(config, "base"))
    batch0, batch1 = played_task_ids(config, first.stage), played_task_ids(config, second.stage)
    assert sorted(batch0) == ["t2", "t3"] and sorted(batch1) == ["t4", "t5"]
    assert not base & set(batch0) and not set(batch0) & set(batch1)
    assert finished_batches(store) == ["collect-0000", "collect-0001"] and next_batch(store) == 2
    assert len(recorded_failures(store, first.stage)) == 2 and not recorded_failures(store, second.stage)


def test_retrain_skips_below_the_threshold_and_the_watermark_consumes_only_what_was_read(
    tmp_path: Path,
) -> None:
    config = collect_config(tmp_path)
    settings = PipelineSettings.from_experiment(config).retrain
    store = ArtifactStore(config.run.run_root)
    assert pending_failures(store, read_watermark(store)).total == 0
    collect(config, PolicyDouble("wait"))
    watermark = read_watermark(store)
    pending = pending_failures(store, watermark)
    assert pending.total == 2
    reason = skip_reason(settings, pending)
    assert reason is not None and "fewer than retrain.min_failures (3)" in reason

    collect(config, PolicyDouble("wait"))
    pending = pending_failures(store, watermark)
    assert pending.total == 4 and skip_reason(settings, pending) is None
    advanced = advance_watermark(store, watermark, pending)
    assert advanced.generation == 1 and store.exists(WATERMARK_FILE)
    assert read_watermark(store).consumed == advanced.consumed
    assert pending_failures(store, read_watermark(store)).total == 0, (
        "consumed failures are never counted again"
    )

    collect(config, PolicyDouble("wait"))
    assert pending_failures(store, read_watermark(store)).by_stage.keys() == {"collect-0002"}


def test_one_retrain_per_run_root_holds_the_retrain_lease(tmp_path: Path) -> None:
    ctx = PipelineSettings.from_experiment(collect_config(tmp_path)).ctx
    with retrain_lease(ctx), pytest.raises(LeaseHeldError), retrain_lease(ctx):
        pass
    with retrain_lease(ctx):
        pass


def test_a_generation_combines_base_and_collect_episodes_and_mines_only_new_failures(tmp_path: Path) -> None:
    config = collect_config(tmp_path)
    ctx = PipelineSettings.from_experiment(config).ctx
    base_rollout(config, PolicyDouble("wait"))
    mine(config, PolicyDouble())
    batch, _ = collect(config, PolicyDouble("wait"))
    manifest = prepare_generation(ctx, 1, [batch.stage])
    assert manifest.counts["episodes"] == 4 and set(manifest.inputs) == {
        "rollouts/base",
        "rollouts/collect-0000",
    }
    again = prepare_generation(ctx, 1, [batch.stage])
    assert again.digest == manifest.digest, "a prepared generation is current"

    generation = generation_config(config, 1)
    extractor = PolicyDouble()
    mined = mine(generation, extractor)
    generation_store = ArtifactStore(generation.run.run_root)
    stats = generation_store.read_json("hints/run-stats.json")
    assert stats["sent_to_extractor_now"] == 2 and stats["reused_answers"] == 2
    assert len(extractor.requests) == 2, "the base failures' answers come from the inherited ledger"
    assert mined.counts["bank_size"] >= 1
    parent = read_manifest(ArtifactStore(config.run.run_root), "hints")
    assert parent.counts["failures_not_answered"] == 0 and "generations/1" in generation.run.run_root


def test_a_generation_registers_its_students_in_the_parent_registry_and_collect_then_plays_them(
    tmp_path: Path,
) -> None:
    """No training runs: each root holds what training and evaluation leave behind
    (tests/test_adapter_registry.py), and the real promotion stage registers and gates them."""
    parent = collect_config(tmp_path)
    parent_store = ArtifactStore(parent.run.run_root)
    write_upstream(parent_store)
    evaluate(parent_store, "base", 3)
    student(parent_store, b"first-pipeline", wins=5)
    assert promote(parent).counts["promoted"] == 1
    first = AdapterRegistry(parent_store).current()
    assert first is not None and first.version == "v0001"

    generation = generation_config(parent, 1)
    generation_store = ArtifactStore(generation.run.run_root)
    write_upstream(generation_store)
    evaluate(generation_store, "base", 3)
    skip_training(generation_store, "sft")
    student(generation_store, b"generation-1", wins=7)
    lineage = {"number": 1, "collect_batches": ["collect-0000"], "new_batches": ["collect-0000"]}
    manifest = promote(generation, registry_root=parent_store.root_url, generation=lineage)

    assert manifest.counts == {"registered": 1, "candidate": 1, "promoted": 1}
    registry = AdapterRegistry(parent_store)
    entry = registry.current()
    assert entry is not None and entry.version == "v0002" and entry.lineage["generation"] == lineage
    assert entry.adapter.source == "generations/1/adapters/distill/adapter"
    decision = generation_store.read_json("promotion/decision.json")["decision"]
    assert decision["reference"] == "v0001", "the gate compares with the parent's current version"
    assert not generation_store.exists("registry/current.json"), "a generation has no registry of its own"
    assert current_adapter(parent_store) == parent_store.uri("registry/adapters/v0002")
    batch, played = collect(parent, PolicyDouble("wait"))
    assert batch.adapter == current_adapter(parent_store), "collect plays the new student"
    assert played.inputs["adapter"] == entry.adapter.digest

    again = promote(generation, registry_root=parent_store.root_url, generation=lineage)
    assert again.digest == manifest.digest and len(registry.entries()) == 2, "a re-run adds no version"
    worse = generation_config(parent, 2)
    worse_store = ArtifactStore(worse.run.run_root)
    write_upstream(worse_store)
    evaluate(worse_store, "base", 3)
    student(worse_store, b"generation-2", wins=7)
    lineage_2 = {
        "number": 2,
        "collect_batches": ["collect-0000", "collect-0001"],
        "new_batches": ["collect-0001"],
    }
    assert promote(worse, registry_root=parent_store.root_url, generation=lineage_2).counts["promoted"] == 0
    assert registry.current() == entry and len(registry.entries()) == 3, "registered, not promoted (a tie)"


@pytest.mark.slow
def test_retrain_flow_trains_generation_one_end_to_end_then_skips_without_new_failures(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retrain branch as a flow on the test server, the models replaced by the policy double; the
    double wins nothing, so both training sets are empty and training is skipped (the registry part is
    the test above)."""
    from ragdistill.flows.retrain import retrain_flow
    from ragdistill.inference import shared
    from ragdistill.stages import retrain as retrain_stage

    config = collect_config(
        tmp_path, **{"retrieval.retriever": "bm25", "evaluation.limit": 2, "evaluation.split": "test"}
    )
    config_path = tmp_path / "retrain.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    write_run_file(ArtifactStore(config.run.run_root), "retrain", config.model_dump(mode="json"))
    double = PolicyDouble("wait")
    for role in (config.models.agent, config.models.extractor):
        shared._BACKENDS[shared._key(role)] = double
    base_rollout(config, double)
    for _ in range(2):
        collect(config, double)
    store = ArtifactStore(config.run.run_root)

    advanced_after: list[set[str]] = []
    real_advance = retrain_stage.advance_watermark

    def advance_after_every_stage(*args: Any) -> Any:
        advanced_after.append(
            {*generation_store.list(""), *(["watermark"] if store.exists(WATERMARK_FILE) else [])}
        )
        return real_advance(*args)

    generation_store = store.child("generations/1")
    monkeypatch.setattr("ragdistill.flows.retrain.advance_watermark", advance_after_every_stage)
    summary = retrain_flow(str(config_path))

    assert summary["generation"] == 1 and summary["new_failures"] == 4 and summary["skipped"] is None
    assert summary["champion_before"] is None, (
        "no champion: generation 1 learns from the base, gated against it"
    )
    counts = summary["counts"]
    assert counts["base"]["episodes"] == 6 and counts["hints"]["bank_size"] >= 1
    assert counts["train_distill"] == {"trained": 0} and counts["eval_base"]["episodes"] == 2
    assert counts["promotion"] == {"registered": 0, "candidate": 0, "promoted": 0}
    folders = [
        "rollouts/base", "hints", "rollouts/teacher", "datasets/sft", "datasets/distill", "adapters/sft",
        "adapters/distill", "rollouts/eval-base", "rollouts/eval-rag", "promotion",
    ]  # fmt: skip
    for folder in folders:
        assert generation_store.exists(f"{folder}/manifest.json"), folder
    (before,) = advanced_after
    assert any(path.startswith("promotion/") for path in before), "the watermark moves after every stage"
    assert "watermark" not in before, "and not before"
    watermark = read_watermark(store)
    assert watermark.generation == 1 and set(watermark.consumed) == {"collect-0000", "collect-0001"}
    assert not store.exists("registry/current.json")

    for role in (config.models.agent, config.models.extractor):
        shared._BACKENDS[shared._key(role)] = double
    again = retrain_flow(str(config_path))
    assert again["skipped"] is not None and "0 new failure(s)" in again["skipped"]
    assert read_watermark(store) == watermark and not store.exists("generations/2")
