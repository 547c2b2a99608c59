"""A stage deletes only what a stage wrote, and a run root holds one experiment (issue 19, items 2 and 3).

A user's file in a stage folder stops the stage with its name and what to do, and survives it; a folder
no stage made is never cleared; clearing removes the stage's own outputs one file at a time. Another
experiment (another run name, another environment) on a run root stops before anything is written,
naming both; the same experiment with a changed setting, a retrain generation and an explicit takeover
go on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.cli import app
from ragdistill.config import ExperimentConfig, validate_config, with_overrides
from ragdistill.config.stages import PipelineSettings, experiment_record
from ragdistill.stages.collect import next_batch, run_collect
from ragdistill.stages.experiment import EXPERIMENT_FILE, ExperimentConflict, claim_experiment
from ragdistill.stages.lifecycle import StageError, upstream_inputs
from ragdistill.stages.mining import run_mining
from ragdistill.stages.report import write_run_file
from ragdistill.stages.retrain import generation_root, prepare_generation
from ragdistill.stages.rollout import run_rollout
from ragdistill.store import ArtifactStore, Manifest, write_manifest
from test_containment import tree
from test_stages import PolicyDouble, counter_config

REPO = Path(__file__).resolve().parents[1]


def demo_yaml(tmp_path: Path, name: str, **changes: Any) -> Path:
    """The demo config with its run root in ``tmp_path/run`` and dotted ``changes``, written as ``name``."""
    data = yaml.safe_load((REPO / "configs" / "demo-alfworld.yaml").read_text())
    data["run"]["run_root"] = f"file://{tmp_path}/run"
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def checked_rollout(config: ExperimentConfig, backend: PolicyDouble, stage: str = "base") -> Manifest:
    """Stage A as the CLI and the flows run it: checking and recording the run root's experiment."""
    stages = PipelineSettings.from_experiment(config, experiment_check=True)
    return run_rollout(stages.ctx, stages.rollout(stage), {}, backend=backend)


# A stage deletes only what a stage wrote


def test_a_users_note_in_a_report_folder_stops_the_report_and_survives_it(tmp_path: Path) -> None:
    """``reports/q3/notes.md`` in a run root whose report had not run was wiped by ``ragdistill report``."""
    config = validate_config(yaml.safe_load(demo_yaml(tmp_path, "demo.yaml").read_text()), source="demo")
    store = ArtifactStore(config.run.run_root)
    write_run_file(store, "demo-alfworld", config.model_dump(mode="json"))
    note = Path(store.root) / "reports" / "q3" / "notes.md"
    note.parent.mkdir(parents=True)
    note.write_text("Q3 numbers, keep\n")

    def report(*options: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "ragdistill.cli", "report", store.root_url, *options]
        return subprocess.run(command, capture_output=True, text=True, timeout=180)

    refused = report()
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "reports holds 1 file(s) ragdistill did not write: " in line and "reports/q3/notes.md" in line
    assert "move them out of this folder, or run again with --force" in line
    assert note.read_text() == "Q3 numbers, keep\n" and not store.exists("reports/report.md")

    forced = report("--force")
    assert forced.returncode == 0, forced.stderr
    assert store.exists("reports/report.md") and note.read_text() == "Q3 numbers, keep\n"
    assert "reports/q3/notes.md" not in store.read_json("reports/manifest.json")["files"]


def test_a_folder_no_stage_made_is_never_cleared(tmp_path: Path) -> None:
    """A folder with files but no identity file was taken for a stale stage and cleared recursively."""
    config = counter_config(tmp_path)
    folder = Path(config.run.run_root.removeprefix("file://")) / "rollouts" / "victim"
    (folder / "sub").mkdir(parents=True)
    (folder / "shard-00000.jsonl").write_text("the user's own, named like a shard\n")
    (folder / "sub" / "keep.txt").write_text("keep\n")
    before = tree(folder)
    stages = PipelineSettings.from_experiment(config)
    with pytest.raises(
        StageError, match=r"rollouts/victim holds 2 file\(s\) ragdistill did not write: .*keep\.txt"
    ):
        run_rollout(stages.ctx, stages.rollout("victim"), {}, backend=PolicyDouble("inc"))
    assert tree(folder) == before


