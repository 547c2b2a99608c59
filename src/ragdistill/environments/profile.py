"""An environment's profile: every fact about it that agents, mining, retrieval and training need.

Agents, mining, retrieval, datasets and evaluation read a :class:`EnvProfile` and never name an
environment. Each environment ships its own profile next to its code (``environments/alfworld``,
``environments/webshop``) and registers it with :func:`ragdistill.environments.registry.register_env`;
adding a third environment touches ``environments/`` and ``configs/`` only.

This module is a leaf: it imports nothing from ragdistill but the leaf type of expert trajectories, so
every layer may depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ragdistill.trajectories import ExpertTrajectory

ThinkSyntax = Literal["label", "brackets"]
"""How a ReAct thought is written: ``think: …`` (ALFWorld, as in ReAct's prompts) or ``think[…]``
(WebShop, as in ReAct's WebShop prompts). Parsers accept both; stored and shown turns use this one."""

FEWSHOT_SOURCES: tuple[str, ...] = ("react", "expert")
"""Few-shot sources an environment may offer (``none`` is always available)."""


@dataclass(frozen=True)
class HintStyle:
    """What a mined hint looks like in one environment (the paper's stage B)."""

    description: str
    """The environment in one phrase, for the extraction prompt."""
    max_hints: int
    """Most hints one failure may give (the paper: ALFWorld 4, WebShop 2)."""
    placeholders: tuple[str, ...]
    """The only ``{names}`` a hint may use."""
    examples: tuple[str, ...]
    """Good hints, shown to the extractor."""
    verbs: tuple[str, ...] = ()
    """Verbs a constrained hint may start with (``MiningConfig.constrain_hint_text``)."""
    generality_rule: str = "it never names this episode's objects or numbers"
    """The extraction prompt's "Each hint … is general:" clause: what an episode-specific leftover looks
    like here, e.g. ``it never names this episode's objects or numbers (write {object}, not "mug 2")``."""
    episode_specific: Callable[[str], bool] | None = None
    """True for a hint text that still names the one episode (a numbered object, a product id); such
    hints are rejected as ``episode_specific``. None: no such check."""
    rewrite: Callable[[str], str] | None = None
    """A rewrite applied before validation (e.g. prices become ``{price}``). None: the text is kept."""


@dataclass(frozen=True)
class AgentStyle:
    """How the agent formats (ReAct, Act, StateAct) speak about this environment."""

    instruction: str
    """The system prompt's first line, the one line a distilled student keeps."""
    env_noun: str
    """Who answers each action, as the output rules call it ("the household", "the shop")."""
    action_examples: tuple[str, ...]
    """Example actions for the output rules, valid in this environment's grammar."""
    think_example: str
    """An example thought for ReAct's output rules (the text only, without ``think``)."""
    state_keys: tuple[str, ...]
    """StateAct's lines in the order the model writes them; the last is always ``action``. A
    ``thought`` key, when present, holds the reasoning step."""
    state_descriptions: tuple[str, ...]
    """What goes on each StateAct line, same order as ``state_keys`` (shown as ``key: <description>``)."""
    think_syntax: ThinkSyntax = "label"
    lowercase_actions: bool = True
    """Whether parsed actions are lower-cased (commands that are case-blind: yes; clicks on page text
    whose case matters: no)."""
    think_observation: str = "OK."
    """What a thought is answered with."""
    task_prefix: str = "Your task is to: "
    """How the task segment introduces the instruction when the first observation does not state it."""

    def __post_init__(self) -> None:
        if not self.state_keys or self.state_keys[-1] != "action":
            raise ValueError(f"StateAct's keys must end with 'action', got {self.state_keys}")
        if len(self.state_descriptions) != len(self.state_keys):
            raise ValueError(
                f"{len(self.state_keys)} StateAct keys but {len(self.state_descriptions)} descriptions"
            )
        if not self.action_examples:
            raise ValueError("AgentStyle needs at least one example action")


StateValue = str | Sequence[str]
"""A StateAct value: text, or a list written comma-joined ("None" when empty)."""


@dataclass(frozen=True)
class DemonstratedStep:
    """One expert action with what an agent would have thought and known right before it."""

    action: str
    observation: str
    thoughts: tuple[str, ...] = ()
    """Thoughts before the action: ReAct writes each as a think turn, StateAct joins them."""
    state: Mapping[str, StateValue] = field(default_factory=dict)
    """StateAct's values by key, except ``thought`` and ``action`` (filled from the fields above); a
    key left out is written as None."""


DemonstrationRenderer = Callable[[ExpertTrajectory], list[DemonstratedStep]]
"""Turns an expert trajectory (instruction, task_type, first observation and (action, observation)
steps) into steps with thoughts and state, one per action."""

ReactExamples = Callable[[Path, str, str, int], list[tuple[str, list[tuple[str, str]]]]]
"""``(data_dir, format_name, group, n)`` → ``n`` published transcripts of ``group`` as (first
observation, [(agent line, observation)]); raises ValueError for a format it has none for."""


@dataclass(frozen=True)
class EnvProfile:
    """Everything environment-specific that the rest of ragdistill needs.

    An episode's success is not here: it is the environment's own ``won`` (``StepResult``), which the
    rollout records; an environment with graded rewards decides there what counts as won."""

    name: str
    task_groups: tuple[str, ...]
    """The groups tasks fall into (``TaskInfo.task_type``): the hint bank and the index are grouped by
    them; few-shot examples are chosen by them; metrics break down by them."""
    group_label: str
    """What a group is called, as a prompt label ("Task type", "Product category")."""
    invalid_observation: str
    """What the environment answers to an action it cannot carry out; also the observation for a model
    output with no usable action, and what the dataset filter and the invalid-action metric count."""
    agent: AgentStyle
    hints: HintStyle
    default_max_invalid: int | None = None
    """Dataset selection when ``distill.max_invalid_actions`` is unset: keep an episode with at most
    this many invalid observations (the paper drops 2+ in ALFWorld, any in WebShop); None: no limit."""
    headline: Literal["success", "score"] = "success"
    """The figure the paper's result table reports for this environment (ALFWorld: success %, WebShop:
    score = mean reward × 100); the report's main table follows it."""
    fewshot_sources: tuple[str, ...] = ()
    """Few-shot sources besides ``none`` this environment offers, from :data:`FEWSHOT_SOURCES`."""
    react_examples: ReactExamples | None = None
    """Published ReAct transcripts; required when ``fewshot_sources`` offers ``react``."""
    render_demonstration: DemonstrationRenderer | None = None
    """Thoughts and state for expert trajectories; required when ``fewshot_sources`` offers ``expert``.
    The expert teacher (``distill.teacher: expert``) needs it too."""

    def __post_init__(self) -> None:
        unknown = set(self.fewshot_sources) - set(FEWSHOT_SOURCES)
        if unknown:
            raise ValueError(f"unknown few-shot sources {sorted(unknown)}; choose from {FEWSHOT_SOURCES}")
        if "react" in self.fewshot_sources and self.react_examples is None:
            raise ValueError(f"profile {self.name!r} offers 'react' few-shot examples without react_examples")
        if "expert" in self.fewshot_sources and self.render_demonstration is None:
            raise ValueError(
                f"profile {self.name!r} offers 'expert' few-shot examples without render_demonstration"
            )
        if not self.task_groups:
            raise ValueError(f"profile {self.name!r} has no task groups")

    def check_group(self, group: str) -> None:
        if group not in self.task_groups:
            raise ValueError(
                f"unknown {self.name} {self.group_label.lower()} {group!r}; expected one of {self.task_groups}"
            )
