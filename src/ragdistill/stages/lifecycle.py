"""The life of one stage folder: hold it, decide whether its outputs are current, start or resume it,
and end with its manifest.

Every stage function runs inside :class:`StageRun`::

    with StageRun(store, "index", identity, ctx, label=ctx.run_name, outputs=OUTPUTS) as run:
        if run.current is not None:      # outputs exist, unchanged, made by this identity
            return run.current
        ...                              # write outputs
        return run.finish(files, counts=...)

On entry the run checks that the run root is writable (``store.check_writable``: a missing bucket or
refused credentials stop it before any work) and that it holds this run's experiment
(``stages.experiment``), takes the folder's lease (one writer per folder), then:

- when the manifest matches the identity and every file it lists is unchanged, ``run.current`` holds it
  and nothing is written;
- otherwise the manifest is removed first (the folder is now stale: downstream stages refuse it until
  :meth:`StageRun.finish` writes the new manifest, last) and the folder is *claimed*: work left by a run
  of the same settings, inputs and code is kept and resumed, anything else is cleared (with a log line
  saying what changed), so one folder never mixes two experiments.

A stage deletes only what a stage wrote. Its *outputs* are the patterns of the files it writes in its
folder (``shard-*.jsonl``, ``adapter/**``); a folder counts as the project's only when its identity file
or its manifest says so, and clearing it removes only its known outputs, the files its last manifest
listed and its run statistics, one file at a time. Any other file in the folder (a user's notes, a
folder that was never a stage's) stops the stage with an error naming them, before anything is
removed; ``run.allow_unknown_files`` (``--force``) runs it anyway and leaves them where they are.

``identity.growable`` holds what may change while finished work is kept: a rollout's task list (a
larger ``env.limit`` plays only the new tasks), the episodes mining reads (new failures are mined,
earlier answers reused).

A stage's identity is built from its settings model by :func:`stage_identity`: the whole model (so a
setting the stage reads is in its identity by construction), the digests of its inputs, the code
fingerprint of its module and the versions of the libraries whose upgrade changes its output.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ragdistill.config.models import BackendConfig, RoleConfig
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import Inputs, RoleSettings, StageSettings
from ragdistill.errors import UserFacingError
from ragdistill.identity import code_fingerprint, digest, library_versions
from ragdistill.layout import rerun_command
from ragdistill.leases import StageLease
from ragdistill.paths import cached_folder, default_cache_root
from ragdistill.stages.experiment import claim_experiment
from ragdistill.store import (
    MANIFEST_NAME,
    RUN_STATS_NAME,
    ArtifactError,
    ArtifactStore,
    Manifest,
    check_writable,
    manifest_problems,
    read_listed,
    read_manifest,
    verify_manifest,
    write_manifest,
)
from ragdistill.store_paths import matches_output

log = logging.getLogger("ragdistill.stages")

IDENTITY_NAME = "identity.json"
BOOKKEEPING = frozenset({MANIFEST_NAME, RUN_STATS_NAME, IDENTITY_NAME})
INPUT_CACHE_SUBDIR = "inputs"


class StageError(UserFacingError, RuntimeError):
    """A stage cannot run on what the previous stages produced; the message says what to do."""


@dataclass(frozen=True)
class StageIdentity:
    """What a stage's output is a function of (``ragdistill.identity`` explains each part)."""

    stage: str
    settings: dict[str, Any]
    code: str
    inputs: dict[str, str] = field(default_factory=dict)
    growable: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Equal keys mean equal outputs: the manifest records it, Prefect's cache keys on it."""
        return digest(asdict(self))

    @property
    def resume_key(self) -> str:
        """Equal resume keys mean finished work in the folder may be kept."""
        return digest(
            {
                "stage": self.stage,
                "settings": self.settings,
                "code": self.code,
                "inputs": self.inputs,
                "libraries": self.libraries,
            }
        )

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """The parts that differ from an identity recorded earlier, named for a log line."""
        changed: list[str] = []
        for part in ("settings", "code", "inputs", "libraries"):
            old, new = recorded.get(part), getattr(self, part)
            if old == new:
                continue
            if isinstance(old, dict) and isinstance(new, dict):
                keys = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
                changed.append(f"{part} ({', '.join(keys)})")
            else:
                changed.append(part)
        return changed


