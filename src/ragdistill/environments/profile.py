"""An environment's profile: every fact about it that agents, mining, retrieval and training need.

Agents, mining, retrieval, datasets and evaluation read a :class:`EnvProfile` and never name an
environment. Each environment ships its own profile next to its code (``environments/alfworld``,
``environments/webshop``) and registers it with :func:`ragdistill.environments.registry.register_env`;
adding a third environment touches ``environments/`` and ``configs/`` only.

This module is a leaf: it imports nothing from ragdistill but the environment protocol, so every
layer may depend on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

ThinkSyntax = Literal["label", "brackets"]
"""How a ReAct thought is written: ``think: …`` (ALFWorld, as in ReAct's prompts) or ``think[…]``
(WebShop, as in ReAct's WebShop prompts)."""


@dataclass(frozen=True)
class HintStyle:
    """What a mined hint looks like in one environment (the paper's stage B)."""

    description: str
    """The environment in one phrase, for the extraction prompt."""
    max_hints: int
    """Most hints one failure may give (ALFWorld 4, WebShop 2)."""
    placeholders: tuple[str, ...]
    """The only ``{names}`` a hint may use."""
    examples: tuple[str, ...]
    """Good hints, shown to the extractor."""
    verbs: tuple[str, ...] = ()
    """Verbs a constrained hint may start with (``MiningConfig.constrain_hint_text``)."""
    generality_rule: str = ""
    """One line of the extraction prompt telling what an episode-specific leftover looks like here
    (ALFWorld: 'write {object}, not "mug 2"')."""
    episode_specific: Callable[[str], bool] | None = None
    """True for a hint text that still names the one episode (ALFWorld: a numbered object; WebShop: an
    ASIN); such hints are rejected as ``episode_specific``."""
    rewrite: Callable[[str], str] | None = None
    """A rewrite applied before validation (WebShop: prices become ``{price}``)."""


@dataclass(frozen=True)
class AgentStyle:
    """How the agent formats (ReAct, Act, StateAct) speak about this environment."""

    instruction: str
    """The system prompt's first line (ALFWorld: "Interact with a household to solve a task.")."""
    env_noun: str
    """Who answers each action, as the output rules call it ("the household", "the shop")."""
    action_examples: tuple[str, ...]
    """Example actions for the output rules, valid in this environment's grammar."""
    think_syntax: ThinkSyntax = "label"
    think_example: str = "First I need to find an apple."
    state_keys: tuple[str, ...] = (
        "goal",
        "locations visited",
        "current location",
        "current inventory",
        "thought",
        "action",
    )
    """StateAct's lines in the order the model writes them; the last is always ``action``."""
    state_descriptions: tuple[str, ...] = (
        "the task",
        "places you have gone to so far, comma-separated, or None",
        "where you are now",
        "what you are holding, comma-separated, or None",
        "a short reasoning step, or None",
        "one action, for example go to cabinet 1",
    )
    """What goes on each StateAct line, same order as ``state_keys``."""
    lowercase_actions: bool = True
    """Whether parsed actions are lower-cased (ALFWorld's commands are; WebShop's clicks are not)."""
    think_observation: str = "OK."
    """What a thought is answered with."""


class DemonstrationRenderer(Protocol):
    """Turns an expert trajectory into (model output, observation) turns of one agent format,
    adding the thoughts and state lines the expert's actions imply."""

    def __call__(self, trajectory: Any, format_name: str) -> list[tuple[str, str]]: ...


@dataclass(frozen=True)
class EnvProfile:
    """Everything environment-specific that the rest of ragdistill needs."""

    name: str
    task_groups: tuple[str, ...]
    """The groups tasks fall into: ALFWorld's six task types, WebShop's five categories. The hint bank
    and the index are grouped by them; metrics break down by them."""
    group_label: str
    """What a group is called ("Task type", "Product category")."""
    invalid_observation: str
    """What the environment answers to an action it cannot carry out ("Nothing happens.",
    "Invalid action!"); also the observation for a model output with no usable action."""
    agent: AgentStyle
    hints: HintStyle
    default_max_invalid: int | None = None
    """Dataset selection per the paper: keep an episode with at most this many invalid observations
    (ALFWorld drops 2+ "Nothing happens." → 1; WebShop drops any "Invalid action!" → 0)."""
    success_threshold: float = 1.0
    """An episode is a success when its score reaches this (ALFWorld: won; WebShop: reward == 1)."""
    fewshot_sources: tuple[str, ...] = ("expert",)
    """Few-shot sources besides ``none`` this environment offers (ALFWorld adds ``react``)."""
    react_examples: Callable[[Path, str, str, int], list[tuple[str, list[tuple[str, str]]]]] | None = None
    """``(data_dir, format_name, group, n)`` → published transcripts as (first observation, turns);
    None when the environment has none."""
    render_demonstration: DemonstrationRenderer | None = None
    predict_group: Callable[[str], str] | None = None
    """The group of a task from its instruction alone, when a retriever must not read the task's true
    group (WebShop's category); None: the task's own group is used."""
    extras: dict[str, Any] = field(default_factory=dict)

    def check_group(self, group: str) -> None:
        if group not in self.task_groups:
            raise ValueError(
                f"unknown {self.name} {self.group_label.lower()} {group!r}; expected one of {self.task_groups}"
            )
