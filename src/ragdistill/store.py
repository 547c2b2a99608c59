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

Every path the store resolves stays under its run root (``ragdistill.store_paths``): ``..`` that climbs
out is refused, and on local disks so is any path whose symbolic links lead outside; listings never
descend into a linked folder. Manifests live in ``ragdistill.store_manifest`` (re-exported here).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import uuid
from contextlib import AbstractContextManager
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ragdistill.store_faults import StorageError, describe_storage, storage_faults
from ragdistill.store_manifest import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    Manifest,
    manifest_problems,
    read_listed,
    read_manifest,
    verify_manifest,
    write_manifest,
)
from ragdistill.store_paths import ArtifactError, ContainmentError, check_local, local_files, normalised
from ragdistill.store_records import RecordLog, read_records, shard_paths

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "RUN_STATS_NAME",
    "ArtifactError",
    "ArtifactStore",
    "ContainmentError",
    "Manifest",
    "RecordLog",
    "check_writable",
    "manifest_problems",
    "read_listed",
    "read_manifest",
    "read_records",
    "shard_paths",
    "verify_manifest",
    "write_manifest",
]

RUN_STATS_NAME = "run-stats.json"
READ_CHUNK = 1 << 20
_TEMP_PATTERN = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")  # ArtifactStore.write_bytes's temp files
WRITE_CHECK_PREFIX = ".write-check-"
S3_MAX_ATTEMPTS = 3
"""Attempts per S3 request (botocore's standard retry mode) unless ``AWS_MAX_ATTEMPTS`` says otherwise:
a transient error is retried with backoff, a stopped server fails within seconds."""


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
        self._boundary, self._boundary_url = self.root, self.root_url

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root_url!r})"

    def path(self, relative: str) -> str:
        """Where ``relative`` is: normalised, and refused (:class:`ContainmentError`) when it leaves the
        run root, by ``..`` or, on a local disk, through a symbolic link."""
        clean = normalised(relative, self.root_url)
        target = posixpath.join(self.root, clean) if clean else self.root
        if self.is_local:
            check_local(self._boundary, target, self._boundary_url)
        return target

    def uri(self, relative: str) -> str:
        return f"{self.root_url}/{relative.strip('/')}"

    def local_path(self, relative: str) -> str:
        """The filesystem path of a local artifact (for libraries that only take paths)."""
        if not self.is_local:
            raise ArtifactError(f"{self.uri(relative)} is not on a local disk")
        return self.path(relative)

    def child(self, relative: str) -> ArtifactStore:
        """A store rooted at a sub-folder, sharing this store's filesystem settings; it stays inside this
        store's run root."""
        sub = ArtifactStore.__new__(ArtifactStore)
        sub.fs, sub.is_local = self.fs, self.is_local
        sub.root, sub.root_url = self.path(relative), self.uri(normalised(relative, self.root_url))
        sub._boundary, sub._boundary_url = self._boundary, self._boundary_url
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

    def upload_file(self, relative: str, source: str | os.PathLike[str]) -> None:
        """Copy the local file ``source`` to ``relative``, streamed rather than read into memory (a
        checkpoint's optimizer state can be gigabytes), as atomic as :meth:`write_bytes`: one PUT
        (multipart for large files) on an object store, a temp file and a rename on a local disk."""
        target = self.path(relative)
        if not self.is_local:
            with self._faults(relative):
                self.fs.put_file(os.fspath(source), target)
            return
        directory = posixpath.dirname(target)
        os.makedirs(directory, exist_ok=True)
        temp = posixpath.join(directory, f".{posixpath.basename(target)}.{uuid.uuid4().hex}.tmp")
        try:
            shutil.copyfile(source, temp)
            os.replace(temp, target)
        finally:
            if os.path.exists(temp):
                os.remove(temp)

    def download_file(self, relative: str, target: str | os.PathLike[str]) -> None:
        """Copy ``relative`` to the local file ``target``, streamed, through a temp file beside it that is
        renamed at the end (an interrupted copy leaves no partial ``target``)."""
        destination = os.fspath(target)
        os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
        temp = f"{destination}.{uuid.uuid4().hex}.partial"
        try:
            with self._faults(relative):
                if self.is_local:
                    shutil.copyfile(self.path(relative), temp)
                else:
                    self.fs.get_file(self.path(relative), temp)
            os.replace(temp, destination)
        except FileNotFoundError:
            raise ArtifactError(f"missing artifact {self.uri(relative)}") from None
        finally:
            if os.path.exists(temp):
                os.remove(temp)

    def _open(self, relative: str) -> IO[bytes]:
        """A binary reader of the file ``relative``; on a local disk only a regular file is opened (a
        FIFO would block, a device never end)."""
        target = self.path(relative)
        if not self.is_local:
            self.fs.invalidate_cache(target)  # the size it reads up to must be the object's current one
            return self.fs.open(target, "rb", block_size=READ_CHUNK)
        mode = os.stat(target).st_mode
        if not stat.S_ISREG(mode):
            raise ArtifactError(f"{self.uri(relative)} is not a regular file: refusing to read it")
        return open(target, "rb")

    def read_bytes(self, relative: str, *, max_bytes: int | None = None) -> bytes:
        """The file's bytes; with ``max_bytes``, at most ``max_bytes + 1`` of them are read (so a caller
        sees that the file is bigger, without reading the rest)."""
        try:
            with self._faults(relative):
                if not self.is_local and max_bytes is None:
                    return self.fs.cat_file(self.path(relative))
                with self._open(relative) as handle:
                    return handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        except FileNotFoundError:
            raise ArtifactError(f"missing artifact {self.uri(relative)}") from None

    def digest(self, relative: str, *, max_bytes: int | None = None) -> tuple[str, int]:
        """(sha256, bytes read) of the file, streamed; with ``max_bytes``, reading stops after
        ``max_bytes + 1`` bytes."""
        hasher, size = hashlib.sha256(), 0
        limit = None if max_bytes is None else max_bytes + 1
        try:
            with self._faults(relative), self._open(relative) as handle:
                while limit is None or size < limit:
                    chunk = handle.read(READ_CHUNK if limit is None else min(READ_CHUNK, limit - size))
                    if not chunk:
                        break
                    hasher.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise ArtifactError(f"missing artifact {self.uri(relative)}") from None
        return hasher.hexdigest(), size

    def write_text(self, relative: str, text: str) -> None:
        self.write_bytes(relative, text.encode())

    def read_text(self, relative: str) -> str:
        return self.read_bytes(relative).decode()

    def write_json(self, relative: str, payload: Any) -> None:
        self.write_text(relative, json.dumps(payload, indent=2, sort_keys=True) + "\n")

    def read_json(self, relative: str) -> Any:
        try:
            return json.loads(self.read_bytes(relative))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ArtifactError(f"{self.uri(relative)} is not valid JSON: {error}") from None

    def exists(self, relative: str) -> bool:
        target = self.path(relative)
        with self._faults(relative):
            return self.fs.exists(target)

    def list(self, prefix: str = "", *, hidden: bool = False) -> list[str]:
        """Relative paths of every file under ``prefix`` (recursive, sorted). Files whose name starts with
        a dot (temp files, leases) are left out unless ``hidden``. On a local disk a linked folder is
        never entered and a link to a file outside the run root never listed."""
        base = self.path(prefix)
        with self._faults(prefix):
            if self.is_local:
                found = self._local_files(base)
            else:
                self.fs.invalidate_cache(base)
                found = self.fs.find(base) if self.fs.exists(base) else []
        relative = [posixpath.relpath(path, self.root) for path in found]
        return sorted(path for path in relative if hidden or not posixpath.basename(path).startswith("."))

    def _local_files(self, base: str) -> list[str]:
        return local_files(self._boundary, base)

    def delete(self, relative: str) -> None:
        """Remove a file, or a folder file by file (every one :meth:`list` finds in it, hidden ones too)
        and then its emptied sub-folders. Links are removed, never followed; the run root itself is never
        removed."""
        if not normalised(relative, self.root_url):
            raise ContainmentError(f"refusing to delete the run root {self.root_url} itself")
        target = self.path(relative)
        with self._faults(relative):
            if not self.is_local:
                if self.fs.isfile(target):
                    self.fs.rm_file(target)
                else:
                    for path in self.fs.find(target):
                        self.fs.rm_file(path)
                self.fs.invalidate_cache()
                return
            if os.path.islink(target) or os.path.isfile(target):
                os.remove(target)
            elif os.path.isdir(target):
                for path in self._local_files(target):
                    os.remove(path)
                self.remove_empty_folders(relative)

    def remove_empty_folders(self, prefix: str, *, keep_top: bool = False) -> None:
        """Remove the empty folders under ``prefix`` (and ``prefix`` itself unless ``keep_top``), deepest
        first, never entering a linked folder; object stores have no folders."""
        if not self.is_local:
            return
        top = self.path(prefix)
        for folder, folders, files in os.walk(top, topdown=False):
            if (
                (keep_top and folder == top)
                or files
                or any(os.path.lexists(posixpath.join(folder, name)) for name in folders)
            ):
                continue
            os.rmdir(folder)

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
        return self.digest(relative)[0]


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
