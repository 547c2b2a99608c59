"""The episode record: one JSON line per finished episode, the contract between every stage.

A record is self-contained: it holds the prompt segments and, for every model call, the assistant text
exactly as later calls saw it in their history (``Step.history_text``), so :func:`call_segments`
rebuilds what the model saw without parsing anything again: a later parser change cannot alter a
rebuilt training example. This module imports no inference, config or agent-format code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ragdistill.environments.base import TaskInfo
from ragdistill.errors import UserFacingError
from ragdistill.messages import Segment

SCHEMA_VERSION = 2
"""2: ``Step.history_text``, ``schema_version``, ``prompt_version`` and ``error_kind`` were added."""

EpisodeSource = Literal["agent", "teacher", "expert"]
StopReason = Literal["done", "max_calls", "repeated_output", "context_overflow", "error"]
ErrorKind = Literal["request", "transient"]
"""``request``: this episode's own input failed (kept as a finished failure); ``transient``: the
infrastructure failed (a worker crash, a lost HTTP call): the episode is played again on resume."""


class RecordError(UserFacingError, ValueError):
    """A stored record that cannot be read as an episode; the message says which and why."""


@dataclass
class Step:
    """One model call and what it led to. A ReAct ``think:`` call has ``is_think`` and observation "OK."."""

    output: str
    action: str | None
    is_think: bool
    observation: str
    reward: float
    done: bool
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = ""
    parse_error: str | None = None
    dropped_turns: int = 0
    history_text: str = ""
    """The assistant turn as the history of later calls showed it (the format's canonical text)."""
    info: dict[str, Any] = field(default_factory=dict)
    """What the environment reported with this step beyond the observation (WebShop: every part of the
    reward on the purchase step); stored only when not empty."""


@dataclass
class EpisodeRecord:
    run_id: str
    env: str
    split: str
    task_id: str
    task_type: str
    instruction: str
    agent: str
    source: EpisodeSource
    model: str
    adapter: str | None
    seed: int
    prompt: list[Segment]
    steps: list[Step] = field(default_factory=list)
    success: bool = False
    score: float = 0.0
    env_steps: int = 0
    model_calls: int = 0
    policy_prompt_tokens: int = 0
    policy_completion_tokens: int = 0
    retrieval_tokens: int = 0
    hint_ids: list[str] = field(default_factory=list)
    retrieval_note: str | None = None
    stop_reason: StopReason = "done"
    truncated_turns: int = 0
    error: str | None = None
    error_kind: ErrorKind | None = None
    seconds: float = 0.0
    prompt_version: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def policy_tokens(self) -> int:
        return self.policy_prompt_tokens + self.policy_completion_tokens

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["prompt"] = [segment.to_dict() for segment in self.prompt]
        for step in data["steps"]:
            if not step["info"]:
                del step["info"]
        return data

    @classmethod
    def for_task(
        cls,
        task: TaskInfo,
        *,
        run_id: str,
        agent: str,
        source: EpisodeSource,
        model: str,
        prompt: list[Segment],
        adapter: str | None = None,
        seed: int = 0,
        **fields: Any,
    ) -> EpisodeRecord:
        """A new record of an episode of ``task`` (its outcome fields are filled as it is played)."""
        return cls(
            run_id=run_id,
            env=task.env,
            split=task.split,
            task_id=task.task_id,
            task_type=task.task_type,
            instruction=task.instruction,
            agent=agent,
            source=source,
            model=model,
            adapter=adapter,
            seed=seed,
            prompt=prompt,
            **fields,
        )

    @property
    def is_transient_failure(self) -> bool:
        """An infrastructure fault ended it: resuming the stage plays it again."""
        return self.stop_reason == "error" and self.error_kind == "transient"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeRecord:
        """Rebuild a record, failing with the missing or unknown field's name on a malformed line."""
        version = data.get("schema_version", 1)
        if version != SCHEMA_VERSION:
            raise RecordError(
                f"episode record for task {data.get('task_id')!r} has schema version {version}, this "
                f"ragdistill reads {SCHEMA_VERSION}: run the stage that wrote it again"
            )
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise RecordError(f"episode record has unknown fields {sorted(unknown)}")
        fields = dict(data)
        try:
            fields["prompt"] = [Segment.from_dict(item) for item in data["prompt"]]
            fields["steps"] = [Step(**step) for step in data.get("steps", [])]
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as error:
            raise RecordError(f"malformed episode record for task {data.get('task_id')!r}: {error}") from None


def turn_segments(history_text: str, observation: str) -> list[Segment]:
    """One history turn: the model's output as the history shows it, then what the environment said."""
    return [Segment("history", "assistant", history_text), Segment("history", "user", observation.strip())]


def history_segments(steps: Sequence[Step]) -> list[Segment]:
    """The history turns of recorded steps, from their stored texts (no parsing)."""
    return [segment for step in steps for segment in turn_segments(step.history_text, step.observation)]


def call_segments(record: EpisodeRecord, step_index: int) -> list[Segment]:
    """Exactly the segments the model saw for call ``step_index`` of a recorded episode: the prompt,
    then the history turns of the earlier calls minus the oldest ``dropped_turns`` of them."""
    history = history_segments(record.steps[:step_index])
    dropped = record.steps[step_index].dropped_turns
    return [*record.prompt, *history[2 * dropped :]]


def episode_segments(record: EpisodeRecord) -> list[Segment]:
    """The whole episode as one conversation: the prompt, then every call's output and observation."""
    return [*record.prompt, *history_segments(record.steps)]
