"""The ALFWorld agent formats (ReAct, Act, StateAct): prompt layout, output parsing, history turns.

A format is pure: it builds :class:`Segment` lists and parses text, and never touches a model or an
environment. The rollout engine drives it:

1. ``segments = fmt.prompt(task, first_observation, examples, hints)``
2. generate with ``stop=fmt.stop``; ``parsed = fmt.parse(output)``
3. ``observation_without_env(parsed)`` is "OK." for a ReAct ``think:`` and "Nothing happens." for an
   output with no usable action; only when it is None does the engine step the environment with
   ``parsed.action``. An unparseable output gets "Nothing happens." — the text ALFWorld itself answers
   to an invalid command — without stepping the environment, so the model sees one signal for "that
   did nothing" and the paper's filter (2+ "Nothing happens." drops a trajectory) covers both cases.
4. ``segments += fmt.turn(output, observation)``

Prompt layout (chat roles): ``system`` (the household instruction + this format's output rules), then
user segments ``hints`` (only when given) → ``fewshot`` → ``task``, then ``history`` turns alternating
assistant (the model's output, canonicalised) and user (the observation).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from ragdistill.agents.parsing import (
    STATE_KEYS,
    clean_action,
    first_line,
    parse_state_lines,
    split_think,
    text_after_last_action_label,
)
from ragdistill.agents.segments import Segment
from ragdistill.environments.base import TaskInfo
from ragdistill.episodes import turn_segments

HOUSEHOLD_INSTRUCTION = "Interact with a household to solve a task."
THINK_OBSERVATION = "OK."
UNPARSEABLE_OBSERVATION = "Nothing happens."
HINTS_PREAMBLE = (
    "Rules learned from earlier attempts at similar tasks. Apply these rules silently: never repeat, "
    "quote or mention them in your replies. When a rule conflicts with what an observation says, "
    "prefer the observation."
)
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


@dataclass(frozen=True)
class ParsedOutput:
    """What one model output means.

    ``action`` is the command for the environment (None for a think or an unparseable output);
    ``error`` says why there is no action when the output was unusable; ``text`` is the canonical
    form stored as the assistant turn; ``state`` holds StateAct's ``key: value`` lines.
    """

    action: str | None
    is_think: bool = False
    thought: str | None = None
    error: str | None = None
    text: str = ""
    state: dict[str, str] = field(default_factory=dict)


def observation_without_env(parsed: ParsedOutput) -> str | None:
    """The observation for an output that must not reach the environment, else None."""
    if parsed.is_think:
        return THINK_OBSERVATION
    if parsed.action is None:
        return UNPARSEABLE_OBSERVATION
    return None


class AgentFormat(Protocol):
    name: str
    stop: list[str]

    def system_text(self) -> str: ...

    def prompt(
        self,
        task: TaskInfo,
        first_observation: str,
        examples: Sequence[str],
        hints: Sequence[str] | None = None,
    ) -> list[Segment]: ...

    def parse(self, output: str) -> ParsedOutput: ...

    def turn(self, output: str, observation: str) -> list[Segment]: ...

    def transcript(self, first_observation: str, turns: Sequence[tuple[str, str]]) -> str:
        """A solved example in this format: the first observation, then (output, observation) turns."""
        ...


def hint_block(hints: Sequence[str]) -> str:
    """The teacher's hint block: the paper's instructions, then one hint per line."""
    lines = [f"- {hint.strip()}" for hint in hints if hint.strip()]
    if not lines:
        raise ValueError("hint_block needs at least one non-empty hint; pass hints=None for no hint block")
    return HINTS_PREAMBLE + "\n" + "\n".join(lines)


def fewshot_block(examples: Sequence[str], how_to_read: str = "") -> str:
    """The few-shot segment: a header, how to read the transcripts, then the examples.

    Everything about "the examples" lives here, never in the system prompt: distillation removes this
    segment, and a student prompt must not refer to examples it does not have."""
    count = len(examples)
    if count == 1:
        header = "Here is an example."
    else:
        header = f"Here are {_NUMBER_WORDS.get(count, str(count))} examples."
    if how_to_read:
        header += " " + how_to_read
    return header + "\n\n" + "\n\n".join(example.strip() for example in examples)


def compact(observation: str) -> str:
    """An observation without blank lines (ALFWorld's first one has them; a blank line ends a StateAct turn)."""
    return "\n".join(line.rstrip() for line in observation.strip().splitlines() if line.strip())


def task_block(task: TaskInfo, first_observation: str) -> str:
    """The task segment's text: a header, then the first observation (plus the instruction if it lacks one)."""
    text = compact(first_observation)
    if task.instruction and "your task is to" not in text.lower():
        text += f"\nYour task is to: {task.instruction.strip()}"
    return "Here is the task.\n" + text


class _BaseFormat(ABC):
    """Shared prompt assembly; subclasses define the output rules, parsing and transcripts."""

    name: ClassVar[str]
    stop_strings: ClassVar[tuple[str, ...]]
    output_rules: ClassVar[str]
    how_to_read_examples: ClassVar[str] = ""

    def __init__(self) -> None:
        self.stop: list[str] = list(self.stop_strings)

    def system_text(self) -> str:
        return HOUSEHOLD_INSTRUCTION + "\n\n" + self.output_rules

    def prompt(
        self,
        task: TaskInfo,
        first_observation: str,
        examples: Sequence[str],
        hints: Sequence[str] | None = None,
    ) -> list[Segment]:
        segments = [Segment("system", "system", self.system_text())]
        if hints:
            segments.append(Segment("hints", "user", hint_block(hints)))
        if examples:
            segments.append(Segment("fewshot", "user", fewshot_block(examples, self.how_to_read_examples)))
        segments.append(Segment("task", "user", task_block(task, first_observation)))
        return segments

    @abstractmethod
    def parse(self, output: str) -> ParsedOutput: ...

    @abstractmethod
    def transcript(self, first_observation: str, turns: Sequence[tuple[str, str]]) -> str: ...

    def turn(self, output: str, observation: str) -> list[Segment]:
        return turn_segments(self.parse(output).text, observation)


def _parse_line(output: str, allow_think: bool, format_name: str) -> ParsedOutput:
    line = first_line(output)
    if not line:
        return ParsedOutput(action=None, error="empty output: no action", text="")
    thought = split_think(line)
    if thought is not None:
        if allow_think:
            return ParsedOutput(
                action=None, is_think=True, thought=thought, text=f"think: {thought}".rstrip()
            )
        return ParsedOutput(
            action=None, error=f"the {format_name} format has no think lines; reply with an action", text=line
        )
    action = clean_action(line)
    if not action:
        return ParsedOutput(action=None, error=f"no action in output line {line[:80]!r}", text=line)
    return ParsedOutput(action=action, text=action)


def _line_transcript(first_observation: str, turns: Sequence[tuple[str, str]]) -> str:
    lines = [compact(first_observation)]
    for output, observation in turns:
        lines.append(f"> {output.strip()}")
        lines.append(compact(observation))
    return "\n".join(lines)


class _OneLineFormat(_BaseFormat):
    """ReAct and Act: one line per turn, shown as ``> line`` in transcripts; they differ in thoughts."""

    allow_think: bool
    how_to_read_examples = (
        "In them, lines that start with `>` are the agent's replies and the line after each is what the "
        "household answered; write only your reply, without the `>`."
    )

    def parse(self, output: str) -> ParsedOutput:
        return _parse_line(output, allow_think=self.allow_think, format_name=self.name)

    def transcript(self, first_observation: str, turns: Sequence[tuple[str, str]]) -> str:
        return _line_transcript(first_observation, turns)


class ReActFormat(_OneLineFormat):
    name = "react"
    allow_think = True
    stop_strings = ("\n",)
    output_rules = (
        "Reply with exactly one line, either an action for the household (for example "
        "`go to cabinet 1`, `take apple 1 from countertop 1`, `open fridge 1`) or a thought that starts "
        'with `think:` (for example `think: First I need to find an apple.`). A thought is answered with "OK." '
        "and changes nothing. Write only your reply."
    )


class ActFormat(_OneLineFormat):
    name = "act"
    allow_think = False
    stop_strings = ("\n",)
    output_rules = (
        "Reply with exactly one line: an action for the household (for example `go to cabinet 1`, "
        "`take apple 1 from countertop 1`, `open fridge 1`). Write only your reply."
    )


class StateActFormat(_BaseFormat):
    name = "stateact"
    stop_strings = ("\n\n",)
    output_rules = (
        "Reply with exactly these six lines, in this order, and nothing after them:\n"
        "goal: <the task>\n"
        "locations visited: <places you have gone to so far, comma-separated, or None>\n"
        "current location: <where you are now>\n"
        "current inventory: <what you are holding, comma-separated, or None>\n"
        "thought: <a short reasoning step, or None>\n"
        "action: <one action for the household, for example go to cabinet 1>\n"
        "The household answers each reply with an observation."
    )

    def parse(self, output: str) -> ParsedOutput:
        state = parse_state_lines(output)
        thought = state.get("thought")
        value, end = text_after_last_action_label(output)
        if value is None:
            return ParsedOutput(
                action=None,
                thought=thought,
                error="no 'action:' line in the output",
                text=output.strip(),
                state=state,
            )
        text = output[:end].strip()
        action = clean_action(first_line(value))
        if not action:
            return ParsedOutput(
                action=None, thought=thought, error="the action line is empty", text=text, state=state
            )
        if split_think(action) is not None:
            return ParsedOutput(
                action=None,
                thought=thought,
                error="the stateact format puts thoughts on the thought line, not in the action",
                text=text,
                state=state,
            )
        return ParsedOutput(action=action, thought=thought, text=text, state=state)

    def transcript(self, first_observation: str, turns: Sequence[tuple[str, str]]) -> str:
        blocks = [compact(first_observation)]
        for output, observation in turns:
            blocks.append(output.strip())
            blocks.append(compact(observation))
        return "\n\n".join(blocks)


def render_state(
    goal: str,
    locations_visited: Sequence[str],
    current_location: str,
    current_inventory: Sequence[str],
    thought: str,
    action: str,
) -> str:
    """One StateAct turn, lists comma-joined and empty ones written as None."""
    values = (
        goal,
        ", ".join(locations_visited) or "None",
        current_location or "None",
        ", ".join(current_inventory) or "None",
        thought or "None",
        action,
    )
    return "\n".join(f"{key}: {value}" for key, value in zip(STATE_KEYS, values, strict=True))


FORMATS: dict[str, type[_BaseFormat]] = {"react": ReActFormat, "act": ActFormat, "stateact": StateActFormat}


def get_format(name: str) -> AgentFormat:
    try:
        return FORMATS[name]()
    except KeyError:
        raise ValueError(f"unknown agent format {name!r}; expected one of {sorted(FORMATS)}") from None
