"""One interface for every inference backend: a batch of chat requests in, texts and token counts out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ragdistill.config import SamplingConfig
from ragdistill.errors import UserFacingError
from ragdistill.messages import ChatMessage

FailureKind = Literal["request", "transient"]


@dataclass(frozen=True)
class GenerationRequest:
    """One model call. ``json_schema`` asks for schema-constrained decoding where the backend has it."""

    messages: list[ChatMessage]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 42
    stop: list[str] = field(default_factory=list)
    json_schema: dict[str, Any] | None = None
    adapter: str | None = None

    @classmethod
    def sampled(
        cls, messages: list[ChatMessage], sampling: SamplingConfig, **extra: Any
    ) -> GenerationRequest:
        """A request with a role's sampling settings (max tokens, temperature, top-p, seed)."""
        return cls(
            messages=messages,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            **extra,
        )


@dataclass(frozen=True)
class Generation:
    """One request's outcome, in its place in the batch: a completion, or a failure of this request alone.

    A failed request has ``finish_reason == "error"``, empty ``text``, ``completion_tokens == 0``,
    ``prompt_tokens`` = the prompt's count when the backend knew it (else 0), ``error`` = a message that
    names the request's index in the batch, the server or engine and the cause, and ``error_kind``:

    - ``"transient"``: the infrastructure failed (connection error, timeout, 429/5xx or a malformed body
      after the backend's own retries); the same request may succeed later.
    - ``"request"``: this request cannot be served as it is (prompt over the context window, a 4xx that
      is not retryable, a reply without choices, an engine error on this request alone); sending it
      again unchanged fails again.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    error_kind: FailureKind | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @classmethod
    def failure(cls, kind: FailureKind, error: str, prompt_tokens: int = 0) -> Generation:
        return cls(
            text="",
            finish_reason="error",
            prompt_tokens=prompt_tokens,
            completion_tokens=0,
            error=error,
            error_kind=kind,
        )


class Backend(Protocol):
    """Generates for many requests at once; results come back in request order, one per request.

    ``generate`` never raises because one request failed: that request's place holds a failed
    :class:`Generation` (``failed``, ``error``, ``error_kind``) and every other request is served. It
    raises :class:`BackendError` only for a fault that would fail every request, so the whole backend is
    unusable until the user fixes a setting: a base URL with the wrong scheme, a 401/403 (the key), a
    404/405 (the URL, or a model or adapter the server does not serve), a LoRA adapter that is not
    there or a LoRA-less engine asked for one, a dead engine. Its message names the server or engine
    and what to fix.
    """

    name: str

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]: ...

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        """(prompt tokens after the chat template, completion tokens) with this model's tokenizer."""
        ...

    def close(self) -> None: ...


def prompt_over_window(prompt_tokens: int, max_model_len: int) -> str:
    """Why an in-process engine refuses a prompt: it leaves no room for a single completion token."""
    return (
        f"the prompt has {prompt_tokens} tokens, the context window (model.max_model_len) is "
        f"{max_model_len}; drop old history turns before calling"
    )


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class BackendError(UserFacingError, RuntimeError):
    """A backend cannot serve any request (see :class:`Backend`); the message says what to fix."""
