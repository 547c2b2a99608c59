"""The registry under ``<run root>/registry/``, through the artifact store (local disks and S3 alike).

::

    registry/versions/v0001.json     one immutable entry per version (``RegistryEntry``)
    registry/adapters/v0001/…        the registry's own copy of that adapter's files
    registry/current.json            the current version and the ones current before it (``Pointer``)
    registry/events/000001.json      what happened: registered, promoted, rejected, rolled_back (``Event``)

Every change (a new version, a pointer move, an event) happens while holding the registry's lease
(``ragdistill.leases``, on ``registry/lock``), so two runs or a run and a person never interleave. An
entry is written after its adapter copy is complete and verified, so an entry always names whole files;
the pointer is one atomic write.
"""

from __future__ import annotations

import getpass
import hashlib
import posixpath
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from ragdistill.adapter_registry.entries import (
    VERSION_PATTERN,
    Actor,
    AdapterCopy,
    EvalSummary,
    Event,
    EventKind,
    Pointer,
    RegistryEntry,
    folder_digest,
    utc_now,
)
from ragdistill.adapter_registry.files import RegistryFileError, read_record
from ragdistill.adapter_registry.gate import Decision, decide, manual_objection
from ragdistill.errors import UserFacingError
from ragdistill.identity import digest
from ragdistill.leases import StageLease
from ragdistill.store import ArtifactStore
from ragdistill.version import code_version

REGISTRY_DIR = "registry"
VERSIONS_DIR = f"{REGISTRY_DIR}/versions"
COPIES_DIR = f"{REGISTRY_DIR}/adapters"
EVENTS_DIR = f"{REGISTRY_DIR}/events"
CURRENT_FILE = f"{REGISTRY_DIR}/current.json"
LOCK_DIR = f"{REGISTRY_DIR}/lock"
LEASE_WAIT_S = 60.0
"""Registry changes take milliseconds to seconds: a second writer waits rather than fails."""

_VERSION = re.compile(VERSION_PATTERN)


class RegistryError(UserFacingError, RuntimeError):
    """A registry request that cannot be carried out; the message says what to do instead."""


def registration_key(student: str, adapter_digest: str, eval_digest: str | None) -> str:
    """Equal keys are the same version: the same student, adapter content and evaluation content."""
    return digest({"student": student, "adapter": adapter_digest, "evaluation": eval_digest})


