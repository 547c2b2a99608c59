"""Stage manifests: the exact files a finished stage produced, with their size and sha256.

A manifest is written last, over files already written (:func:`write_manifest`). Reading one checks that
it is one (:func:`read_manifest`): every file name must be a plain relative name inside the stage folder
and every record a size and a sha256, so an edited manifest can never point a reader outside its folder
(``../../evil/x``, ``/dev/zero``). Verifying it (:func:`verify_manifest`) streams each listed file
through sha256 and stops reading at the recorded size, so a listed file can never be bigger than
recorded.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ragdistill.store_paths import (
    ArtifactError,
    ContainmentError,
    StoreAccess,
    manifest_entry_problem,
    manifest_name_problem,
)
from ragdistill.version import code_version

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2


@dataclass
class Manifest:
    """What a finished stage produced: exactly these files, made by a stage of this identity.

    ``identity`` is the stage's identity key (settings + input contents + code; ``ragdistill.identity``);
    ``inputs`` names the upstream content digests it was built from; ``counts`` are derived from the
    content alone. Per-run statistics (how much was played now, how long it took) live beside it in
    ``run-stats.json``, never in a manifest."""

    stage: str
    identity: str
    files: dict[str, dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    code_version: str = field(default_factory=code_version)
    created_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    @property
    def digest(self) -> str:
        """The content digest downstream identities use: the files and their hashes, nothing else."""
        return hashlib.sha256(json.dumps(self.files, sort_keys=True).encode()).hexdigest()


def write_manifest(
    store: StoreAccess,
    stage_dir: str,
    stage: str,
    identity: str,
    files: Iterable[str],
    counts: dict[str, int] | None = None,
    inputs: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Hash the stage's output ``files`` (paths under ``stage_dir``) and write the manifest last."""
    stage_dir = stage_dir.strip("/")
    hashed: dict[str, dict[str, Any]] = {}
    for name in sorted(files):
        name = name.removeprefix(stage_dir + "/")
        problem = manifest_name_problem(name)
        if problem is not None:
            raise ArtifactError(f"{name!r} cannot be listed in {store.uri(stage_dir)}'s manifest: {problem}")
        data = store.read_bytes(f"{stage_dir}/{name}")
        hashed[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = Manifest(
        stage=stage,
        identity=identity,
        files=hashed,
        counts=counts or {},
        inputs=inputs or {},
        extra=extra or {},
    )
    store.write_json(f"{stage_dir}/{MANIFEST_NAME}", asdict(manifest))
    return manifest


def read_manifest(store: StoreAccess, stage_dir: str, remedy: str = "run the stage again") -> Manifest:
    """The stage's manifest; ``remedy`` ends the error when it is missing, unreadable, or lists a file
    that is not a plain name inside the stage folder (the error names that file)."""
    relative = f"{stage_dir.strip('/')}/{MANIFEST_NAME}"
    if not store.exists(relative):
        raise ArtifactError(f"{store.uri(relative)} is missing: the stage did not finish; {remedy}")
    try:
        data = store.read_json(relative)
    except ArtifactError as error:
        raise ArtifactError(f"{error}; {remedy}") from None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        raise ArtifactError(f"{store.uri(relative)} was written by another ragdistill version; {remedy}")
    try:
        manifest = Manifest(**data)
    except TypeError as error:
        raise ArtifactError(f"{store.uri(relative)} is not a manifest: {error}; {remedy}") from None
    if not isinstance(manifest.files, dict):
        raise ArtifactError(f"{store.uri(relative)} is not a manifest: its files are not a mapping; {remedy}")
    for name, entry in manifest.files.items():
        problem = manifest_name_problem(name) or manifest_entry_problem(entry)
        if problem is not None:
            raise ArtifactError(
                f"{store.uri(relative)} lists {name!r}, which is refused: {problem}. A manifest names only "
                f"files inside its own stage folder; it was edited by hand. Nothing listed in it was read; "
                f"{remedy}"
            )
    return manifest


def manifest_problems(store: StoreAccess, stage_dir: str, manifest: Manifest) -> list[str]:
    """Every listed file that is missing, bigger than recorded or whose content changed, as readable
    lines. No file is read past its recorded size."""
    problems: list[str] = []
    for name, expected in sorted(manifest.files.items()):
        relative = f"{stage_dir.strip('/')}/{name}"
        try:
            if not store.exists(relative):
                problems.append(f"missing: {store.uri(relative)}")
                continue
            actual, size = store.digest(relative, max_bytes=expected["bytes"])
        except (ArtifactError, ContainmentError) as error:
            problems.append(f"refused: {error}")
            continue
        if size > expected["bytes"] or actual != expected["sha256"]:
            bigger = (
                f"; more than the {expected['bytes']} bytes it records, read no further"
                if size > expected["bytes"]
                else ""
            )
            problems.append(
                f"corrupted: {store.uri(relative)} (sha256 {actual[:12]}…, manifest says "
                f"{expected['sha256'][:12]}…{bigger})"
            )
    return problems


def read_listed(store: StoreAccess, relative: str, expected: dict[str, Any]) -> bytes:
    """The bytes of a file a manifest lists (``expected``: its record), read no further than the recorded
    size; a file that is bigger, smaller or other than recorded is refused, naming it."""
    data = store.read_bytes(relative, max_bytes=expected["bytes"])
    if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
        size = f"more than {expected['bytes']}" if len(data) > expected["bytes"] else str(len(data))
        raise ArtifactError(
            f"{store.uri(relative)} is not the file its manifest lists ({size} bytes, the manifest records "
            f"{expected['bytes']} bytes, sha256 {expected['sha256'][:12]}…): it changed after its stage "
            "finished; run that stage again"
        )
    return data


def verify_manifest(store: StoreAccess, stage_dir: str, remedy: str = "run the stage again") -> Manifest:
    """Check every file the manifest lists; raise one error naming every missing or altered file, ending
    with ``remedy``."""
    manifest = read_manifest(store, stage_dir, remedy)
    problems = manifest_problems(store, stage_dir, manifest)
    if problems:
        raise ArtifactError(
            f"stage '{manifest.stage}' artifacts under {store.uri(stage_dir)} failed verification:\n  "
            + "\n  ".join(problems)
            + f"\nTo rebuild them, {remedy} (the pipeline rebuilds it and everything after it)."
        )
    return manifest
