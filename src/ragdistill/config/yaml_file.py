"""Reading a config file as YAML within bounds: its size, its nesting, how far its aliases expand, no
duplicate or merge keys, and errors that give a line number or key but never a line of the file.

PyYAML's safe loader builds no objects but recurses once per nesting level (1,000 brackets end in a
RecursionError), keeps the last of two equal keys without a word, and shares an anchored value
wherever it is aliased: a few kilobytes of ``&a [*b, *b, …]`` stand for billions of values, which cost
gigabytes and minutes once anything walks them. Anchors and aliases stay usable (one backend block for
two roles), but the expanded config is copied out value by value, at most ``MAX_VALUES`` of them, so a
bomb is refused after a few milliseconds. Merge keys (``<<``) are refused: merging an alias several
times copies its keys as often, a bomb of its own inside the loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from ragdistill.config.base import ConfigError
from ragdistill.config.limits import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_VALUES, shown_key

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """Something the bounded loader does not accept, at a line of the file or under a key."""

    def __init__(self, mark: yaml.Mark | None, problem: str, key: str = "") -> None:
        super().__init__(problem)
        self.line = mark.line + 1 if mark is not None else None
        self.problem = f"{key}: {problem}" if key else problem


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing deep nesting while it composes, and duplicate and merge keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._keys: list[str | None] = []

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        """The composer calls this for every node, with the key node as ``index`` for a mapping's value:
        the stack of keys is the dotted key of the node being composed."""
        self._keys.append(index.value if isinstance(index, ScalarNode) else None)
        try:
            if len(self._keys) > MAX_DEPTH + 1:
                raise _Refused(
                    self.peek_event().start_mark,
                    f"nested deeper than {MAX_DEPTH} levels",
                    _dotted(self._keys),
                )
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._keys.pop()

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                raise _Refused(
                    key_node.start_mark, "YAML merge keys (<<) are not accepted; write the keys out"
                )
            key = self.construct_object(key_node, deep=True)
            try:
                first = first_lines.get(key)
            except TypeError:
                continue  # an unhashable key: the safe loader's own error names it
            if first is not None:
                raise _Refused(
                    key_node.start_mark, f"duplicate key {shown_key(key)!r} (first at line {first})"
                )
            first_lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def _dotted(keys: list[Any]) -> str:
    return ".".join(shown_key(part) for part in keys if part is not None)


class _Expansion:
    """Copies loaded data so that no value is shared (an override of one role's backend must not change
    another's that came from the same anchor), counting every value and level it copies."""

    def __init__(self) -> None:
        self.values = 0

    def copy(self, value: Any, keys: list[Any], depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise _Refused(
                None, f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded", _dotted(keys)
            )
        if not isinstance(value, dict | list):
            return value
        self.values += len(value)
        if self.values > MAX_VALUES:
            raise _Refused(
                None,
                f"the config holds more than {MAX_VALUES:,} values once its aliases (*name) are expanded; "
                "a config is a few settings",
                _dotted(keys),
            )
        if isinstance(value, dict):
            return {name: self.copy(inner, [*keys, name], depth + 1) for name, inner in value.items()}
        return [self.copy(inner, keys, depth + 1) for inner in value]


def read_yaml_file(path: Path) -> Any:
    """The data in the YAML file ``path``, or ConfigError naming the file, the line and the problem."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or type(error).__name__})") from None
    if max(size, len(raw)) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: {max(size, len(raw)):,} bytes; a config file is at most {MAX_CONFIG_BYTES // 1024} KiB"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {error.start}); a config is a YAML text file"
        ) from None
    loader = _BoundedLoader(text)
    try:
        return _Expansion().copy(loader.get_single_data(), [])
    except _Refused as refused:
        where = f"line {refused.line}: " if refused.line else ""
        raise ConfigError(f"{path}: {where}{refused.problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(error)}") from None
    except ValueError:  # a scalar the safe loader cannot convert: a date out of range, a 5,000-digit number
        raise ConfigError(f"{path}: not valid YAML: a date or number that cannot be read") from None
    finally:
        loader.dispose()


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message without the quoted snippet of the file it appends."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = "; ".join(part for part in (error.context, error.problem) if part)
        return f"{where}{problem[:200]}"
    if isinstance(error, yaml.reader.ReaderError):
        return f"character {error.position}: {error.reason}"
    return type(error).__name__