class AdapterRegistry:
    """Reads and moves one run root's registry; ``label`` names this writer in lease messages."""

    def __init__(self, store: ArtifactStore, *, label: str = "registry", lease_wait_s: float = LEASE_WAIT_S):
        self.store, self.label, self.lease_wait_s = store, label, lease_wait_s

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with StageLease(self.store, LOCK_DIR, label=self.label, wait_s=self.lease_wait_s):
            yield

    # Reading

    def entries(self) -> list[RegistryEntry]:
        """Every version, oldest first."""
        paths = [p for p in self.store.list(VERSIONS_DIR) if _VERSION.match(_stem(p))]
        found = [self._read_entry(path) for path in paths]
        return sorted(found, key=lambda entry: int(entry.version[1:]))

    def _read_entry(self, path: str) -> RegistryEntry:
        """The entry stored at ``path``, refused unless it names its own adapter copy: an entry whose
        adapter lies anywhere else (``../evil_adapter``) was edited, and is never listed, promoted or
        served."""
        entry = read_record(self.store, path, RegistryEntry)
        problem = entry.containment_problem(f"{COPIES_DIR}/{entry.version}")
        if problem is not None:
            raise RegistryFileError(
                f"{self.store.uri(path)} is refused: {problem}. The registry only ever writes an entry "
                "naming its own copy; this one was edited by hand: restore or remove it"
            )
        return entry

    def entry(self, version: str) -> RegistryEntry:
        path = f"{VERSIONS_DIR}/{version}.json"
        if not _VERSION.match(version) or not self.store.exists(path):
            known = ", ".join(entry.version for entry in self.entries()) or "none yet"
            raise RegistryError(
                f"{self.store.uri(REGISTRY_DIR)} has no version {version!r} (versions: {known}); "
                "`ragdistill adapters list` shows them"
            )
        return self._read_entry(path)

    def pointer(self) -> Pointer | None:
        if not self.store.exists(CURRENT_FILE):
            return None
        return read_record(self.store, CURRENT_FILE, Pointer)

    def current(self) -> RegistryEntry | None:
        pointer = self.pointer()
        return None if pointer is None else self.entry(pointer.version)

    def events(self) -> list[Event]:
        """The registry's history, oldest first."""
        found = [read_record(self.store, path, Event) for path in self.store.list(EVENTS_DIR)]
        return sorted(found, key=lambda event: event.sequence)

    def verify_copy(self, entry: RegistryEntry) -> None:
        """Raise unless every file of the entry's adapter copy is present and unchanged."""
        for name, expected in sorted(entry.adapter.files.items()):
            relative = f"{entry.adapter.path}/{name}"
            if not self.store.exists(relative) or self.store.digest(
                relative, max_bytes=expected["bytes"]
            ) != (expected["sha256"], expected["bytes"]):
                raise RegistryError(
                    f"{self.store.uri(relative)} is missing or altered: registry version {entry.version} "
                    "cannot be used; promote another version (`ragdistill adapters promote VERSION`)"
                )

    # Changing

    def register(
        self,
        *,
        student: str,
        source_folder: str,
        files: dict[str, dict[str, Any]],
        training_manifest: str,
        base_model: dict[str, Any],
        lineage: dict[str, Any],
        training: dict[str, Any],
        evaluation: EvalSummary | None,
        run: dict[str, Any],
        by: Actor,
    ) -> tuple[RegistryEntry, bool]:
        """Copy the adapter ``files`` (names relative to ``source_folder``, with the sha256 its training
        manifest recorded) into the registry and write its entry. Returns the entry and whether it is new:
        the same student, adapter and evaluation registered again is the version registered before."""
        if not files:
            raise RegistryError(
                f"{self.store.uri(source_folder)} lists no adapter files: nothing to register"
            )
        adapter_digest = folder_digest(files)
        key = registration_key(student, adapter_digest, evaluation.eval_digest if evaluation else None)
        with self._locked():
            existing = self.entries()
            for entry in existing:
                if entry.key == key:
                    return entry, False
            version = f"v{(int(existing[-1].version[1:]) if existing else 0) + 1:04d}"
            copy = f"{COPIES_DIR}/{version}"
            self._copy_adapter(source_folder, copy, files)
            entry = RegistryEntry(
                version=version,
                key=key,
                student=student,
                created_at=utc_now(),
                adapter=AdapterCopy(copy, adapter_digest, files, source_folder, training_manifest),
                base_model=base_model,
                lineage=lineage,
                training=training,
                evaluation=evaluation,
                run=run,
                code_version=code_version(),
            )
            self.store.write_json(f"{VERSIONS_DIR}/{version}.json", entry.to_dict())
            summary = evaluation.describe() if evaluation else "not evaluated"
            self._event(
                "registered",
                version,
                by,
                f"{student} student from {source_folder}: {summary}",
                run=str(run.get("name", "")),
            )
        return entry, True

    def _copy_adapter(self, source: str, target: str, files: dict[str, dict[str, Any]]) -> None:
        self.store.delete(target)  # the registry's own folder, left by a registration that crashed
        for name, expected in sorted(files.items()):
            data = self.store.read_bytes(f"{source}/{name}", max_bytes=expected["bytes"])
            if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
                raise RegistryError(
                    f"{self.store.uri(source + '/' + name)} changed since its training manifest was written; "
                    "train the student again before registering it"
                )
            self.store.write_bytes(f"{target}/{name}", data)

    def gate(
        self,
        version: str,
        *,
        base: EvalSummary | None,
        margin: float,
        min_episodes: int,
        by: Actor,
        run: str = "",
    ) -> Decision:
        """Promote ``version`` if it passes the gate (``adapter_registry.gate``), else record the rejection.
        A version that is already current is left as it is."""
        with self._locked():
            candidate, current = self.entry(version), self.current()
            if current is not None and current.version == version:
                return Decision(False, f"{version} is already current", version)
            decision = decide(candidate, current=current, base=base, margin=margin, min_episodes=min_episodes)
            details = {"reference": decision.reference, "delta": decision.delta, "margin": margin}
            if decision.promote:
                self._move(version, by, decision.reason, push=True, run=run, details=details)
            else:
                self._event(
                    "rejected",
                    version,
                    by,
                    decision.reason,
                    run=run,
                    details=details,
                    from_version=current.version if current else None,
                )
            return decision

    def promote(self, version: str, *, by: Actor, reason: str = "", force: bool = False) -> Event:
        """Make ``version`` current by hand. Refused when it is worse than the current adapter on the same
        tasks, or cannot be compared with it, unless ``force``."""
        with self._locked():
            entry, current = self.entry(version), self.current()
            if current is not None and current.version == version:
                raise RegistryError(f"{version} is already current")
            objection = manual_objection(entry, current)
            if objection and not force:
                raise RegistryError(f"not promoting {version}: {objection}; add --force to promote it anyway")
            why = reason or "promoted by hand"
            if objection:
                why = f"{why} (forced: {objection})"
            return self._move(version, by, why, push=True, manual=True)

    def rollback(self, *, by: Actor, reason: str = "") -> Event:
        """Make the previously current version current again."""
        self._require_current()  # before the lease: a registry that does not exist stays absent
        with self._locked():
            pointer = self._require_current()
            if not pointer.previous:
                raise RegistryError(
                    f"{pointer.version} is the first version made current: there is no previous one to roll "
                    "back to; promote another version with `ragdistill adapters promote VERSION`"
                )
            target = pointer.previous[-1]
            self.entry(target)
            return self._move(
                target, by, reason or f"rolled back from {pointer.version}", push=False, manual=True
            )

    def _require_current(self) -> Pointer:
        pointer = self.pointer()
        if pointer is None:
            raise RegistryError(
                f"nothing is current in {self.store.uri(REGISTRY_DIR)}, so there is nothing to roll back; "
                "promote a version with `ragdistill adapters promote VERSION`"
            )
        return pointer

    def _move(
        self,
        version: str,
        by: Actor,
        reason: str,
        *,
        push: bool,
        manual: bool = False,
        run: str = "",
        details: dict[str, Any] | None = None,
    ) -> Event:
        """Point ``current`` at ``version``: a promotion pushes the old current onto ``previous``, a
        rollback pops it. Call with the lease held."""
        old = self.pointer()
        if push:
            previous = [*old.previous, old.version] if old else []
        else:
            assert old is not None and old.previous and old.previous[-1] == version
            previous = old.previous[:-1]
        kind: EventKind = "promoted" if push else "rolled_back"
        event = self._event(
            kind,
            version,
            by,
            reason,
            from_version=old.version if old else None,
            manual=manual,
            run=run,
            details=details or {},
        )
        pointer = Pointer(version=version, previous=previous, event=event.sequence, updated_at=event.at)
        self.store.write_json(CURRENT_FILE, asdict(pointer))
        return event

    def _event(
        self,
        kind: EventKind,
        version: str,
        by: Actor,
        reason: str,
        *,
        from_version: str | None = None,
        manual: bool = False,
        run: str = "",
        details: dict[str, Any] | None = None,
    ) -> Event:
        """Append one event (call with the lease held)."""
        sequences = [int(_stem(path)) for path in self.store.list(EVENTS_DIR) if _stem(path).isdigit()]
        event = Event(
            sequence=max(sequences, default=0) + 1,
            kind=kind,
            version=version,
            by=by,
            at=utc_now(),
            reason=reason,
            from_version=from_version,
            manual=manual,
            run=run,
            details={**(details or {}), "user": _user()},
        )
        self.store.write_json(f"{EVENTS_DIR}/{event.sequence:06d}.json", asdict(event))
        return event


