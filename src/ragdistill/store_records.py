"""Episode-style records under a stage folder: appended one small object each, compacted into shards.

:class:`RecordLog` is how a stage appends records (cheap on S3, where objects cannot be appended to) and
compacts them into JSONL shards when it ends; :func:`read_records` reads a finished stage's records,
exactly the shards its manifest lists, each checked against its recorded size and sha256 as it is read.
Re-exported by ``ragdistill.store``.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from collections.abc import Callable, Iterator
from typing import Any

from ragdistill.layout import PARTS_DIR
from ragdistill.store_manifest import Manifest, read_listed
from ragdistill.store_paths import ArtifactError, StoreAccess

_SHARD_PATTERN = re.compile(r"^shard-(\d{5})\.jsonl$")
_PART_PATTERN = re.compile(r"^part-(\d{9})\.jsonl$")

log = logging.getLogger("ragdistill.store")


def _parse_lines(store: StoreAccess, relative: str, data: bytes | None = None) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    text = (store.read_bytes(relative) if data is None else data).decode()
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ArtifactError(
                f"{store.uri(relative)} line {number} is not a complete JSON record; the file is "
                "corrupted: delete it and run its stage again to redo its records"
            ) from None
    return records


def shard_paths(store: StoreAccess, prefix: str) -> list[str]:
    return [p for p in store.list(prefix) if _SHARD_PATTERN.match(posixpath.basename(p))]


def read_records(
    store: StoreAccess, prefix: str, manifest: Manifest | None = None
) -> Iterator[dict[str, Any]]:
    """Every record of a finished stage, file by file (one file in memory at a time).

    With a manifest, exactly the shards it lists, each read no further than its recorded size and refused
    unless its size and sha256 are the recorded ones; without one, the shards found under ``prefix``."""
    if manifest is None:
        for relative in shard_paths(store, prefix):
            yield from _parse_lines(store, relative)
        return
    for name in sorted(name for name in manifest.files if _SHARD_PATTERN.match(posixpath.basename(name))):
        relative = f"{prefix.strip('/')}/{name}"
        yield from _parse_lines(store, relative, read_listed(store, relative, manifest.files[name]))


class RecordLog:
    """The records of one stage folder: compacted shards plus records appended since as small parts.

    :meth:`append` writes one object per record (``parts/part-NNNNNNNNN.jsonl``), so appending costs the
    same on S3 as on a local disk and a crash loses nothing that was appended. :meth:`records` reads
    shards, then parts, in order; when several records share a key (a crashed compaction, or an episode
    played again after an infrastructure fault) the last one wins. :meth:`compact` rewrites them as
    ``shard-NNNNN.jsonl`` files of ``shard_size`` records and removes the parts, in the order its ``order``
    key gives (the plan's order, whatever order the episodes finished in) or else the order read. A crash
    during compaction leaves every record readable: records that only move to earlier positions are
    rewritten in place; otherwise the new shards are numbered after the old ones, which are removed once
    every new shard is written.
    """

    def __init__(
        self,
        store: StoreAccess,
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
        return [record for record, _ in self._latest()]

    def _latest(self) -> list[tuple[dict[str, Any], int | None]]:
        """The last record of each key in the order of those last occurrences, with the number of the
        shard it was read from (None: a part)."""
        latest: dict[str, tuple[int, dict[str, Any], int | None]] = {}
        position = 0
        shards, parts = shard_paths(self.store, self.prefix), self._part_paths()
        for relative in shards:
            number = int(_SHARD_PATTERN.match(posixpath.basename(relative))[1])
            for record in _parse_lines(self.store, relative):
                latest[self.key(record)] = (position, record, number)
                position += 1
        for relative in parts:
            record = self._part_record(relative)
            if record is not None:
                latest[self.key(record)] = (position, record, None)
                position += 1
        return [(record, shard) for _, record, shard in sorted(latest.values(), key=lambda item: item[0])]

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

    def remove(self) -> None:
        """Delete the log's shards and parts (its files only) and the folders they leave empty."""
        for path in [*shard_paths(self.store, self.prefix), *self._part_paths()]:
            self.store.delete(path)
        self.store.remove_empty_folders(self.prefix)
        self._next_part = 0

    def keys(self) -> set[str]:
        return {self.key(record) for record in self.records()}

    def compact(
        self,
        keep: Callable[[dict[str, Any]], bool] = lambda _: True,
        order: Callable[[dict[str, Any]], Any] | None = None,
    ) -> list[str]:
        """Rewrite the kept records as shards (sorted by ``order`` when given), remove the parts and surplus
        shards; the shard paths."""
        read = [(record, shard) for record, shard in self._latest() if keep(record)]
        if order is not None:
            read.sort(key=lambda item: order(item[0]))
        kept = [record for record, _ in read]
        old_shards, parts = shard_paths(self.store, self.prefix), self._part_paths()
        first = 0
        if any(
            shard is not None and shard < index // self.shard_size for index, (_, shard) in enumerate(read)
        ):
            # in place, a record would be overwritten in its old shard before its new one is written
            first = int(_SHARD_PATTERN.match(posixpath.basename(old_shards[-1]))[1]) + 1
        written: list[str] = []
        for index in range(0, len(kept), self.shard_size):
            name = f"{self.prefix}/shard-{first + index // self.shard_size:05d}.jsonl"
            chunk = kept[index : index + self.shard_size]
            self.store.write_text(
                name, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in chunk)
            )
            written.append(name)
        for stale in [*parts, *(path for path in old_shards if path not in written)]:
            self.store.delete(stale)
        self.store.remove_empty_folders(f"{self.prefix}/{PARTS_DIR}")
        self._next_part = 0
        return written
