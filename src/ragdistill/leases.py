"""One writer per stage folder: a lease taken before a stage writes, refreshed while it runs.

Two runs pointed at the same run root must never append to the same shards. A run that wants a stage
folder writes a *candidate* object of its own, ``<stage dir>/.lease-<token>.json`` (who it is, since
when), then lists the folder's candidates: it holds the lease only if its candidate is the only live
one; otherwise it withdraws its candidate and waits. Two runs can never both hold: the later writer's
listing always shows the earlier candidate. The protocol needs only read-after-write consistent
listings, so it behaves the same on a local disk, on AWS S3, on MinIO and on S3 servers that ignore
conditional writes (s3rver, which the tests use).

The holder refreshes its candidate every ``heartbeat_s``. A candidate of a dead process on this host,
or one not refreshed for ``stale_after_s``, is stale and removed by whoever sees it. A run that finds the
folder held waits up to ``wait_s``, then stops with an error naming the holder.

Two runs that write their candidates at the same moment see each other. The tie is broken by the
candidates' tokens (creation time, then a random suffix), never by timing: the run whose token is the
smallest of those it sees keeps its candidate and waits until the others are withdrawn, the others
withdraw. A candidate says whether its run holds the folder (``held``, written once the run has
decided), so a run never waits on a holder, and a holder is never displaced by an earlier token that
arrives late: the late run sees ``held`` and withdraws. Exactly one run of a tie holds, also with
``wait_s`` 0 (the retrain lease), and it is always the same one.
"""

from __future__ import annotations

import logging
import os
import posixpath
import random
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from types import TracebackType

from ragdistill.errors import UserFacingError
from ragdistill.processes import process_alive
from ragdistill.store import ArtifactError, ArtifactStore, StorageError

LEASE_PREFIX = ".lease-"
log = logging.getLogger("ragdistill.leases")
_LIVE_TOKENS: set[str] = set()
"""Tokens of this process's leases that are being acquired or are held. A candidate of this process
whose token is not here was left by a lease whose release failed (storage down): it is stale."""


class LeaseHeldError(UserFacingError, RuntimeError):
    """Another run holds the stage folder; the message names it."""


@dataclass(frozen=True)
class LeaseHolder:
    token: str
    host: str
    pid: int
    label: str
    acquired_at: float
    refreshed_at: float
    held: bool = False
    """False while the run is still deciding (it may withdraw), True once it holds the folder."""

    def describe(self) -> str:
        age = time.time() - self.acquired_at
        return f"{self.label!r} (pid {self.pid} on {self.host}, for {age:.0f} s)"


class StageLease:
    """``with StageLease(store, "rollouts/base", label="demo: rollouts/base"):`` holds the folder."""

    def __init__(
        self,
        store: ArtifactStore,
        stage_dir: str,
        label: str,
        *,
        wait_s: float = 0.0,
        heartbeat_s: float = 30.0,
        stale_after_s: float = 300.0,
        poll_s: float = 1.0,
    ) -> None:
        self.store, self.stage_dir, self.label = store, stage_dir.strip("/"), label
        self.wait_s, self.heartbeat_s, self.stale_after_s, self.poll_s = (
            wait_s,
            heartbeat_s,
            stale_after_s,
            poll_s,
        )
        self.token = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        self.path = f"{self.stage_dir}/{LEASE_PREFIX}{self.token}.json"
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._held = False
        self._acquired_at = 0.0

    def _candidates(self) -> list[LeaseHolder]:
        """Every live candidate of the folder; stale ones are removed on the way."""
        live: list[LeaseHolder] = []
        for relative in self.store.list(self.stage_dir, hidden=True):
            name = posixpath.basename(relative)
            if posixpath.dirname(relative) != self.stage_dir or not name.startswith(LEASE_PREFIX):
                continue
            try:
                holder = LeaseHolder(**self.store.read_json(relative))
            except (ArtifactError, TypeError):
                continue  # withdrawn while we listed, or half-written by a crashed writer
            if self._is_stale(holder):
                self.store.delete(relative)
            else:
                live.append(holder)
        return live

    def _is_stale(self, holder: LeaseHolder) -> bool:
        if holder.token == self.token:
            return False
        if holder.host == socket.gethostname() and not process_alive(holder.pid):
            return True
        if holder.host == socket.gethostname() and holder.pid == os.getpid():
            return holder.token not in _LIVE_TOKENS
        return time.time() - holder.refreshed_at > self.stale_after_s

    def _write(self, acquired_at: float, *, held: bool) -> None:
        holder = LeaseHolder(
            self.token, socket.gethostname(), os.getpid(), self.label, acquired_at, time.time(), held
        )
        self.store.write_json(self.path, asdict(holder))

    def _try_acquire(self) -> LeaseHolder | None:
        """None when the lease is ours; else the holder, or the contender ahead of this run, to name."""
        before = self._candidates()
        if before:
            return _first_to_name(before)
        self._acquired_at = time.time()
        self._write(self._acquired_at, held=False)
        try:
            while others := [holder for holder in self._candidates() if holder.token != self.token]:
                ahead = [holder for holder in others if holder.held or holder.token < self.token]
                if ahead:
                    self.store.delete(self.path)
                    return _first_to_name(ahead)
                time.sleep(min(self.poll_s, 0.05))  # later contenders: each withdraws, or says it holds
            self._write(self._acquired_at, held=True)
        except BaseException:
            self._withdraw_quietly()
            raise
        return None

    def _withdraw_quietly(self) -> None:
        try:
            self.store.delete(self.path)
        except Exception as error:  # the store failed first; its candidate goes stale
            log.warning("could not withdraw the lease candidate %s: %s", self.store.uri(self.path), error)

    def acquire(self) -> StageLease:
        _LIVE_TOKENS.add(self.token)
        try:
            self._wait_for_turn()
        except BaseException:
            _LIVE_TOKENS.discard(self.token)
            raise
        self._held = True
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._refresh, name="stage-lease", daemon=True)
        self._heartbeat.start()
        return self

    def _wait_for_turn(self) -> None:
        """Return once this run holds the folder; LeaseHeldError when ``wait_s`` passes before that."""
        deadline = time.monotonic() + self.wait_s
        while (holder := self._try_acquire()) is not None:
            if time.monotonic() >= deadline:
                raise LeaseHeldError(
                    f"{self.store.uri(self.stage_dir)} is being written by {holder.describe()}; wait for that "
                    "run to finish (or stop it), set run.lease_wait_s to wait for it, or give this run another "
                    "run.run_root"
                )
            time.sleep(self.poll_s * (0.5 + random.random()))

    def _refresh(self) -> None:
        """Keeps refreshing through a storage outage: the stage itself fails on its next write."""
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write(self._acquired_at, held=True)
            except StorageError as error:
                log.warning("could not refresh the lease on %s: %s", self.store.uri(self.stage_dir), error)

    def release(self) -> None:
        if not self._held:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        self._held = False
        try:
            self.store.delete(self.path)
        finally:
            _LIVE_TOKENS.discard(self.token)

    def __enter__(self) -> StageLease:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _first_to_name(candidates: list[LeaseHolder]) -> LeaseHolder:
    """The holder among ``candidates``, else the contender that will hold (the smallest token)."""
    return min(candidates, key=lambda holder: (not holder.held, holder.token))