def version_statuses(
    entries: list[RegistryEntry], pointer: Pointer | None, events: list[Event]
) -> dict[str, str]:
    """Each version's status: ``current``; ``previous`` (a rollback returns to the newest of these);
    ``retired`` (was current, then rolled back from); ``rejected`` (the gate said no, never current);
    ``registered``."""
    was_current = {event.version for event in events if event.kind in ("promoted", "rolled_back")}
    rejected = {event.version for event in events if event.kind == "rejected"}
    statuses: dict[str, str] = {}
    for entry in entries:
        if pointer is not None and entry.version == pointer.version:
            statuses[entry.version] = "current"
        elif pointer is not None and entry.version in pointer.previous:
            statuses[entry.version] = "previous"
        elif entry.version in was_current:
            statuses[entry.version] = "retired"
        elif entry.version in rejected:
            statuses[entry.version] = "rejected"
        else:
            statuses[entry.version] = "registered"
    return statuses


def current_adapter(store: ArtifactStore, *, verify: bool = True) -> str | None:
    """The URL of the registry's current adapter (a folder with ``adapter_config.json`` and weights), or
    None when nothing is current. Set it as ``models.agent.model.adapter`` to play the promoted student;
    it is the registry's own copy, which later training runs never overwrite. ``verify`` checks every file
    against the entry's sha256 first."""
    registry = AdapterRegistry(store)
    entry = registry.current()
    if entry is None:
        return None
    if verify:
        registry.verify_copy(entry)
    return store.uri(entry.adapter.path)


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