def stage_identity(
    settings: StageSettings,
    inputs: Inputs,
    *,
    libraries: Iterable[str] = (),
    growable: dict[str, Any] | None = None,
) -> StageIdentity:
    """The identity of a stage run under ``settings`` on ``inputs`` (see the module docstring). Fields in
    the settings model's ``GROWABLE`` and the ``growable`` given may change while finished work is kept."""
    dumped = settings.model_dump(mode="json")
    return StageIdentity(
        stage=settings.stage_dir(),
        settings={key: value for key, value in dumped.items() if key not in settings.GROWABLE},
        code=code_fingerprint(settings.CODE),
        inputs=dict(inputs),
        growable={**{key: dumped[key] for key in sorted(settings.GROWABLE)}, **(growable or {})},
        libraries=library_versions(*libraries),
    )


def role_config(ctx: RunContext, role: RoleSettings, **backend_update: Any) -> RoleConfig:
    """The role as the inference layer loads it: its settings (what it generates, part of the stage's
    identity) and the engine ``ctx`` loads it on (how, never hashed), updated with ``backend_update``.
    Here, with what every stage shares, so that a stage loading a model imports no rollout code (whose
    edits would then re-run it)."""
    backend = ctx.backends.get(role.name) or BackendConfig(kind=role.backend)
    if backend_update:
        backend = backend.model_copy(update=backend_update)
    return RoleConfig(model=role.model, backend=backend, sampling=role.sampling)


def current_manifest(store: ArtifactStore, stage_dir: str, identity: StageIdentity) -> Manifest | None:
    """The stage's manifest when its outputs are current: same identity, every listed file unchanged,
    and no episode waiting to be played again after an infrastructure fault."""
    try:
        manifest = read_manifest(store, stage_dir)
    except ArtifactError:
        return None
    if manifest.identity != identity.key or manifest.counts.get("transient_errors", 0):
        return None
    return None if manifest_problems(store, stage_dir, manifest) else manifest


def rerun_remedy(stage_dir: str) -> str:
    return f"run `{rerun_command(stage_dir)}`"


def recorded_input_digest(store: ArtifactStore, stage_dir: str) -> str:
    """The content digest an upstream manifest records, without re-hashing its files (for cache keys;
    the stage itself verifies its inputs before reading them)."""
    return read_manifest(store, stage_dir, rerun_remedy(stage_dir)).digest


def recorded_inputs(store: ArtifactStore, folders: Iterable[str], *, required: bool = True) -> Inputs:
    """The digests the upstream ``folders`` record now: what a stage run on its own (the CLI, one stage's
    flow) is handed as its inputs. ``required``: a missing one stops with the command that builds it;
    otherwise only the finished ones are returned (the report and promotion read what exists)."""
    found: Inputs = {}
    for folder in folders:
        try:
            found[folder] = recorded_input_digest(store, folder)
        except ArtifactError:
            if required:
                raise
    return found


def handed(inputs: Inputs, *folders: str) -> Inputs:
    """The digests of ``folders`` out of the ``inputs`` a stage was handed; a folder without one has not
    finished, and the stage stops with the command that builds it."""
    missing = [folder for folder in folders if folder not in inputs]
    if missing:
        raise StageError(
            f"this stage reads {', '.join(missing)}, which has no finished manifest (no content digest was "
            f"handed for it): {rerun_remedy(missing[0])} first"
        )
    return {folder: inputs[folder] for folder in folders}


def stage_inputs(settings: StageSettings, inputs: Inputs) -> Inputs:
    """The digests among ``inputs`` of the folders ``settings`` reads: every one of them (else the stage
    stops, see :func:`handed`), or, for a stage that reads whichever finished, those present."""
    if settings.OPTIONAL_INPUTS:
        return {folder: inputs[folder] for folder in settings.input_dirs() if folder in inputs}
    return handed(inputs, *settings.input_dirs())


