"""Chat messages: the leaf types every layer shares (records, prompts, backends) without importing any
of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str
