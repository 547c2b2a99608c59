"""Nothing outside the run root is read, written or deleted (issue 19, item 1).

Each case of the issue is tried as a careless or hostile user would: a stage name with ``..`` on the
command line and as a flow parameter, a symbolic link out of the run root, a manifest resealed to list a
file outside it or ``/dev/zero``, a listed file bigger than recorded, a registry entry whose adapter lies
outside. A property test then throws random stage names and manifest paths (``..``, absolute paths,
links, Unicode look-alikes) at the store, the stage lifecycle and the manifest readers while an audit
hook watches every file the process opens, writes, renames or deletes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.adapter_registry import AdapterRegistry, current_adapter
from ragdistill.adapter_registry.files import RegistryFileError
from ragdistill.config.run_context import RunContext
from ragdistill.config.stages import PipelineSettings
from ragdistill.errors import UserFacingError
from ragdistill.layout import ROLLOUT_OUTPUTS, rollout_prefix
from ragdistill.stages.lifecycle import StageIdentity, StageRun, upstream_inputs, verified_input
from ragdistill.stages.mining import run_mining
from ragdistill.store import (
    ArtifactError,
    ArtifactStore,
    ContainmentError,
    read_manifest,
    read_records,
    verify_manifest,
)
from test_stages import PolicyDouble, counter_config, rollout

REPO = Path(__file__).resolve().parents[1]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links not followed) and its bytes: what must not change."""
    found: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def victim_folder(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("the user's own file\n")
    (folder / "sub" / "b.txt").write_text("another one\n")
    return folder


# Stage names on the command line, as flow parameters and in the settings models


@pytest.mark.parametrize("stage", ["../../victim", ".."])
def test_a_stage_name_that_leaves_the_run_root_is_refused_in_one_line_and_nothing_is_touched(
    tmp_path: Path, stage: str
) -> None:
    """``ragdistill rollout --stage ../../victim`` deleted every file of ``victim/``; ``--stage ..`` took a
    finished run root from 106 files to 3."""
    victim = victim_folder(tmp_path / "victim")
    root = tmp_path / "run"
    (root / "registry").mkdir(parents=True)
    (root / "registry" / "current.json").write_text('{"version": "v0001"}')
    config = yaml.safe_load((REPO / "configs" / "demo-alfworld.yaml").read_text())
    config["run"]["run_root"] = f"file://{root}"
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    before_victim, before_root = tree(victim), tree(root)

    result = subprocess.run(
        [sys.executable, "-m", "ragdistill.cli", "rollout", "-c", str(path), "--stage", stage],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --stage {stage!r} is not a name"), result.stderr
    assert tree(victim) == before_victim and tree(root) == before_root


def test_the_rollout_flow_and_the_settings_refuse_a_stage_name_that_is_a_path() -> None:
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.callables import parameter_schema

    from ragdistill.flows.standalone import rollout_flow

    schema = parameter_schema(rollout_flow).properties["stage"]
    assert schema["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._-]*$", "a deployment's run form refuses it too"
    with pytest.raises(ParameterTypeError, match="stage"):
        rollout_flow.validate_parameters({"config_name": "demo-alfworld", "stage": "../../victim"})
    stages = PipelineSettings.from_experiment(counter_config(Path("/nonexistent")))
    for name in ("../../victim", "..", "/etc", "a/b", ""):
        with pytest.raises(ValueError):
            stages.rollout(name)
        with pytest.raises(ValueError):
            rollout_prefix(name)
    with pytest.raises(ValueError, match="not a name"):
        type(stages.mining).model_validate({**stages.mining.model_dump(), "source": "rollouts/../../x"})


# Symbolic links and manifests


def test_a_stage_folder_linked_out_of_the_run_root_is_refused_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    """A symlinked ``index/`` or ``reports/`` made the stage delete and write outside the root."""
    victim = victim_folder(tmp_path / "victim")
    root = tmp_path / "run"
    (root / "rollouts").mkdir(parents=True)
    (root / "reports").symlink_to(victim)
    (root / "rollouts" / "base").symlink_to(victim)
    store = ArtifactStore(str(root))
    ctx = RunContext(run_root=store.root_url, run_name="t")
    identity = StageIdentity(stage="reports", settings={}, code="c")
    for folder in ("reports", "rollouts/base"):
        refused = rf"{folder} leads to {victim} \(a symbolic link\), outside the run root"
        with (
            pytest.raises(ContainmentError, match=refused),
            StageRun(store, folder, identity, ctx, label="t", outputs=("*",)) as run,
        ):
            run.clear()
        with pytest.raises(ContainmentError):
            store.delete(folder + "/a.txt")
        with pytest.raises(ContainmentError):
            store.read_bytes(folder + "/a.txt")
    assert store.list("") == [] and tree(victim) == victim_folder_contents()


def victim_folder_contents() -> dict[str, str | bytes]:
    return {"a.txt": b"the user's own file\n", "sub/b.txt": b"another one\n"}


def reseal(store: ArtifactStore, folder: str, files: dict[str, bytes]) -> None:
    """Rewrite ``folder``'s manifest to list ``files`` (names as given) with matching sizes and sha256."""
    manifest = store.read_json(f"{folder}/manifest.json")
    manifest["files"] = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in files.items()
    }
    store.write_json(f"{folder}/manifest.json", manifest)


def test_a_resealed_manifest_listing_a_file_outside_is_refused_naming_it(tmp_path: Path) -> None:
    """A manifest resealed to list ``../../../evil/x/shard-00000.jsonl`` fed that file to the next stage."""
    config = counter_config(tmp_path)
    rollout(config, PolicyDouble("wait"))
    store = ArtifactStore(config.run.run_root)
    evil = tmp_path / "evil" / "x"
    evil.mkdir(parents=True)
    planted = b'{"task_id": "evil"}\n'
    (evil / "shard-00000.jsonl").write_bytes(planted)
    name = "../../../evil/x/shard-00000.jsonl"
    reseal(store, "rollouts/base", {name: planted})

    with audited(tmp_path / "evil") as touched:
        with pytest.raises(
            ArtifactError, match=r"lists '\.\./\.\./\.\./evil/x/shard-00000\.jsonl', which is refused"
        ):
            read_manifest(store, "rollouts/base")
        stages = PipelineSettings.from_experiment(config)
        inputs = {"rollouts/base": "handed-before-the-edit"}
        with pytest.raises(ArtifactError, match=r"evil/x/shard-00000\.jsonl.*ragdistill rollout -c CONFIG"):
            run_mining(stages.ctx, stages.mining, inputs, backend=PolicyDouble())
    assert touched == [], "the planted file was never opened"


def test_a_manifest_listing_dev_zero_or_a_link_to_it_is_refused_at_once(tmp_path: Path) -> None:
    """A manifest listing ``/dev/zero`` made ``index`` read until MemoryError."""
    config = counter_config(tmp_path)
    rollout(config, PolicyDouble("wait"))
    store = ArtifactStore(config.run.run_root)
    reseal(store, "rollouts/base", {"/dev/zero": b""})
    with pytest.raises(ArtifactError, match=r"lists '/dev/zero', which is refused: an absolute path"):
        verified_input(store, "rollouts/base")

    (Path(store.root) / "rollouts" / "base" / "zero.jsonl").symlink_to("/dev/zero")
    reseal(store, "rollouts/base", {"zero.jsonl": b"x" * 10})
    with pytest.raises(ArtifactError, match=r"zero\.jsonl leads to /dev/zero \(a symbolic link\), outside"):
        verify_manifest(store, "rollouts/base")


def read_bytes_of_this_process() -> int:
    """Bytes this process has read through read(2) and friends so far (Linux ``/proc/self/io``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_listed_file_is_never_read_past_its_recorded_size(tmp_path: Path) -> None:
    config = counter_config(tmp_path)
    manifest = rollout(config, PolicyDouble("wait"))
    store = ArtifactStore(config.run.run_root)
    (shard,) = [name for name in manifest.files if name.startswith("shard-")]
    with open(Path(store.root) / "rollouts" / "base" / shard, "r+b") as handle:
        handle.truncate(512 << 20)  # 512 MiB, sparse: the recorded size is a few kB
    before = read_bytes_of_this_process()
    with pytest.raises(ArtifactError, match=rf"{shard} \(sha256 .*more than the \d+ bytes it records"):
        verify_manifest(store, "rollouts/base")
    with pytest.raises(ArtifactError, match=rf"{shard} is not the file its manifest lists \(more than"):
        list(read_records(store, "rollouts/base", manifest))
    assert read_bytes_of_this_process() - before < 16 << 20, "reading stopped at the recorded size"


# The registry


def test_a_registry_version_whose_adapter_lies_outside_is_never_listed_promoted_or_served(
    tmp_path: Path,
) -> None:
    """A version whose ``adapter.path`` is ``../evil_adapter`` was listed, promoted without --force and
    served as current."""
    store = ArtifactStore(str(tmp_path / "run"))
    weights = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"weights"}
    for name, data in weights.items():
        store.write_bytes(f"adapters/sft/adapter/{name}", data)
    files = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        for name, data in weights.items()
    }
    registry = AdapterRegistry(store)
    entry, _ = registry.register(
        student="sft", source_folder="adapters/sft/adapter", files=files, training_manifest="m",
        base_model={}, lineage={}, training={}, evaluation=None, run={"name": "t"}, by="cli",
    )  # fmt: skip
    evil = tmp_path / "evil_adapter"
    evil.mkdir()
    for name, data in weights.items():
        (evil / name).write_bytes(data)
    path = f"registry/versions/{entry.version}.json"
    edited = store.read_json(path)
    edited["adapter"]["path"] = "../evil_adapter"
    store.write_json(path, edited)

    refused = r"v0001\.json is refused: its adapter path '\.\./evil_adapter' is not the registry's own copy"
    with pytest.raises(RegistryFileError, match=refused):
        registry.entries()
    with pytest.raises(RegistryFileError, match=refused):
        registry.promote(entry.version, by="cli")
    store.write_json("registry/current.json", {"version": entry.version, "previous": []})
    with pytest.raises(RegistryFileError, match=refused):
        current_adapter(store)


# The property: nothing outside the run root is read, written or deleted

WATCHED_EVENTS = {
    "open": (0,),
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.listdir": (0,),
    "os.scandir": (0,),
    "shutil.rmtree": (0,),
    "os.symlink": (1,),
}
_WATCH = threading.local()
_OUTSIDE: list[tuple[str, list[str]]] = []
"""(the real path of the folder that must stay untouched, the accesses seen there) while a test audits."""


def _audit(event: str, args: tuple) -> None:
    if not _OUTSIDE or event not in WATCHED_EVENTS or getattr(_WATCH, "busy", False):
        return
    _WATCH.busy = True
    try:
        outside, touched = _OUTSIDE[-1]
        for index in WATCHED_EVENTS[event]:
            value = args[index] if index < len(args) else None
            if isinstance(value, bytes):
                value = os.fsdecode(value)
            if isinstance(value, str | os.PathLike):
                real = os.path.realpath(os.fspath(value))
                if real == outside or real.startswith(outside + os.sep):
                    touched.append(f"{event} {value}")
    finally:
        _WATCH.busy = False


sys.addaudithook(_audit)


@contextmanager
def audited(outside: Path) -> Iterator[list[str]]:
    """Every file access of this process that lands under ``outside`` while the block runs."""
    touched: list[str] = []
    _OUTSIDE.append((os.path.realpath(outside), touched))
    try:
        yield touched
    finally:
        _OUTSIDE.pop()


LOOKALIKES = ["..", "../..", "../outside", "a/../../outside", "/", "/tmp", "", ".", "．．", "‥", "∕..",
              "..\\outside", "link", "link/a.txt", "rollouts/linked", "secret", "ok-name", "a\x00b", "%2e%2e"]  # fmt: skip
NAMES = st.one_of(
    st.sampled_from(LOOKALIKES),
    st.lists(
        st.sampled_from(["..", ".", "link", "a", "．", "‥", "/", "outside", "secret"]), min_size=1, max_size=5
    ).map("/".join),
    st.text(alphabet=st.sampled_from(list("./\\a-_．‥∕⁄é")), min_size=1, max_size=10),
)


def _attempt(action: Callable[[], object]) -> None:
    """Try ``action``; refusing it (a user-facing error, a bad name, an OS error) is fine."""
    with contextlib.suppress(UserFacingError, ValueError, OSError):
        action()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stage=NAMES, listed=NAMES)
def test_no_stage_name_or_manifest_path_reaches_outside_the_run_root(stage: str, listed: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        outside = victim_folder(base / "outside")
        (outside / "secret").write_text("secret")
        root = base / "run"
        (root / "rollouts" / "base").mkdir(parents=True)
        (root / "link").symlink_to(outside)
        (root / "rollouts" / "linked").symlink_to(outside)
        (root / "secret").symlink_to(outside / "secret")
        before = tree(outside)
        store = ArtifactStore(str(root))
        ctx = RunContext(run_root=store.root_url, run_name="property")
        identity = StageIdentity(stage="x", settings={"stage": stage}, code="c")
        secret = b"secret"
        with audited(outside) as touched:
            _attempt(lambda: rollout_prefix(stage))
            for folder in (f"rollouts/{stage}", stage):
                _attempt(lambda folder=folder: _run_stage(store, folder, identity, ctx))
                _attempt(lambda folder=folder: store.write_bytes(f"{folder}/shard-00000.jsonl", b"{}\n"))
                _attempt(lambda folder=folder: store.read_bytes(folder))
                _attempt(lambda folder=folder: store.list(folder))
                _attempt(lambda folder=folder: store.delete(folder))
                _attempt(lambda folder=folder: store.child(folder).write_bytes("x", b"x"))
            store.write_json(
                "rollouts/base/manifest.json",
                {"version": 2, "stage": "rollouts/base", "identity": "i", "files": {
                    listed: {"sha256": hashlib.sha256(secret).hexdigest(), "bytes": len(secret)}}},
            )  # fmt: skip
            _attempt(lambda: verify_manifest(store, "rollouts/base"))
            _attempt(
                lambda: list(read_records(store, "rollouts/base", read_manifest(store, "rollouts/base")))
            )
            _attempt(
                lambda: upstream_inputs(store, PipelineSettings.from_experiment(counter_config(base)).mining)
            )
            _attempt(lambda: _run_stage(store, "rollouts/base", identity, ctx))
        assert touched == [], f"stage {stage!r}, manifest path {listed!r}: {touched}"
        assert tree(outside) == before


def _run_stage(store: ArtifactStore, folder: str, identity: StageIdentity, ctx: RunContext) -> None:
    with StageRun(store, folder, identity, ctx, label="property", outputs=ROLLOUT_OUTPUTS) as run:
        store.write_bytes(f"{folder}/shard-00000.jsonl", b'{"task_id": "t"}\n')
        run.clear()
        store.write_bytes(f"{folder}/shard-00000.jsonl", b'{"task_id": "t"}\n')
        run.finish()


def test_the_audit_hook_sees_an_access_outside(tmp_path: Path) -> None:
    """The property test's witness works: a plain open through a link out of the root is seen."""
    outside = victim_folder(tmp_path / "outside")
    (tmp_path / "link").symlink_to(outside)
    with audited(outside) as touched:
        (tmp_path / "link" / "a.txt").read_text()
        json.dumps({})
    assert touched and touched[0].startswith("open ")
