"""The adapter registry and the promotion stage, on run roots built through the real store.

No training or rollout runs here: each test writes what those stages leave behind (an adapter folder
with its training manifest, evaluation records with their task list and manifest, the dataset, hint
bank and base rollout manifests the lineage names) and then runs the real promotion stage, registry,
gate and CLI over them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragdistill.adapter_registry import (
    AdapterRegistry,
    EvalSummary,
    RegistryError,
    current_adapter,
    decide,
    version_statuses,
)
from ragdistill.cli import app
from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.config.stages import PipelineSettings
from ragdistill.environments.base import TaskInfo
from ragdistill.episodes import EpisodeRecord
from ragdistill.evaluation.metrics import compute_metrics
from ragdistill.inference.adapters import adapter_digest
from ragdistill.messages import Segment
from ragdistill.stages.lifecycle import upstream_inputs
from ragdistill.stages.promotion import run_promotion
from ragdistill.stages.report import run_report, write_run_file
from ragdistill.store import ArtifactStore, Manifest, read_manifest, write_manifest

EVAL_TASKS = [f"t{index}" for index in range(10)]


def make_config(run_root: str, **overrides: object) -> ExperimentConfig:
    return with_overrides(
        ExperimentConfig(), {"run.run_root": run_root, "run.name": "registry-test", **overrides}
    )


def promote(
    config: ExperimentConfig, *, registry_root: str | None = None, generation: dict | None = None
) -> Manifest:
    """The promotion stage of ``config`` on the folders its run root holds now, as the CLI runs it."""
    stages = PipelineSettings.from_experiment(config)
    settings = stages.promotion(registry_root=registry_root, generation=generation)
    return run_promotion(stages.ctx, settings, upstream_inputs(ArtifactStore(stages.ctx.run_root), settings))


def write_stage(
    store: ArtifactStore,
    folder: str,
    files: dict[str, bytes],
    *,
    counts: dict[str, int] | None = None,
    inputs: dict[str, str] | None = None,
    extra: dict | None = None,
    identity: dict | None = None,
) -> Manifest:
    """What a finished stage leaves: its files, its recorded identity and, last, its manifest."""
    for name, data in files.items():
        store.write_bytes(f"{folder}/{name}", data)
    if identity is not None:
        store.write_json(f"{folder}/identity.json", identity)
    return write_manifest(
        store, folder, stage=folder, identity=f"identity-of-{folder}", files=list(files),
        counts=counts, inputs=inputs, extra=extra,
    )  # fmt: skip


def write_upstream(store: ArtifactStore) -> None:
    """The base rollout, the hint bank mined from its failures, and the distill/sft datasets."""
    base = write_stage(store, "rollouts/base", {"shard-00000.jsonl": b"{}\n"}, counts={"episodes": 8})
    hints = write_stage(
        store, "hints", {"bank.jsonl": b'{"text": "Open the fridge first."}\n'},
        counts={"episodes": 8, "failures": 6, "bank_size": 1},
        identity={"settings": {}, "growable": {"rollouts/base": base.digest}},
    )  # fmt: skip
    write_stage(store, "datasets/distill", {"data.parquet": b"distill rows"}, counts={"examples": 5},
                inputs={"rollouts/teacher": "teacher-digest", "hints": hints.digest})  # fmt: skip
    write_stage(store, "datasets/sft", {"data.parquet": b"sft rows"}, counts={"examples": 3},
                inputs={"rollouts/base": base.digest})  # fmt: skip


def train(store: ArtifactStore, name: str, weights: bytes) -> Manifest:
    """A trained student: adapter files, its training manifest and recorded settings."""
    config = json.dumps({"peft_type": "LORA", "r": 8, "base_model_name_or_path": "smollm2-135m"}).encode()
    return write_stage(
        store, f"adapters/{name}",
        {"adapter/adapter_config.json": config, "adapter/adapter_model.safetensors": weights, "loss.csv": b"1,2\n"},
        counts={"trained": 1, "examples": 5, "steps": 2},
        extra={"result": {"examples": 5, "steps": 2, "last_loss": 0.5}},
        identity={"settings": {"training": {"lora_r": 8}, "base_model": {"name": "smollm2-135m", "dtype": "bfloat16"},
                               "seed": 42, "libraries": {"peft": "0.21"}}},
    )  # fmt: skip


def skip_training(store: ArtifactStore, name: str) -> None:
    write_stage(store, f"adapters/{name}", {}, counts={"trained": 0},
                extra={"skipped": f"the {name} training set is empty: no successes"})  # fmt: skip


def evaluate(
    store: ArtifactStore,
    method: str,
    wins: int,
    *,
    tasks: list[str] = EVAL_TASKS,
    adapter: Manifest | None = None,
) -> Manifest:
    """``rollouts/eval-<method>``: one record per task, the first ``wins`` won, and the task list."""
    records = []
    for index, task_id in enumerate(tasks):
        task = TaskInfo("alfworld", "valid_unseen", task_id, ("pick", "clean")[index % 2])
        record = EpisodeRecord.for_task(
            task, run_id="r", agent="react", source="agent", model="smollm2-135m",
            prompt=[Segment("task", "user", "do it")], success=index < wins, score=float(index < wins),
            policy_prompt_tokens=100, policy_completion_tokens=10 + index,
        )  # fmt: skip
        records.append(json.dumps(record.to_dict()) + "\n")
    task_list = {
        "env": "alfworld",
        "split": "valid_unseen",
        "environment_version": {"games": "1"},
        "task_ids": tasks,
    }
    inputs = {f"adapters/{method}": adapter.digest} if adapter is not None else {}
    return write_stage(
        store, f"rollouts/eval-{method}",
        {"shard-00000.jsonl": "".join(records).encode(), "tasks.json": json.dumps(task_list).encode()},
        counts={"episodes": len(tasks), "won": wins}, inputs=inputs,
    )  # fmt: skip


def student(store: ArtifactStore, weights: bytes, wins: int, *, name: str = "distill", **kwargs) -> Manifest:
    """Train ``name`` with ``weights`` and evaluate it with ``wins`` of the evaluation tasks."""
    trained = train(store, name, weights)
    evaluate(store, name, wins, adapter=trained, **kwargs)
    return trained


@pytest.fixture
def run_root(tmp_path: Path) -> str:
    store = ArtifactStore(f"file://{tmp_path}/run")
    write_upstream(store)
    evaluate(store, "base", 3)
    return store.root_url


def test_a_student_is_registered_with_its_lineage_a_copy_of_its_adapter_and_promoted_over_the_base_agent(
    run_root: str,
) -> None:
    config = make_config(run_root)
    store = ArtifactStore(run_root)
    student(store, b"weights-1", wins=6)
    manifest = promote(config)

    assert manifest.counts == {"registered": 1, "candidate": 1, "promoted": 1}
    decision = json.loads(store.read_text("promotion/decision.json"))
    assert decision["current"] == "v0001" and decision["decision"]["reference"] == "base"
    (sft,) = [item for item in decision["registered"] if item["student"] == "sft"]
    assert sft["version"] is None and "not been trained" in sft["reason"]

    registry = AdapterRegistry(store)
    (entry,) = registry.entries()
    assert entry.version == "v0001" and entry.student == "distill"
    assert entry.base_model == {"name": "smollm2-135m", "dtype": "bfloat16"}
    assert entry.training["settings"] == {"lora_r": 8} and entry.training["result"]["last_loss"] == 0.5
    hints = read_manifest(store, "hints")
    assert entry.lineage["dataset"]["digest"] == read_manifest(store, "datasets/distill").digest
    assert entry.lineage["hint_bank"]["digest"] == hints.digest
    assert entry.lineage["failures"] == {
        "rollouts": {"rollouts/base": read_manifest(store, "rollouts/base").digest},
        "failures_mined": 6,
        "episodes_read": 8,
    }
    evaluation = entry.evaluation
    assert (
        evaluation is not None
        and evaluation.headline == "success"
        and evaluation.value == pytest.approx(60.0)
    )
    assert evaluation.ci_low is not None and evaluation.ci_low < 60.0 < evaluation.ci_high
    assert evaluation.episodes == 10 and evaluation.tokens_per_episode == pytest.approx(114.5)
    assert "+30.0 points" in decision["decision"]["reason"]

    url = current_adapter(store)
    assert url == store.uri("registry/adapters/v0001")
    copy = Path(store.local_path("registry/adapters/v0001"))
    assert sorted(p.name for p in copy.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert adapter_digest(copy) == entry.adapter.digest, "the entry names the adapter as episode records do"

    train(store, "distill", b"weights-2")  # a later training overwrites adapters/distill ...
    assert (copy / "adapter_model.safetensors").read_bytes() == b"weights-1"  # ... never the registry's copy
    (copy / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="missing or altered"):
        current_adapter(store)


def test_registering_the_same_adapter_and_evaluation_again_adds_no_version(run_root: str) -> None:
    config = make_config(run_root)
    store = ArtifactStore(run_root)
    student(store, b"weights-1", wins=6)
    first = promote(config)
    assert promote(config) == first, "nothing changed: the stage is current"

    store.delete("promotion")
    again = promote(config)
    assert again.extra["versions"] == ["v0001"] and len(AdapterRegistry(store).entries()) == 1
    assert (
        json.loads(store.read_text("promotion/decision.json"))["decision"]["reason"]
        == "v0001 is already current"
    )

    store.delete("registry")  # a registry deleted by hand: the stage registers the students again
    promote(config)
    assert [entry.version for entry in AdapterRegistry(store).entries()] == ["v0001"]
    kinds = [event.kind for event in AdapterRegistry(store).events()]
    assert kinds == ["registered", "promoted"]


def test_a_better_student_is_promoted_and_a_worse_a_tied_or_a_barely_better_one_is_not(run_root: str) -> None:
    store = ArtifactStore(run_root)
    config = make_config(run_root, **{"promotion.margin": 15.0})
    registry = AdapterRegistry(store)
    student(store, b"first", wins=5)
    assert promote(config).counts["promoted"] == 1  # 50% against the base agent's 30%

    outcomes = {}
    for weights, wins in ((b"worse", 4), (b"tied", 5), (b"barely", 6), (b"better", 7)):
        student(store, weights, wins=wins)
        decision = promote(config).extra["decision"]
        outcomes[weights.decode()] = (decision["promoted"], decision["reason"], registry.pointer().version)

    assert outcomes["worse"][0] is False and "-10.0 points, worse" in outcomes["worse"][1]
    assert outcomes["tied"][0] is False and "a tie, not promoted" in outcomes["tied"][1]
    assert outcomes["barely"][0] is False and "below promotion.margin 15" in outcomes["barely"][1]
    assert (
        outcomes["better"] == (True, outcomes["better"][1], "v0005")
        and "+20.0 points" in outcomes["better"][1]
    )
    assert "against current v0001's 50.0" in outcomes["better"][1]
    pointer = registry.pointer()
    assert pointer.version == "v0005" and pointer.previous == ["v0001"]
    statuses = version_statuses(registry.entries(), pointer, registry.events())
    assert statuses == {"v0001": "previous", "v0002": "rejected", "v0003": "rejected", "v0004": "rejected",
                        "v0005": "current"}  # fmt: skip
    rejected = [event for event in registry.events() if event.kind == "rejected"]
    assert [(e.version, e.from_version, e.by) for e in rejected] == [
        ("v0002", "v0001", "pipeline"), ("v0003", "v0001", "pipeline"), ("v0004", "v0001", "pipeline")
    ]  # fmt: skip


def test_no_current_and_a_student_no_better_than_the_base_agent_is_rejected(run_root: str) -> None:
    store = ArtifactStore(run_root)
    student(store, b"weights", wins=3)
    decision = promote(make_config(run_root)).extra["decision"]
    assert decision["promoted"] is False and "against the base agent's 30.0: a tie" in decision["reason"]
    assert AdapterRegistry(store).pointer() is None and current_adapter(store) is None


def test_evaluations_on_different_task_lists_are_not_compared(run_root: str) -> None:
    store = ArtifactStore(run_root)
    config = make_config(run_root)
    registry = AdapterRegistry(store)
    student(store, b"first", wins=5)
    promote(config)
    student(store, b"other tasks", wins=9, tasks=[f"u{index}" for index in range(10)])
    decision = promote(config).extra["decision"]
    assert decision["promoted"] is False and "another task list" in decision["reason"]
    assert "evaluation.split and evaluation.limit" in decision["reason"]
    with pytest.raises(RegistryError, match=r"another task list.*--force"):
        registry.promote("v0002", by="cli")
    event = registry.promote("v0002", by="cli", force=True, reason="new benchmark")
    assert event.manual and event.reason.startswith("new benchmark (forced: cannot compare")
    assert registry.pointer().version == "v0002"


def test_rollback_returns_to_the_previous_version_and_manual_promotion_is_recorded(run_root: str) -> None:
    store = ArtifactStore(run_root)
    config = make_config(run_root)
    registry = AdapterRegistry(store)
    with pytest.raises(RegistryError, match="nothing is current"):
        registry.rollback(by="cli")
    student(store, b"first", wins=5)
    promote(config)
    with pytest.raises(RegistryError, match="no previous one"):
        registry.rollback(by="cli")
    student(store, b"second", wins=8)
    promote(config)
    assert registry.pointer().version == "v0002"

    event = registry.rollback(by="cli")
    assert (event.kind, event.version, event.from_version, event.manual) == (
        "rolled_back",
        "v0001",
        "v0002",
        True,
    )
    assert registry.pointer().previous == [] and current_adapter(store) == store.uri(
        "registry/adapters/v0001"
    )
    assert version_statuses(registry.entries(), registry.pointer(), registry.events())["v0002"] == "retired"

    promoted = registry.promote("v0002", by="cli")  # better than the current one: no --force needed
    assert promoted.manual and promoted.by == "cli" and registry.pointer().previous == ["v0001"]
    with pytest.raises(RegistryError, match="already current"):
        registry.promote("v0002", by="cli")
    with pytest.raises(RegistryError, match=r"is worse than current v0002.*--force"):
        registry.promote("v0001", by="cli")
    with pytest.raises(RegistryError, match="no version 'v0009'"):
        registry.promote("v0009", by="cli")


def test_a_skipped_candidate_is_recorded_and_nothing_is_decided(run_root: str) -> None:
    store = ArtifactStore(run_root)
    skip_training(store, "distill")
    student(store, b"sft weights", wins=9, name="sft")
    manifest = promote(make_config(run_root))
    decision = manifest.extra["decision"]
    assert manifest.counts == {"registered": 1, "candidate": 0, "promoted": 0}
    assert decision["version"] is None and "training set is empty" in decision["reason"]
    assert [entry.student for entry in AdapterRegistry(store).entries()] == ["sft"]
    assert AdapterRegistry(store).pointer() is None


def test_a_stale_evaluation_or_a_disabled_gate_promotes_nothing(run_root: str) -> None:
    store = ArtifactStore(run_root)
    student(store, b"first", wins=9)
    train(store, "distill", b"retrained, not evaluated")
    manifest = promote(make_config(run_root))
    assert "evaluation is of an earlier training" in manifest.extra["decision"]["reason"]
    student(store, b"evaluated", wins=9)
    manifest = promote(make_config(run_root, **{"promotion.enabled": False}))
    assert (
        manifest.counts["registered"] == 1
        and manifest.extra["decision"]["reason"] == "promotion.enabled is false"
    )
    assert AdapterRegistry(store).pointer() is None


def test_the_gate_rules_without_a_registry() -> None:
    def summary(
        value: float | None, episodes: int = 10, tasks: str = "a", headline: str = "success"
    ) -> EvalSummary:
        return EvalSummary("distill", headline, value, None, None, episodes, 100.0, "test", tasks, "d")  # type: ignore[arg-type]

    from ragdistill.adapter_registry.entries import AdapterCopy, RegistryEntry

    def entry(version: str, evaluation: EvalSummary | None) -> RegistryEntry:
        copy = AdapterCopy("p", "sha256:x", {}, "s", "m")
        return RegistryEntry(
            version, "k", "distill", "2026-01-01T00:00:00+00:00", copy, {}, {}, {}, evaluation, {}, "c"
        )

    candidate = entry("v0002", summary(60.0, episodes=4))
    assert "fewer than promotion.min_episodes (5)" in decide(candidate, current=None, base=summary(10.0), margin=0,
                                                              min_episodes=5).reason  # fmt: skip
    assert (
        "base agent was not evaluated"
        in decide(candidate, current=None, base=None, margin=0, min_episodes=1).reason
    )
    assert decide(
        candidate, current=entry("v0001", summary(59.9)), base=None, margin=0, min_episodes=1
    ).promote
    assert not decide(
        candidate, current=entry("v0001", None), base=summary(0.0), margin=0, min_episodes=1
    ).promote
    webshop = entry("v0003", summary(61.0, headline="score"))
    verdict = decide(webshop, current=entry("v0002", summary(60.0)), base=None, margin=0, min_episodes=1)
    assert not verdict.promote and "reports success" in verdict.reason

    records = [
        EpisodeRecord.for_task(TaskInfo("webshop", "test", f"g{i}", "shop"), run_id="r", agent="act",
                               source="agent", model="m", prompt=[], score=score)
        for i, score in enumerate((0.5, 1.0))
    ]  # fmt: skip
    metrics = compute_metrics(records, invalid_observation="Invalid action!")
    score = EvalSummary.from_metrics(metrics, method="distill", headline="score", split="test",
                                     task_list_sha256="a", eval_digest="d")  # fmt: skip
    assert score.value == pytest.approx(75.0) and score.ci_low is None
    assert score.describe() == "score 75.0 on 2 test episodes"


def test_the_report_shows_the_decision(run_root: str) -> None:
    store = ArtifactStore(run_root)
    config = make_config(run_root, **{"evaluation.methods": ["base", "distill"]})
    student(store, b"first", wins=6)
    promote(config)
    stages = PipelineSettings.from_experiment(config)
    write_run_file(store, config.run.name, config.model_dump(mode="json"))
    settings = stages.report()
    run_report(stages.ctx, settings, upstream_inputs(store, settings))
    report = store.read_text("reports/report.md")
    assert "Promotion: v0001 promoted to current in the adapter registry" in report


def test_the_cli_lists_promotes_and_rolls_back(run_root: str) -> None:
    store = ArtifactStore(run_root)
    config = make_config(run_root)
    student(store, b"first", wins=5)
    promote(config)
    student(store, b"second", wins=4)
    promote(config)
    runner = CliRunner()
    root = store.local_path("")

    listed = runner.invoke(app, ["adapters", "list", root, "--events"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    (first,) = [line for line in lines if line.startswith("v0001")]
    (second,) = [line for line in lines if line.startswith("v0002")]
    assert "current" in first and "success 50.0% [" in first and "tokens/episode" in first
    assert "rejected" in second and "success 40.0%" in second
    assert any("rejected v0002 (from v0001) by pipeline" in line for line in lines)
    payload = json.loads(lines[-1])
    assert payload["current"] == "v0001" and [v["status"] for v in payload["versions"]] == [
        "current",
        "rejected",
    ]

    refused = runner.invoke(app, ["adapters", "promote", "v0002", root])
    assert isinstance(refused.exception, RegistryError) and "--force" in str(refused.exception)
    forced = runner.invoke(app, ["adapters", "promote", "v0002", root, "--force", "--reason", "canary"])
    assert forced.exit_code == 0 and json.loads(forced.output.splitlines()[-1])["current"] == "v0002"
    rolled = runner.invoke(app, ["adapters", "rollback", root])
    assert rolled.exit_code == 0 and "v0001 is current again (rolled back from v0002)" in rolled.output
    manual = [e for e in AdapterRegistry(store).events() if e.by == "cli"]
    assert [(e.kind, e.manual) for e in manual] == [("promoted", True), ("rolled_back", True)]
    assert manual[0].reason.startswith("canary (forced:")

    nowhere = runner.invoke(app, ["adapters", "list"])
    assert "which run root?" in str(nowhere.exception)


@pytest.mark.s3
def test_the_registry_works_on_an_s3_run_root(s3_root: str) -> None:
    store = ArtifactStore(s3_root)
    write_upstream(store)
    evaluate(store, "base", 3)
    config = make_config(s3_root)
    student(store, b"first", wins=5)
    assert promote(config).counts["promoted"] == 1
    student(store, b"second", wins=7)
    assert promote(config).counts["promoted"] == 1

    url = current_adapter(store)
    assert url == f"{s3_root}/registry/adapters/v0002"
    assert ArtifactStore(url).read_bytes("adapter_model.safetensors") == b"second"
    registry = AdapterRegistry(store)
    registry.rollback(by="cli")
    assert current_adapter(store) == f"{s3_root}/registry/adapters/v0001"
    assert [event.kind for event in registry.events()] == ["registered", "promoted", "registered", "promoted",
                                                           "rolled_back"]  # fmt: skip
    assert store.list("registry/lock", hidden=True) == [], "the registry lease is released"


def test_a_second_writer_waits_for_the_registry_lease_and_then_stops_with_the_holder(run_root: str) -> None:
    from ragdistill.adapter_registry.registry import LOCK_DIR
    from ragdistill.leases import LeaseHeldError, StageLease

    store = ArtifactStore(run_root)
    student(store, b"first", wins=5)
    promote(make_config(run_root))
    student(store, b"second", wins=8)
    promote(make_config(run_root))
    impatient = AdapterRegistry(store, label="impatient", lease_wait_s=0.0)
    with StageLease(store, LOCK_DIR, label="another run"), pytest.raises(LeaseHeldError, match="another run"):
        impatient.rollback(by="cli")
    assert impatient.pointer().version == "v0002", "the pointer did not move"
    impatient.rollback(by="cli")
    assert impatient.pointer().version == "v0001"


def truncated(text: str) -> str:
    return text[: len(text) // 2]


def with_field(field: str, value: object) -> object:
    def change(text: str) -> str:
        return json.dumps({**json.loads(text), field: value})

    return change


MALFORMED_REGISTRY_FILES = {
    "a version named vX": ("versions/v0001.json", with_field("version", "vX")),
    "an entry with an extra field": ("versions/v0001.json", with_field("comment", "edited by hand")),
    "an entry that is a JSON list": ("versions/v0001.json", lambda text: f"[{text}]"),
    "a truncated entry": ("versions/v0001.json", truncated),
    "an entry without its adapter": ("versions/v0001.json", lambda text: json.dumps({**json.loads(text), "adapter": None})),
    "a pointer to version vX": ("current.json", with_field("version", "vX")),
    "a pointer that is a JSON list": ("current.json", lambda text: "[]"),
    "a truncated pointer": ("current.json", truncated),
    "an event with an extra field": ("events/000001.json", with_field("note", "edited by hand")),
    "an event of an unknown kind": ("events/000002.json", with_field("kind", "deleted")),
    "a truncated event": ("events/000001.json", truncated),
}  # fmt: skip
READS = {
    "versions/v0001.json": ("list", "promote", "rollback"),
    "current.json": ("list", "promote", "rollback"),
    "events/000001.json": ("list",),
    "events/000002.json": ("list",),
}
"""Which `ragdistill adapters` commands read each file (promote and rollback never read old events)."""


@pytest.fixture
def promoted_twice(run_root: str) -> ArtifactStore:
    """v0001 promoted, then the better v0002: v0002 is current and a rollback returns to v0001."""
    store = ArtifactStore(run_root)
    student(store, b"first", wins=5)
    promote(make_config(run_root))
    student(store, b"second", wins=8)
    promote(make_config(run_root))
    pointer = AdapterRegistry(store).pointer()
    assert pointer is not None and (pointer.version, pointer.previous) == ("v0002", ["v0001"])
    return store


@pytest.mark.parametrize(
    ("case", "command"),
    [(case, command) for case, (name, _) in MALFORMED_REGISTRY_FILES.items() for command in READS[name]],
)
def test_a_malformed_registry_file_stops_each_command_with_one_line_naming_it(
    promoted_twice: ArtifactStore, case: str, command: str
) -> None:
    import subprocess
    import sys

    name, change = MALFORMED_REGISTRY_FILES[case]
    store, relative = promoted_twice, f"registry/{name}"
    store.write_text(relative, change(store.read_text(relative)))
    before = {path: store.read_bytes(path) for path in store.list("registry")}
    arguments = {"list": ["list"], "promote": ["promote", "v0001", "--force"], "rollback": ["rollback"]}[
        command
    ]
    done = subprocess.run(
        [sys.executable, "-m", "ragdistill.cli", "adapters", *arguments, store.local_path("")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"error: {store.uri(relative)} "), done.stderr
    assert "move it out of the registry" in done.stderr
    assert {path: store.read_bytes(path) for path in store.list("registry")} == before, "nothing was changed"
