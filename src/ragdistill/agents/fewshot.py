"""Few-shot examples for an agent, from the environment's published transcripts or its expert.

Which sources an environment offers, and the material itself, come from its profile
(``EnvProfile.fewshot_sources``): ``react`` examples are published ReAct transcripts
(``EnvProfile.react_examples``), ``expert`` examples are solved training tasks played through the
registry and rendered with ``EnvProfile.render_demonstration``. Either way the agent format renders the
turns, so an example looks exactly like what the parser accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ragdistill.agents.formats import get_format
from ragdistill.environments.profile import EnvProfile
from ragdistill.environments.registry import get_profile
from ragdistill.errors import UserFacingError

FewshotSource = Literal["react", "expert", "none"]


class FewshotError(UserFacingError, ValueError):
    """The environment does not offer the few-shot source a config asks for."""


def _offered(profile: EnvProfile, source: str) -> None:
    if source not in ("react", "expert", "none"):
        raise FewshotError(f"unknown few-shot source {source!r}; expected react, expert or none")
    if source != "none" and source not in profile.fewshot_sources:
        offered = ", ".join([*profile.fewshot_sources, "none"])
        raise FewshotError(
            f"environment {profile.name!r} offers no {source!r} few-shot examples; set agent.fewshot_source "
            f"to one of: {offered}"
        )


def react_examples(
    profile: EnvProfile, data_dir: Path | str, format_name: str, group: str, n: int = 2
) -> list[str]:
    """``n`` of the environment's published ReAct transcripts for ``group``, rendered in ``format_name``."""
    _offered(profile, "react")
    assert profile.react_examples is not None  # the profile checks this at construction
    profile.check_group(group)
    agent_format = get_format(format_name, profile)
    transcripts = profile.react_examples(Path(data_dir), format_name, group, n)
    return [agent_format.transcript(observation, turns) for observation, turns in transcripts]


def build_examples(
    source: FewshotSource,
    format_name: str,
    group: str,
    n: int,
    data_dir: Path | str,
    *,
    env_name: str,
    exclude_task_id: str | None = None,
) -> list[str]:
    """The few-shot examples an agent config asks for (``agent.fewshot_source``, ``fewshot_count``).

    ``expert`` examples come from ``env_name``'s solved training tasks, collected once and cached under
    ``<data_dir>/fewshot/`` (the first call plays the games: a few seconds per game); the task
    ``exclude_task_id`` is never among them, so an episode on a training task is not shown its own
    solution. Published transcripts are not tasks of ours: ``exclude_task_id`` leaves them alone.
    """
    profile = get_profile(env_name)
    agent_format = get_format(format_name, profile)
    _offered(profile, source)
    if source == "none" or n == 0:
        return []
    if source == "react":
        return react_examples(profile, data_dir, format_name, group, n)
    from ragdistill.agents.demonstrations import render_expert_example
    from ragdistill.agents.expert import load_or_collect_expert_trajectories

    profile.check_group(group)
    trajectories = load_or_collect_expert_trajectories(
        data_dir, group, n, exclude_task_id=exclude_task_id, env_name=env_name
    )
    return [render_expert_example(trajectory, agent_format) for trajectory in trajectories]
