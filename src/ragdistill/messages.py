"""Chat messages and the typed prompt segments they are rendered from: the leaf types every layer
shares (records, prompts, backends, training examples) without importing any of them.

A prompt is a list of :class:`Segment`. Rendering merges consecutive segments of the same chat role
into one message, so the text the model sees, the token counts and the stored episode record all come
from the same pieces. The distill builder removes ``hints`` and ``fewshot`` segments by kind, never by
regex.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


SegmentKind = Literal["system", "fewshot", "hints", "task", "history"]
SEGMENT_KINDS: tuple[SegmentKind, ...] = ("system", "fewshot", "hints", "task", "history")


@dataclass(frozen=True)
class Segment:
    kind: SegmentKind
    role: Role
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        kind, role = data["kind"], data["role"]
        if kind not in SEGMENT_KINDS:
            raise ValueError(f"unknown segment kind {kind!r}; expected one of {SEGMENT_KINDS}")
        if role not in ROLES:
            raise ValueError(f"unknown segment role {role!r}")
        return cls(kind=kind, role=role, text=str(data["text"]))


def render_messages(segments: Iterable[Segment], separator: str = "\n\n") -> list[ChatMessage]:
    """Merge consecutive same-role segments into chat messages (empty segments are skipped)."""
    messages: list[ChatMessage] = []
    for segment in segments:
        if not segment.text:
            continue
        if messages and messages[-1].role == segment.role:
            previous = messages.pop()
            messages.append(ChatMessage(segment.role, previous.content + separator + segment.text))
        else:
            messages.append(ChatMessage(segment.role, segment.text))
    return messages


def drop_kinds(segments: Iterable[Segment], kinds: Iterable[SegmentKind]) -> list[Segment]:
    dropped = set(kinds)
    return [segment for segment in segments if segment.kind not in dropped]