def test_changed_settings_clear_only_the_stages_own_outputs_and_a_users_file_stops_it(tmp_path: Path) -> None:
    config = counter_config(tmp_path)
    first = checked_rollout(config, PolicyDouble("inc"))
    store = ArtifactStore(config.run.run_root)
    store.write_text("rollouts/base/notes/why.md", "my analysis\n")
    changed = with_overrides(config, {"agent.max_calls": 3})
    with pytest.raises(StageError, match=r"rollouts/base/notes/why\.md.*--force \(run\.allow_unknown_files"):
        checked_rollout(changed, PolicyDouble("wait"))
    assert all(store.exists(f"rollouts/base/{name}") for name in first.files), "nothing was cleared"
    assert store.read_json("rollouts/base/manifest.json")["identity"] == first.identity

    forced = checked_rollout(with_overrides(changed, {"run.allow_unknown_files": True}), PolicyDouble("wait"))
    assert forced.identity != first.identity and forced.counts["won"] == 0
    assert store.read_text("rollouts/base/notes/why.md") == "my analysis\n"
    assert "notes/why.md" not in forced.files and store.exists("rollouts/base/identity.json")


def test_a_stage_that_clears_its_folder_keeps_its_identity_and_removes_only_its_outputs(
    tmp_path: Path,
) -> None:
    from ragdistill.config.run_context import RunContext
    from ragdistill.stages.lifecycle import StageIdentity, StageRun

    store = ArtifactStore(str(tmp_path / "run"))
    ctx = RunContext(run_root=store.root_url, run_name="t")
    outputs = ("report.md", "figures/**")
    with StageRun(
        store, "reports", StageIdentity("reports", {"a": 1}, "c"), ctx, label="t", outputs=outputs
    ) as run:
        store.write_text("reports/report.md", "one")
        store.write_text("reports/figures/deep/a.png", "png")
        run.finish()
    store.write_text("reports/.hidden-by-the-user", "never listed, never removed")
    with StageRun(
        store, "reports", StageIdentity("reports", {"a": 2}, "c"), ctx, label="t", outputs=outputs
    ) as run:
        assert store.list("reports") == ["reports/identity.json"], "its outputs and run statistics went"
        run.clear()
        assert store.exists("reports/identity.json") and store.exists("reports/.hidden-by-the-user")
        assert not (tmp_path / "run" / "reports" / "figures").exists(), "emptied folders went too"


# One experiment per run root


def fake_datasets(store: ArtifactStore) -> dict[str, bytes]:
    """Both training sets of a finished experiment (their files, identity and manifest)."""
    for name in ("sft", "distill"):
        store.write_bytes(f"datasets/{name}/data.parquet", f"{name} rows".encode())
        store.write_json(f"datasets/{name}/identity.json", {"stage": f"datasets/{name}", "resume_key": "r"})
        write_manifest(store, f"datasets/{name}", f"datasets/{name}", "i", ["data.parquet"])
    return tree(Path(store.root))


