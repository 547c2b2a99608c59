"""The containment rule of the artifact store: every path it resolves stays under its run root.

A path under the run root comes from a stage name, a manifest entry, a registry entry or a result key,
and any of them may have been edited by hand. So each one is normalised (``a/./b`` is ``a/b``) and
refused when it leaves the root (``..``), and on local disks the file it names must really lie under
the root's real path: a symbolic link anywhere on the way that points outside is refused, never
followed. A manifest's file names are stricter still: plain relative names inside the stage folder.

A stage folder's *known outputs* are glob patterns over its relative paths (``shard-*.jsonl``,
``adapter/**``): the files a stage writes there, and so the only files it may ever remove.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any, Protocol

from ragdistill.errors import UserFacingError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArtifactError(UserFacingError, RuntimeError):
    """An artifact is missing, corrupted or malformed; the message names the file."""


class ContainmentError(UserFacingError, ValueError):
    """A path that would leave the run root (``..``, a symbolic link pointing outside); nothing was read,
    written or deleted there."""


def normalised(relative: str, root_url: str) -> str:
    """``relative`` as a clean path under the root (``""`` for the root itself). Leading and trailing
    slashes are ignored, as the store always has; ``..`` that climbs above the root is refused."""
    if "\x00" in relative:
        raise ContainmentError(f"{relative!r} under {root_url} holds a NUL character: not a path")
    stripped = relative.strip("/")
    if not stripped:
        return ""
    clean = posixpath.normpath(stripped)
    if clean == ".":
        return ""
    if clean == ".." or clean.startswith("../"):
        raise ContainmentError(
            f"{relative!r} leaves the run root {root_url}: ragdistill reads, writes and deletes only under "
            "its run root; give a name without '..'"
        )
    return clean


def _inside(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def check_local(boundary: str, target: str, boundary_url: str) -> str:
    """``target`` (a local path lexically under ``boundary``, the run root's folder) once no symbolic link
    on its way from the root leads outside the root's real path. Only the components below the root are
    looked at (one ``lstat`` each, up to the first that does not exist); a link among them must resolve
    inside the root."""
    relative = os.path.relpath(target, boundary)
    if relative == ".":
        return target
    walked = boundary
    for part in relative.split(os.sep):
        walked = os.path.join(walked, part)
        try:
            mode = os.lstat(walked).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return target
        if stat.S_ISLNK(mode) and not _inside(os.path.realpath(walked), os.path.realpath(boundary)):
            raise ContainmentError(
                f"{boundary_url}/{os.path.relpath(walked, boundary)} leads to {os.path.realpath(walked)} (a "
                f"symbolic link), outside the run root: ragdistill never follows a link out of its run "
                f"root, so {relative!r} was not touched; replace the link with a folder of the run root, or "
                "point run.run_root at the real folder"
            )
    return target


def local_files(boundary: str, base: str) -> list[str]:
    """Every file under the local folder ``base`` (or ``base`` itself when it is a file), never entering a
    linked folder and leaving out links that lead outside the real path of ``boundary``."""
    if os.path.isfile(base):
        return [base]
    found: list[str] = []
    pending = [base]
    real_root: str | None = None
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_symlink():
                real_root = real_root or os.path.realpath(boundary)
                real = os.path.realpath(entry.path)
                if _inside(real, real_root) and not os.path.isdir(real):
                    found.append(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            else:
                found.append(entry.path)
    return found


def manifest_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a file of a manifest (a plain relative path inside the stage folder), or
    None when it can."""
    if not isinstance(name, str) or not name:
        return "not a file name"
    if "\x00" in name:
        return "a name with a NUL character"
    if name.startswith("/"):
        return "an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "a path that climbs out of the stage folder ('..')"
    if posixpath.normpath(name) != name or "." in parts:
        return "not a normalised relative path"
    return None


def manifest_entry_problem(entry: Any) -> str | None:
    """Why a manifest's record of one file (``{"sha256": …, "bytes": …}``) is malformed, or None."""
    if not isinstance(entry, dict):
        return "its record is not an object"
    size, sha = entry.get("bytes"), entry.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"its recorded size {size!r} is not a byte count"
    if not isinstance(sha, str) or not _SHA256.match(sha):
        return f"its recorded sha256 {sha!r} is not one"
    return None


def matches_output(name: str, patterns: Iterable[str]) -> bool:
    """Whether the stage-folder-relative ``name`` is one of the known outputs ``patterns``: each pattern
    segment matches one path segment (``*``, ``?``, ``[…]`` as in fnmatch, never across ``/``), and a
    final ``**`` matches one or more segments."""
    parts = name.split("/")
    for pattern in patterns:
        segments = pattern.split("/")
        if segments[-1] == "**":
            head = segments[:-1]
            if len(parts) > len(head) and all(map(fnmatchcase, parts[: len(head)], head)):
                return True
        elif len(parts) == len(segments) and all(map(fnmatchcase, parts, segments)):
            return True
    return False


class StoreAccess(Protocol):
    """What the manifest and record helpers use of an :class:`~ragdistill.store.ArtifactStore` (typed
    here, below the store, so those helpers never import the store back)."""

    def uri(self, relative: str) -> str: ...

    def read_bytes(self, relative: str, *, max_bytes: int | None = None) -> bytes: ...

    def digest(self, relative: str, *, max_bytes: int | None = None) -> tuple[str, int]: ...

    def write_text(self, relative: str, text: str) -> None: ...

    def read_text(self, relative: str) -> str: ...

    def write_json(self, relative: str, payload: Any) -> None: ...

    def read_json(self, relative: str) -> Any: ...

    def exists(self, relative: str) -> bool: ...

    def list(self, prefix: str = "", *, hidden: bool = False) -> list[str]: ...

    def delete(self, relative: str) -> None: ...

    def remove_empty_folders(self, prefix: str, *, keep_top: bool = False) -> None: ...
