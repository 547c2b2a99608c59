"""The agent formats (ReAct, Act, StateAct): prompt layout, output parsing, history turns.

A format is pure: it builds :class:`Segment` lists and parses text, and never touches a model or an
environment. Everything it says about the environment comes from the environment's profile
(``EnvProfile.agent``: the instruction, example actions, how thoughts are written, StateAct's keys).
The rollout engine drives it:

1. ``segments = fmt.prompt(task, first_observation, examples, hints)``
2. generate with ``stop=fmt.stop``; ``parsed = fmt.parse(output)``
3. ``fmt.observation_without_env(parsed)`` is the profile's think answer ("OK.") for a ReAct thought
   and the profile's invalid observation for an output with no usable action; only when it is None
   does the engine step the environment with ``parsed.action``. An unparseable output gets the text the
   environment itself answers to an invalid action, without stepping the environment, so the model sees
   one signal for "that did nothing" and the paper's invalid-action filter covers both cases.
4. ``segments += fmt.turn(output, observation)``

Prompt layout (chat roles): ``system`` (the environment's instruction + this format's output rules),
then user segments ``hints`` (only when given) → ``fewshot`` → ``task``, then ``history`` turns
alternating assistant (the model's output, canonicalised) and user (the observation).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from ragdistill.agents.parsing import (
    action_problem,
    clean_action,
    first_line,
    parse_state_lines,
    split_think,
    text_after_last_action_label,
    think_text,
)
from ragdistill.environments.base import TaskInfo
from ragdistill.environments.profile import AgentStyle, DemonstratedStep, EnvProfile, StateValue
from ragdistill.episodes import turn_segments
from ragdistill.messages import Segment

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


class AgentFormat(Protocol):
    name: str
    stop: list[str]
    profile: EnvProfile

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

    def observation_without_env(self, parsed: ParsedOutput) -> str | None:
        """The observation for an output that must not reach the environment, else None."""
        ...

    def transcript(self, first_observation: str, turns: Sequence[tuple[str, str]]) -> str:
        """A solved example in this format: the first observation, then (output, observation) turns."""
        ...

    def demonstrated_turns(self, step: DemonstratedStep) -> list[tuple[str, str]]:
        """An expert step as this format's (model output, observation) turns."""
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
    """An observation without blank lines (first observations may have them; a blank line ends a
    StateAct turn)."""
    return "\n".join(line.rstrip() for line in observation.strip().splitlines() if line.strip())


def task_block(task: TaskInfo, first_observation: str, task_prefix: str) -> str:
    """The task segment's text: a header, then the first observation (plus the instruction, introduced
    by ``task_prefix``, if the observation does not state it)."""
    text = compact(first_observation)
    marker = task_prefix.strip().rstrip(":").strip().lower()
    if task.instruction and marker not in text.lower():
        text += f"\n{task_prefix}{task.instruction.strip()}"
    return "Here is the task.\n" + text


def _capitalised(phrase: str) -> str:
    return phrase[:1].upper() + phrase[1:]


def _quoted_examples(style: AgentStyle) -> str:
    return ", ".join(f"`{action}`" for action in style.action_examples)


class _BaseFormat(ABC):
    """Shared prompt assembly; subclasses define the output rules, parsing and transcripts."""

    name: ClassVar[str]
    stop_strings: ClassVar[tuple[str, ...]]

    def __init__(self, profile: EnvProfile) -> None:
        self.profile = profile
        self.style = profile.agent
        self.stop: list[str] = list(self.stop_strings)

    @abstractmethod
    def output_rules(self) -> str: ...

    def how_to_read_examples(self) -> str:
        return ""

    def system_text(self) -> str:
        return self.style.instruction + "\n\n" + self.output_rules()

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
            segments.append(Segment("fewshot", "user", fewshot_block(examples, self.how_to_read_examples())))
        segments.append(Segment("task", "user", task_block(task, first_observation, self.style.task_prefix)))
        return segments

    @abstractmethod
    def parse(self, output: str) -> ParsedOutput: ...

    @abstractmethod
    def transcript(self, first_observation: str, turns: Sequence[tuple[str, str]]) -> str: ...

    @abstractmethod
    def demonstrated_turns(self, step: DemonstratedStep) -> list[tuple[str, str]]: ...

    def turn(self, output: str, observation: str) -> list[Segment]:
        return turn_segments(self.parse(output).text, observation)

    def observation_without_env(self, parsed: ParsedOutput) -> str | None:
        if parsed.is_think:
            return self.style.think_observation
        if parsed.action is None:
            return self.profile.invalid_observation
        return None

    def _action(self, line: str) -> str:
        return clean_action(line, lowercase=self.style.lowercase_actions)


def _line_transcript(first_observation: str, turns: Sequence[tuple[str, str]]) -> str:
    lines = [compact(first_observation)]
    for output, observation in turns:
        lines.append(f"> {output.strip()}")
        lines.append(compact(observation))
    return "\n".join(lines)