def test_another_experiment_on_the_same_run_root_is_refused_naming_both(tmp_path: Path) -> None:
    """Another ``run.name`` with another ``training.max_seq_len`` cleared both datasets of the demo root
    and replaced their manifests."""
    first = demo_yaml(tmp_path, "first.yaml")
    other = demo_yaml(tmp_path, "other.yaml", **{"run.name": "other-run", "training.max_seq_len": 512})
    store = ArtifactStore(f"file://{tmp_path}/run")
    claim_experiment(store, experiment_record(validate_config(yaml.safe_load(first.read_text()), source="f")))
    before = fake_datasets(store)

    result = CliRunner().invoke(app, ["build-datasets", "-c", str(other)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "holds the experiment 'demo-alfworld' on alfworld (settings " in message
    assert "and this run is 'other-run' on alfworld (settings " in message
    assert "--run-root" in message and "--replace-experiment" in message
    assert tree(Path(store.root)) == before, "nothing was cleared or written"

    from ragdistill.flows.parameters import experiment_config

    with pytest.raises(ExperimentConflict, match="'other-run' on alfworld"):
        experiment_config(str(other))
    config = validate_config(yaml.safe_load(other.read_text()), source="o")
    with pytest.raises(ExperimentConflict):
        checked_rollout(
            with_overrides(config, {"env.name": "counter-double", "warm_start.enabled": False}),
            PolicyDouble(),
        )
    assert tree(Path(store.root)) == before


def test_a_run_root_from_before_experiment_records_is_judged_by_its_run_file(tmp_path: Path) -> None:
    config = counter_config(tmp_path)
    store = ArtifactStore(config.run.run_root)
    write_run_file(store, "counter", config.model_dump(mode="json"))
    with pytest.raises(ExperimentConflict, match="holds the experiment 'demo' on counter-double"):
        checked_rollout(with_overrides(config, {"run.name": "renamed"}), PolicyDouble())
    assert store.list("") == ["run.json"]


def test_the_same_experiment_with_changed_settings_and_an_explicit_takeover_go_on(tmp_path: Path) -> None:
    config = counter_config(tmp_path)
    store = ArtifactStore(config.run.run_root)
    checked_rollout(config, PolicyDouble("inc"))
    recorded = store.read_json(EXPERIMENT_FILE)
    changed = with_overrides(config, {"agent.max_calls": 3, "training.max_seq_len": 512})
    assert checked_rollout(changed, PolicyDouble("wait")).counts["won"] == 0, (
        "a setting changes, not the experiment"
    )
    assert store.read_json(EXPERIMENT_FILE)["settings"] != recorded["settings"]

    renamed = with_overrides(config, {"run.name": "takeover"})
    with pytest.raises(ExperimentConflict):
        checked_rollout(renamed, PolicyDouble("inc"))
    taken = checked_rollout(with_overrides(renamed, {"run.replace_experiment": True}), PolicyDouble("inc"))
    assert taken.counts["won"] == taken.counts["episodes"] > 0
    assert store.read_json(EXPERIMENT_FILE)["run_name"] == "takeover"


def test_a_retrain_generation_is_the_same_experiment(tmp_path: Path) -> None:
    overrides = {
        "env.limit": 2,
        "env.workers": 1,
        "env.split": "test",
        "collect.split": "test",
        "collect.batch_size": 2,
    }
    config = counter_config(tmp_path, **overrides)
    stages = PipelineSettings.from_experiment(config, experiment_check=True)
    ctx = stages.ctx
    checked_rollout(config, PolicyDouble("wait"))
    run_mining(
        ctx,
        stages.mining,
        upstream_inputs(ArtifactStore(ctx.run_root), stages.mining),
        backend=PolicyDouble(),
    )
    batch = next_batch(ArtifactStore(ctx.run_root))
    collected, _ = run_collect(ctx, stages.collect(batch), backend=PolicyDouble("wait"))
    manifest = prepare_generation(ctx, 1, [collected.stage])
    assert manifest.counts["episodes"] == 4

    generation = with_overrides(config, {"run.run_root": generation_root(config.run.run_root, 1)})
    generation_stages = PipelineSettings.from_experiment(generation, experiment_check=True)
    settings = generation_stages.mining
    inputs = upstream_inputs(ArtifactStore(generation.run.run_root), settings)
    mined = run_mining(generation_stages.ctx, settings, inputs, backend=PolicyDouble())
    assert mined.counts["bank_size"] >= 1
    parent, child = ArtifactStore(config.run.run_root), ArtifactStore(generation.run.run_root)
    assert (
        parent.read_json(EXPERIMENT_FILE)["run_name"]
        == child.read_json(EXPERIMENT_FILE)["run_name"]
        == "demo"
    )
