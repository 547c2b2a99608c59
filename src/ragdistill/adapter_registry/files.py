"""Reading the registry's JSON files back: each is checked against the record it must hold.

The registry is plain files under the run root that anyone with access may edit, copy or cut short.
A file that is not exactly what the registry writes (not JSON, a list instead of an object, a missing
or an extra field, a version name such as ``vX``, a version that is not its file's) stops every reader
with one line naming the file, instead of a traceback or a silently wrong history.
"""

from __future__ import annotations

import posixpath
from functools import cache
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from ragdistill.adapter_registry.entries import Event, Pointer, RegistryEntry
from ragdistill.errors import UserFacingError
from ragdistill.store import ArtifactError, ArtifactStore

Record = TypeVar("Record", RegistryEntry, Pointer, Event)

_WHAT = {RegistryEntry: "registry version entry", Pointer: "registry pointer", Event: "registry event"}
_SHOWN_PROBLEMS = 3
_SHOWN_NAME_CHARS = 60
_UNKNOWN_FIELD = {"extra_forbidden", "unexpected_keyword_argument"}


class RegistryFileError(UserFacingError, ValueError):
    """A registry file that is not what the registry writes; the message names it and what to do."""


@cache
def _validator(kind: type[Any]) -> TypeAdapter[Any]:
    """Each record class forbids fields it lacks itself (``entries.STORED_RECORD``)."""
    return TypeAdapter(kind)


def read_record(store: ArtifactStore, relative: str, kind: type[Record]) -> Record:
    """The ``kind`` record stored at ``relative``, checked field by field, or RegistryFileError."""
    uri = store.uri(relative)
    try:
        data = store.read_json(relative)
    except ArtifactError as error:
        raise RegistryFileError(f"{error}; {_remedy(relative)}") from None
    if not isinstance(data, dict):
        raise RegistryFileError(
            f"{uri} is not a {_WHAT[kind]}: it holds a JSON {type(data).__name__}, not an object; "
            f"{_remedy(relative)}"
        )
    try:
        record: Record = _validator(kind).validate_python(data)
    except ValidationError as error:
        problems = [
            f"{'.'.join(str(part)[:_SHOWN_NAME_CHARS] for part in item['loc']) or '(top level)'}: "
            + ("unknown field" if item["type"] in _UNKNOWN_FIELD else item["msg"])
            for item in error.errors()
        ]
        more = f" (and {len(problems) - _SHOWN_PROBLEMS} more)" if len(problems) > _SHOWN_PROBLEMS else ""
        raise RegistryFileError(
            f"{uri} is not a {_WHAT[kind]}: {'; '.join(problems[:_SHOWN_PROBLEMS])}{more}; {_remedy(relative)}"
        ) from None
    stem = posixpath.splitext(posixpath.basename(relative))[0]
    if isinstance(record, RegistryEntry) and record.version != stem:
        raise RegistryFileError(
            f"{uri} holds version {record.version!r}, not {stem!r} as its name says; {_remedy(relative)}"
        )
    if isinstance(record, Event) and stem.isdigit() and record.sequence != int(stem):
        raise RegistryFileError(
            f"{uri} holds event {record.sequence}, not {int(stem)} as its name says; {_remedy(relative)}"
        )
    return record


def _remedy(relative: str) -> str:
    return (
        f"the registry writes each of its files whole, so {posixpath.basename(relative)} was changed outside "
        "ragdistill: restore it from a backup or move it out of the registry"
    )
