"""Training checkpoints kept on an object-store run root, so a training killed on one machine resumes
on another.

On an ``s3://`` run root a training runs in a local working folder (a cache), whose checkpoints a new
machine lacks. :class:`CheckpointSync` mirrors that folder's ``checkpoints/`` to
``adapters/<name>/checkpoints/`` in the store while the training runs (machine 0 pushes its newest
complete checkpoint every few seconds, and once more at the end), and before a training starts :meth:`CheckpointSync.pull` copies the
store's newest complete checkpoint into a working folder that has none as new, where the training's own
resume finds it.

A checkpoint is complete when it holds ``trainer_state.json``, which the Trainer writes last; the sync
uploads it last too and downloads it last, so a checkpoint cut off by a kill (of the training, of the
upload or of the download) is never taken for a complete one. Checkpoints the Trainer rotates out
locally (``training.save_total_limit``) are removed from the store after a newer one is complete there.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ragdistill.store import ArtifactStore
from ragdistill.training.replicas import CHECKPOINT_COMPLETE_FILE, last_complete_checkpoint

log = logging.getLogger("ragdistill.stages")

CHECKPOINTS_DIR = "checkpoints"
PUSH_INTERVAL_S = 2.0
"""How often machine 0 looks for a new checkpoint to upload while its training runs."""
CHECKPOINT_PREFIX = "checkpoint-"


def checkpoint_step(name: str) -> int | None:
    """N of a ``checkpoint-N`` folder name, None for any other name."""
    digits = name[len(CHECKPOINT_PREFIX) :] if name.startswith(CHECKPOINT_PREFIX) else ""
    return int(digits) if digits.isdigit() else None


class CheckpointSync:
    """The checkpoints of the local working folder ``local`` (the Trainer's ``checkpoints/``) and of
    ``<stage_dir>/checkpoints`` in ``store``; see the module docstring."""

    def __init__(self, store: ArtifactStore, stage_dir: str, local: Path) -> None:
        self.store, self.prefix, self.local = store, f"{stage_dir}/{CHECKPOINTS_DIR}", local
        self._stored: dict[str, set[str]] | None = None
        """By checkpoint name, the files of it in the store (listed once, then kept up to date here)."""
        self._lock = threading.Lock()

    def stored_checkpoints(self) -> dict[str, set[str]]:
        """The checkpoints in the store: by name, the files each holds (relative to its folder)."""
        found: dict[str, set[str]] = {}
        for path in self.store.list(self.prefix):
            name, _, inner = posixpath.relpath(path, self.prefix).partition("/")
            if checkpoint_step(name) is not None and inner:
                found.setdefault(name, set()).add(inner)
        return found

    def pull(self) -> str | None:
        """Copy the store's newest complete checkpoint into the working folder unless the folder holds
        one as new; the name of the checkpoint copied (None: nothing to copy)."""
        stored = self.stored_checkpoints()
        complete = [name for name, files in stored.items() if CHECKPOINT_COMPLETE_FILE in files]
        newest = max(complete, key=lambda name: checkpoint_step(name) or 0, default=None)
        if newest is None:
            return None
        here = last_complete_checkpoint(self.local, remove_incomplete=False)
        if here is not None and (checkpoint_step(here.name) or 0) >= (checkpoint_step(newest) or 0):
            return None
        files = sorted(stored[newest], key=lambda inner: inner == CHECKPOINT_COMPLETE_FILE)
        for inner in files:
            self.store.download_file(f"{self.prefix}/{newest}/{inner}", self.local / newest / inner)
        with self._lock:
            self._stored = stored
        log.info("copied %s from %s to resume the training here", newest, self.store.uri(self.prefix))
        return newest

    def push(self) -> list[str]:
        """Upload what the store lacks of the working folder's newest complete checkpoint (each file once,
        the trainer state last; an older one when the Trainer rotates the newest out meanwhile), then
        remove from the store the checkpoints no longer in the folder; the names of the checkpoints
        uploaded to. Newest first, because a resume needs only the newest, and a training that saves
        faster than the uploads go rotates older ones away before they would be complete in the store."""
        with self._lock:
            stored = self._stored if self._stored is not None else self.stored_checkpoints()
            self._stored = stored
            uploaded = []
            for name in reversed(self._local_complete()):
                if self._upload(stored, name):
                    uploaded.append(name)
                if CHECKPOINT_COMPLETE_FILE in stored.get(name, ()):
                    break
            local = {path.name for path in self.local.glob(f"{CHECKPOINT_PREFIX}*") if path.is_dir()}
            for name in sorted(set(stored) - local):
                self.store.delete(f"{self.prefix}/{name}")
                del stored[name]
        return uploaded

    def clear(self) -> None:
        """Remove every checkpoint from the store (a finished training needs none)."""
        with self._lock:
            self.store.delete(self.prefix)
            self._stored = {}

    @contextmanager
    def pushing(self, interval_s: float = PUSH_INTERVAL_S) -> Iterator[None]:
        """Push every ``interval_s`` seconds in a background thread while the block runs (a failed push
        is logged and tried again at the next interval), and once more when the block fails, so the
        checkpoints of a failed training are all in the store (a finished one needs none)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                try:
                    self.push()
                except Exception as error:  # the next interval tries again; the final push raises
                    log.warning(
                        "could not copy the training's checkpoints to %s: %s",
                        self.store.uri(self.prefix),
                        error,
                    )

        thread = threading.Thread(target=loop, name="checkpoint-sync", daemon=True)
        thread.start()
        try:
            yield
        except BaseException:
            stop.set()
            thread.join()
            self.push()
            raise
        finally:
            stop.set()
            thread.join()

    def _local_complete(self) -> list[str]:
        names = [
            path.name
            for path in self.local.glob(f"{CHECKPOINT_PREFIX}*")
            if path.is_dir()
            and checkpoint_step(path.name) is not None
            and (path / CHECKPOINT_COMPLETE_FILE).is_file()
        ]
        return sorted(names, key=lambda name: checkpoint_step(name) or 0)

    def _upload(self, stored: dict[str, set[str]], name: str) -> bool:
        """Upload the files of local checkpoint ``name`` the store lacks; False when it has them all, or
        when the Trainer removed the checkpoint meanwhile."""
        folder = self.local / name
        try:
            files = sorted(
                (path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()),
                key=lambda inner: inner == CHECKPOINT_COMPLETE_FILE,
            )
        except FileNotFoundError:
            return False
        known = stored.setdefault(name, set())
        missing = [inner for inner in files if inner not in known]
        for inner in missing:
            try:
                self.store.upload_file(f"{self.prefix}/{name}/{inner}", folder / inner)
            except FileNotFoundError:  # rotated out while uploading: the next checkpoint replaces it
                return False
            known.add(inner)
        return bool(missing)
