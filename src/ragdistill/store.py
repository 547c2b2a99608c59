"""The artifact store: every stage reads and writes under one run-root URL (``file://`` or ``s3://``).

Writes are atomic: a reader sees the old object or the new one, never a partial one (a temp file and a
rename on local disks, a single PUT on object stores). A stage appends records as one small object each
(:class:`RecordLog`: cheap on S3, where objects cannot be appended to) and compacts them into JSONL
shards when it ends. Each stage ends with a manifest: the exact files it produced with their sha256,
its identity (``ragdistill.identity``) and content-derived counts. Downstream stages read exactly the
files a manifest lists, and :func:`verify_manifest` checks them file by file.

Object-store faults surface as :class:`~ragdistill.store_faults.StorageError` naming the endpoint and
bucket, after a bounded number of retries (``S3_MAX_ATTEMPTS``, or the usual ``AWS_MAX_ATTEMPTS``), so a
stopped server fails a stage in seconds; every stage first checks that its run root is writable
(:func:`check_writable`) before doing any work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ragdistill.errors import UserFacingError
from ragdistill.store_faults import StorageError, describe_storage, storage_faults
from ragdistill.version import code_version

MANIFEST_NAME = "manifest.json"
RUN_STATS_NAME = "run-stats.json"
MANIFEST_VERSION = 2
PARTS_DIR = "parts"
_SHARD_PATTERN = re.compile(r"^shard-(\d{5})\.jsonl$")
_PART_PATTERN = re.compile(r"^part-(\d{9})\.jsonl$")
_TEMP_PATTERN = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")  # ArtifactStore.write_bytes's temp files
WRITE_CHECK_PREFIX = ".write-check-"
S3_MAX_ATTEMPTS = 3
"""Attempts per S3 request (botocore's standard retry mode) unless ``AWS_MAX_ATTEMPTS`` says otherwise:
a transient error is retried with backoff, a stopped server fails within seconds."""

log = logging.getLogger("ragdistill.store")


class ArtifactError(UserFacingError, RuntimeError):
    """An artifact is missing, corrupted or malformed; the message names the file."""


def _storage_options(protocol: str) -> dict[str, Any]:
    """S3 endpoint and keys come from the usual AWS variables, so MinIO, s3rver and AWS work unchanged."""
    if protocol not in ("s3", "s3a"):
        return {}
    options: dict[str, Any] = {}
    if os.environ.get("AWS_ENDPOINT_URL"):
        options["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    if not os.environ.get("AWS_MAX_ATTEMPTS"):
        options["config_kwargs"] = {"retries": {"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"}}
    return options


class ArtifactStore:
    """Relative paths under a root URL; the same calls for local disks and object stores."""

    def __init__(self, root_url: str, **storage_options: Any) -> None:
        if "://" not in root_url:
            root_url = "file://" + os.path.abspath(root_url)
        protocol = root_url.split("://", 1)[0]
        options = _storage_options(protocol) | storage_options
        self.fs, root = fsspec.core.url_to_fs(root_url, **options)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        # Absolute for local disks, so "file://./runs/x" in two checkouts are two different roots.
        self.root_url = f"file://{self.root}" if self.is_local else root_url.rstrip("/")

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root_url!r})"

    def path(self, relative: str) -> str:
        return posixpath.join(self.root, relative.strip("/"))

    def uri(self, relative: str) -> str:
        return f"{self.root_url}/{relative.strip('/')}"

    def local_path(self, relative: str) -> str:
        """The filesystem path of a local artifact (for libraries that only take paths)."""
        if not self.is_local:
            raise ArtifactError(f"{self.uri(relative)} is not on a local disk")
        return self.path(relative)

    def child(self, relative: str) -> ArtifactStore:
        """A store rooted at a sub-folder, sharing this store's filesystem settings."""
        sub = ArtifactStore.__new__(ArtifactStore)
        sub.fs, sub.is_local = self.fs, self.is_local
        sub.root, sub.root_url = self.path(relative), self.uri(relative)
        return sub

    def _faults(self, relative: str) -> AbstractContextManager[None]:
        return storage_faults(self.fs, self.root, self.uri(relative))

    def write_bytes(self, relative: str, data: bytes) -> None:
        target = self.path(relative)
        if not self.is_local:
            with self._faults(relative):
                self.fs.pipe_file(target, data)
            return
        directory = posixpath.dirname(target)
        os.makedirs(directory, exist_ok=True)
        temp = posixpath.join(directory, f".{posixpath.basename(target)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        finally:
            if os.path.exists(temp):
                os.remove(temp)

    def read_bytes(self, relative: str) -> bytes:
        try:
            with self._faults(relative):
                return self.fs.cat_file(self.path(relative))
        except FileNotFoundError:
            raise ArtifactError(f"missing artifact {self.uri(relative)}") from None

    def write_text(self, relative: str, text: str) -> None:
        self.write_bytes(relative, text.encode())

    def read_text(self, relative: str) -> str:
        return self.read_bytes(relative).decode()

    def write_json(self, relative: str, payload: Any) -> None:
        self.write_text(relative, json.dumps(payload, indent=2, sort_keys=True) + "\n")

    def read_json(self, relative: str) -> Any:
        try:
            return json.loads(self.read_bytes(relative))
        except json.JSONDecodeError as error:
            raise ArtifactError(f"{self.uri(relative)} is not valid JSON: {error}") from None

    def exists(self, relative: str) -> bool:
        with self._faults(relative):
            return self.fs.exists(self.path(relative))

    def list(self, prefix: str = "", *, hidden: bool = False) -> list[str]:
        """Relative paths of every file under ``prefix`` (recursive, sorted). Files whose name starts with
        a dot (temp files, leases) are left out unless ``hidden``."""
        base = self.path(prefix)
        with self._faults(prefix):
            if not self.is_local:
                self.fs.invalidate_cache(base)
            if not self.fs.exists(base):
                return []
            found = self.fs.find(base)
        relative = [posixpath.relpath(path, self.root) for path in found]
        return sorted(path for path in relative if hidden or not posixpath.basename(path).startswith("."))

    def delete(self, relative: str) -> None:
        target = self.path(relative)
        with self._faults(relative):
            if self.fs.exists(target):
                self.fs.rm(target, recursive=True)
            if not self.is_local:
                self.fs.invalidate_cache()

    def remove_temp_files(self, prefix: str) -> list[str]:
        """Remove the temp files of writes that never finished (a writer killed before its rename) under
        ``prefix``; their relative paths. Only for a caller that holds the folder: a live writer's temp
        file would vanish under it. Object stores write in one PUT and leave none."""
        stale = [
            path for path in self.list(prefix, hidden=True) if _TEMP_PATTERN.match(posixpath.basename(path))
        ]
        for path in stale:
            self.delete(path)
        return stale

    def sha256(self, relative: str) -> str:
        return hashlib.sha256(self.read_bytes(relative)).hexdigest()


def check_writable(store: ArtifactStore | str) -> None:
    """Write, read back and remove a small object under the run root, so a missing bucket, refused
    credentials, an unreachable endpoint or a read-only folder is reported before a stage does any work."""
    store = store if isinstance(store, ArtifactStore) else ArtifactStore(store)
    probe = f"{WRITE_CHECK_PREFIX}{uuid.uuid4().hex}"
    payload = f"ragdistill write check {probe}".encode()
    try:
        store.write_bytes(probe, payload)
        readable = store.read_bytes(probe) == payload
        store.delete(probe)
    except OSError as error:
        raise StorageError(
            f"cannot write to the run root {store.root_url} ({describe_storage(store.fs, store.root)}): {error}. Fix "
            "run.run_root or the folder's permissions, then run the stage again."
        ) from error
    except ArtifactError as error:
        raise StorageError(f"the run root {store.root_url} lost an object just written: {error}") from error
    if not readable:
        raise StorageError(f"the run root {store.root_url} returned other bytes than were just written")


def _parse_lines(store: ArtifactStore, relative: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for number, line in enumerate(store.read_text(relative).splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ArtifactError(
                f"{store.uri(relative)} line {number} is not a complete JSON record; the file is "
                "corrupted: delete it and run its stage again to redo its records"
            ) from None
    return records


def shard_paths(store: ArtifactStore, prefix: str) -> list[str]:
    return [p for p in store.list(prefix) if _SHARD_PATTERN.match(posixpath.basename(p))]


def read_records(
    store: ArtifactStore, prefix: str, manifest: Manifest | None = None
) -> Iterator[dict[str, Any]]:
    """Every record of a finished stage, file by file (one file in memory at a time).

    With a manifest, exactly the shards it lists; without one, the shards found under ``prefix``."""
    names = (
        [
            f"{prefix.strip('/')}/{name}"
            for name in manifest.files
            if _SHARD_PATTERN.match(posixpath.basename(name))
        ]
        if manifest is not None
        else shard_paths(store, prefix)
    )
    for relative in sorted(names):
        yield from _parse_lines(store, relative)


class RecordLog:
    """The records of one stage folder: compacted shards plus records appended since as small parts.

    :meth:`append` writes one object per record (``parts/part-NNNNNNNNN.jsonl``), so appending costs the
    same on S3 as on a local disk and a crash loses nothing that was appended. :meth:`records` reads
    shards, then parts, in order; when several records share a key (a crashed compaction, or an episode
    played again after an infrastructure fault) the last one wins. :meth:`compact` rewrites them as
    ``shard-NNNNN.jsonl`` files of ``shard_size`` records and removes the parts; records only ever move to
    earlier positions, so a crash during compaction leaves every record readable.
    """

    def __init__(
        self,
        store: ArtifactStore,
        prefix: str,
        key: Callable[[dict[str, Any]], str],
        shard_size: int = 50,
    ) -> None:
        if shard_size <= 0:
            raise ValueError("shard_size must be positive")
        self.store, self.prefix, self.key, self.shard_size = store, prefix.strip("/"), key, shard_size
        parts = self._part_paths()
        self._next_part = int(_PART_PATTERN.match(posixpath.basename(parts[-1]))[1]) + 1 if parts else 0

    def _part_paths(self) -> list[str]:
        return [
            p
            for p in self.store.list(f"{self.prefix}/{PARTS_DIR}")
            if _PART_PATTERN.match(posixpath.basename(p))
        ]

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
        self.store.write_text(f"{self.prefix}/{PARTS_DIR}/part-{self._next_part:09d}.jsonl", line)
        self._next_part += 1

    def records(self) -> list[dict[str, Any]]:
        """Every record, the last one of each key, in the order of those last occurrences."""
        latest: dict[str, tuple[int, dict[str, Any]]] = {}
        position = 0
        shards, parts = shard_paths(self.store, self.prefix), self._part_paths()
        for relative in shards:
            for record in _parse_lines(self.store, relative):
                latest[self.key(record)] = (position, record)
                position += 1
        for relative in parts:
            record = self._part_record(relative)
            if record is not None:
                latest[self.key(record)] = (position, record)
                position += 1
        return [record for _, record in sorted(latest.values(), key=lambda item: item[0])]

    def _part_record(self, relative: str) -> dict[str, Any] | None:
        """The one record a part holds, or None for a torn part: object stores that write in place
        (s3rver, some NFS-backed servers) can keep the first bytes of a PUT the server died in. Its
        record was never acknowledged, so it counts as not appended (the episode is played again)."""
        text = self.store.read_text(relative)
        try:
            record = json.loads(text) if text.endswith("\n") else None
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            log.warning("%s is a torn write (%d bytes): ignoring it", self.store.uri(relative), len(text))
            return None
        return record

    def keys(self) -> set[str]:
        return {self.key(record) for record in self.records()}

    def compact(self, keep: Callable[[dict[str, Any]], bool] = lambda _: True) -> list[str]:
        """Rewrite the kept records as shards, remove the parts and surplus shards; the shard paths."""
        kept = [record for record in self.records() if keep(record)]
        old_shards, parts = shard_paths(self.store, self.prefix), self._part_paths()
        written: list[str] = []
        for index in range(0, len(kept), self.shard_size):
            name = f"{self.prefix}/shard-{index // self.shard_size:05d}.jsonl"
            chunk = kept[index : index + self.shard_size]
            self.store.write_text(
                name, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in chunk)
            )
            written.append(name)
        for stale in [*parts, *(path for path in old_shards if path not in written)]:
            self.store.delete(stale)
        self.store.delete(f"{self.prefix}/{PARTS_DIR}")
        self._next_part = 0
        return written


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
    store: ArtifactStore,
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
        name = posixpath.relpath(name, stage_dir) if name.startswith(stage_dir + "/") else name
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


def read_manifest(store: ArtifactStore, stage_dir: str, remedy: str = "run the stage again") -> Manifest:
    """The stage's manifest; ``remedy`` ends the error when it is missing or unreadable."""
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
        return Manifest(**data)
    except TypeError as error:
        raise ArtifactError(f"{store.uri(relative)} is not a manifest: {error}; {remedy}") from None


def manifest_problems(store: ArtifactStore, stage_dir: str, manifest: Manifest) -> list[str]:
    """Every listed file that is missing or whose content changed, as readable lines."""
    problems: list[str] = []
    for name, expected in sorted(manifest.files.items()):
        relative = f"{stage_dir.strip('/')}/{name}"
        if not store.exists(relative):
            problems.append(f"missing: {store.uri(relative)}")
            continue
        actual = store.sha256(relative)
        if actual != expected["sha256"]:
            problems.append(
                f"corrupted: {store.uri(relative)} (sha256 {actual[:12]}…, manifest says {expected['sha256'][:12]}…)"
            )
    return problems


def verify_manifest(store: ArtifactStore, stage_dir: str, remedy: str = "run the stage again") -> Manifest:
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