class _OneLineFormat(_BaseFormat):
    """ReAct and Act: one line per turn, shown as ``> line`` in transcripts; they differ in thoughts."""

    allow_think: ClassVar[bool]

    def how_to_read_examples(self) -> str:
        return (
            "In them, lines that start with `>` are the agent's replies and the line after each is what "
            f"{self.style.env_noun} answered; write only your reply, without the `>`."
        )

    def parse(self, output: str) -> ParsedOutput:
        line = first_line(output)
        if not line:
            return ParsedOutput(action=None, error="empty output: no action", text="")
        thought = split_think(line)
        if thought is not None:
            if self.allow_think:
                text = think_text(thought, self.style.think_syntax)
                return ParsedOutput(action=None, is_think=True, thought=thought, text=text)
            return ParsedOutput(
                action=None,
                error=f"the {self.name} format has no think lines; reply with an action",
                text=line,
            )
        action = self._action(line)
        if not action:
            return ParsedOutput(action=None, error=f"no action in output line {line[:80]!r}", text=line)
        if (problem := action_problem(action)) is not None:
            return ParsedOutput(action=None, error=problem, text=line)
        return ParsedOutput(action=action, text=action)

    def transcript(self, first_observation: str, turns: Sequence[tuple[str, str]]) -> str:
        return _line_transcript(first_observation, turns)

    def demonstrated_turns(self, step: DemonstratedStep) -> list[tuple[str, str]]:
        turns: list[tuple[str, str]] = []
        if self.allow_think:
            answer = self.style.think_observation
            turns.extend((think_text(thought, self.style.think_syntax), answer) for thought in step.thoughts)
        turns.append((step.action, step.observation))
        return turns


class ReActFormat(_OneLineFormat):
    name = "react"
    allow_think = True
    stop_strings = ("\n",)

    def output_rules(self) -> str:
        style = self.style
        how = "written as `think[...]`" if style.think_syntax == "brackets" else "that starts with `think:`"
        return (
            f"Reply with exactly one line, either an action for {style.env_noun} (for example "
            f"{_quoted_examples(style)}) or a thought {how} (for example "
            f"`{think_text(style.think_example, style.think_syntax)}`). A thought is answered with "
            f'"{style.think_observation}" and changes nothing. Write only your reply.'
        )


class ActFormat(_OneLineFormat):
    name = "act"
    allow_think = False
    stop_strings = ("\n",)

    def output_rules(self) -> str:
        return (
            f"Reply with exactly one line: an action for {self.style.env_noun} (for example "
            f"{_quoted_examples(self.style)}). Write only your reply."
        )


class StateActFormat(_BaseFormat):
    """One ``key: value`` line per state key (the profile's, ending in ``action``), a blank line after."""

    name = "stateact"
    stop_strings = ("\n\n",)

    def output_rules(self) -> str:
        style = self.style
        count = len(style.state_keys)
        lines = [
            f"{key}: <{description}>"
            for key, description in zip(style.state_keys, style.state_descriptions, strict=True)
        ]
        return (
            f"Reply with exactly these {_NUMBER_WORDS.get(count, str(count))} lines, in this order, and "
            "nothing after them:\n"
            + "\n".join(lines)
            + f"\n{_capitalised(style.env_noun)} answers each reply with an observation."
        )

    def parse(self, output: str) -> ParsedOutput:
        state = parse_state_lines(output, self.style.state_keys)
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
        action = self._action(first_line(value))
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
        if (problem := action_problem(action)) is not None:
            return ParsedOutput(action=None, thought=thought, error=problem, text=text, state=state)
        return ParsedOutput(action=action, thought=thought, text=text, state=state)

    def transcript(self, first_observation: str, turns: Sequence[tuple[str, str]]) -> str:
        blocks = [compact(first_observation)]
        for output, observation in turns:
            blocks.append(output.strip())
            blocks.append(compact(observation))
        return "\n\n".join(blocks)

    def render_state(self, values: Mapping[str, StateValue]) -> str:
        return render_state(self.style.state_keys, values)

    def demonstrated_turns(self, step: DemonstratedStep) -> list[tuple[str, str]]:
        values = {**step.state, "thought": " ".join(step.thoughts), "action": step.action}
        return [(self.render_state(values), step.observation)]


def render_state(keys: Sequence[str], values: Mapping[str, StateValue]) -> str:
    """One StateAct turn, a line per key: lists comma-joined, empty or missing values written as None.

    ``values`` must hold the ``action``; keys not in ``keys`` are ignored."""
    if not values.get("action"):
        raise ValueError("a StateAct turn needs its action")
    lines: list[str] = []
    for key in keys:
        value = values.get(key)
        if value is not None and not isinstance(value, str):
            value = ", ".join(value)
        lines.append(f"{key}: {value or 'None'}")
    return "\n".join(lines)


FORMATS: dict[str, type[_BaseFormat]] = {"react": ReActFormat, "act": ActFormat, "stateact": StateActFormat}


def get_format(name: str, profile: EnvProfile) -> AgentFormat:
    """The agent format ``name`` speaking about the environment of ``profile``."""
    try:
        format_class = FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown agent format {name!r}; expected one of {sorted(FORMATS)}") from None
    return format_class(profile)