def upstream_inputs(store: ArtifactStore, settings: StageSettings) -> Inputs:
    """The digests of the folders ``settings`` reads, as recorded now (see :func:`recorded_inputs`)."""
    return recorded_inputs(store, settings.input_dirs(), required=not settings.OPTIONAL_INPUTS)


def verified_input(store: ArtifactStore, stage_dir: str, expected: str | None = None) -> Manifest:
    """An upstream stage's manifest after checking every file it lists; a missing or altered file stops
    the reading stage with the command that rebuilds the upstream one. ``expected``: the digest the stage
    was handed; an upstream folder rebuilt since then stops it too (its identity named other inputs)."""
    manifest = verify_manifest(store, stage_dir, rerun_remedy(stage_dir))
    if expected is not None and manifest.digest != expected:
        raise StageError(
            f"{store.uri(stage_dir)} changed after this stage was given its content digest "
            f"({expected[:12]}, now {manifest.digest[:12]}): another run rebuilt it; run this stage again"
        )
    return manifest


def local_input_folder(
    store: ArtifactStore, stage_dir: str, expected: str, subfolder: str
) -> tuple[Manifest, Path]:
    """An upstream stage's manifest (of content digest ``expected``) and a local folder holding its
    ``subfolder``, every file checked against the manifest: on a local run root the folder itself (after
    :func:`verified_input`); on an object store a copy under ``<cache>/inputs/<digest>/``, downloaded
    once per content digest, each file checked as it is read."""
    if store.is_local:
        manifest = verified_input(store, stage_dir, expected)
        return manifest, Path(store.local_path(f"{stage_dir}/{subfolder}"))
    manifest = read_manifest(store, stage_dir, rerun_remedy(stage_dir))
    if manifest.digest != expected:
        raise StageError(
            f"{store.uri(stage_dir)} changed after this stage was given its content digest "
            f"({expected[:12]}, now {manifest.digest[:12]}): another run rebuilt it; run this stage again"
        )
    prefix = f"{subfolder}/"

    def download(folder: Path) -> None:
        for name, entry in sorted(manifest.files.items()):
            if name.startswith(prefix):
                destination = folder / name.removeprefix(prefix)
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(read_listed(store, f"{stage_dir}/{name}", entry))

    target = default_cache_root() / INPUT_CACHE_SUBDIR / manifest.digest[:32]
    return manifest, cached_folder(target, download, store.uri(stage_dir))


