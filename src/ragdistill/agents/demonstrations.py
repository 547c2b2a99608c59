"""Expert trajectories rendered as agent turns, in any format.

A walkthrough is only actions and observations. The environment's profile adds what an agent would
have thought and known before each action (``EnvProfile.render_demonstration``); the agent format
writes those as its own turns: ReAct a think turn per thought (answered like any thought) before the
action, Act the bare action, StateAct one state block per action. The same turns serve as few-shot
examples and as the "expert" teacher's episodes.
"""

from __future__ import annotations

from ragdistill.agents.formats import AgentFormat
from ragdistill.errors import UserFacingError
from ragdistill.trajectories import ExpertTrajectory


class DemonstrationError(UserFacingError, ValueError):
    """The environment has no way to render its expert trajectories as agent turns."""


def render_expert_turns(trajectory: ExpertTrajectory, fmt: AgentFormat) -> list[tuple[str, str]]:
    """The trajectory as (model output, observation) turns of ``fmt``; every output parses back, with
    ``fmt``, to the expert's action or to a thought."""
    render = fmt.profile.render_demonstration
    if render is None:
        raise DemonstrationError(
            f"environment {fmt.profile.name!r} cannot render expert demonstrations (its profile has no "
            "render_demonstration); use agent.fewshot_source 'none' and distill.teacher 'rag'"
        )
    steps = render(trajectory)
    if [(step.action, step.observation) for step in steps] != [tuple(step) for step in trajectory.steps]:
        raise DemonstrationError(
            f"{fmt.profile.name}'s render_demonstration changed the steps of {trajectory.task_id!r}"
        )
    return [turn for step in steps for turn in fmt.demonstrated_turns(step)]


def render_expert_example(trajectory: ExpertTrajectory, fmt: AgentFormat) -> str:
    """One few-shot example: the trajectory's transcript in ``fmt``."""
    return fmt.transcript(trajectory.first_observation, render_expert_turns(trajectory, fmt))