class StageRun:
    """Holds one stage folder for one run; see the module docstring. ``outputs``: the patterns of the
    files the stage writes in its folder (``store_paths.matches_output``)."""

    def __init__(
        self,
        store: ArtifactStore,
        stage_dir: str,
        identity: StageIdentity,
        ctx: RunContext,
        *,
        label: str,
        outputs: Sequence[str],
    ) -> None:
        self.store, self.stage_dir, self.identity = store, stage_dir.strip("/"), identity
        self.ctx, self.outputs = ctx, tuple(outputs)
        self.lease = StageLease(store, self.stage_dir, label=label, wait_s=ctx.lease_wait_s)
        self.current: Manifest | None = None
        self._listed: frozenset[str] = frozenset()

    def __enter__(self) -> StageRun:
        check_writable(self.store)
        if self.ctx.experiment is not None:
            claim_experiment(self.store, self.ctx.experiment, replace=self.ctx.replace_experiment)
        self.lease.acquire()
        try:
            self.current = current_manifest(self.store, self.stage_dir, self.identity)
            if self.current is None:
                self._claim()
        except BaseException:
            self.lease.release()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.lease.release()

    def _claim(self) -> None:
        listed = self._manifest_files()
        path = f"{self.stage_dir}/{IDENTITY_NAME}"
        recorded = self._recorded_identity(path)
        ours = recorded is not None or listed is not None
        self._listed = frozenset(listed or ())
        self._check_unknown_files(ours)
        self.store.delete(f"{self.stage_dir}/{MANIFEST_NAME}")
        for stale in self.store.remove_temp_files(self.stage_dir):
            log.info("removed %s, left by a write that never finished", self.store.uri(stale))
        if ours and (recorded or {}).get("resume_key") != self.identity.resume_key and self.output_files():
            changed = self.identity.differences(recorded or {}) or ["its format"]
            log.warning(
                "%s was made with other %s: clearing what it wrote and starting the stage again",
                self.store.uri(self.stage_dir),
                " and ".join(changed),
            )
            self.clear()
        self.store.write_json(path, {**asdict(self.identity), "resume_key": self.identity.resume_key})

    def _manifest_files(self) -> list[str] | None:
        """The files the folder's manifest lists (None without a readable one): written by a stage."""
        if not self.store.exists(f"{self.stage_dir}/{MANIFEST_NAME}"):
            return None
        try:
            return list(read_manifest(self.store, self.stage_dir).files)
        except ArtifactError:
            return None

    def _recorded_identity(self, path: str) -> dict[str, Any] | None:
        """The identity the folder records (``{}`` when its identity file is unreadable), None without one."""
        if not self.store.exists(path):
            return None
        try:
            recorded = self.store.read_json(path)
        except ArtifactError:
            return {}
        return recorded if isinstance(recorded, dict) else {}

    def _check_unknown_files(self, ours: bool) -> None:
        """Stop when the folder holds files no stage wrote (every file, when neither an identity file nor
        a manifest says a stage made the folder), unless ``ctx.allow_unknown_files``."""
        names = [posixpath.relpath(path, self.stage_dir) for path in self.store.list(self.stage_dir)]
        unknown = [name for name in names if not ours or not self._is_ours(name)]
        if not unknown:
            return
        shown = ", ".join(self.store.uri(f"{self.stage_dir}/{name}") for name in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        if self.ctx.allow_unknown_files:
            log.warning(
                "leaving %d file(s) ragdistill did not write where they are: %s%s", len(unknown), shown, more
            )
            return
        raise StageError(
            f"{self.store.uri(self.stage_dir)} holds {len(unknown)} file(s) ragdistill did not write: "
            f"{shown}{more}. A stage only ever removes files a stage wrote, so it stops here: move them out "
            "of this folder, or run again with --force (run.allow_unknown_files: true) to leave them where "
            "they are"
        )

    def _is_ours(self, name: str) -> bool:
        return name in BOOKKEEPING or name in self._listed or matches_output(name, self.outputs)

    def clear(self) -> None:
        """Remove what a stage wrote in the folder (its known outputs, the files its last manifest listed,
        its run statistics), one file at a time, then the folders that left empty; never the identity
        file, the lease or a file ragdistill did not write."""
        for name in [*self.output_files(), RUN_STATS_NAME]:
            self.store.delete(f"{self.stage_dir}/{name}")
        self.store.remove_empty_folders(self.stage_dir, keep_top=True)

    def output_files(self) -> list[str]:
        """Paths (relative to the stage folder) of the stage's outputs in it: the files its outputs'
        patterns match or its last manifest listed, never the bookkeeping ones."""
        names = [posixpath.relpath(path, self.stage_dir) for path in self.store.list(self.stage_dir)]
        return [name for name in names if name not in BOOKKEEPING and self._is_ours(name)]

    def finish(
        self,
        files: list[str] | None = None,
        *,
        counts: dict[str, int] | None = None,
        extra: dict[str, Any] | None = None,
        run_stats: dict[str, Any] | None = None,
    ) -> Manifest:
        """Write ``run-stats.json`` and then, last, the manifest over ``files`` (default: every output)."""
        self.store.write_json(f"{self.stage_dir}/{RUN_STATS_NAME}", run_stats or {})
        return write_manifest(
            self.store,
            self.stage_dir,
            stage=self.identity.stage,
            identity=self.identity.key,
            files=self.output_files() if files is None else files,
            counts=counts,
            inputs=self.identity.inputs,
            extra=extra,
        )
