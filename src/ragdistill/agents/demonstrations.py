"""Expert trajectories rendered as agent turns, in any format.

A walkthrough is only actions and observations. The environment's profile adds what an agent would
have thought and known before each action (``EnvProfile.render_demonstration``); the agent format
writes those as its own turns: ReAct a think turn per thought (answered like any thought) before the
action, Act the bare action, StateAct one state block per action. The same turns serve as few-shot
examples and as the "expert" teacher's episodes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ragdistill.agents.formats import AgentFormat
from ragdistill.errors import UserFacingError


class DemonstrationError(UserFacingError, ValueError):
    """The environment has no way to render its expert trajectories as agent turns."""


@dataclass(frozen=True)
class ExpertTrajectory:
    """A solved training game: the instruction, the first observation and every (action, observation)."""

    task_id: str
    task_type: str
    instruction: str
    first_observation: str
    steps: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = [list(step) for step in self.steps]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExpertTrajectory:
        try:
            steps = [(str(action), str(observation)) for action, observation in data["steps"]]
            return cls(
                task_id=str(data["task_id"]),
                task_type=str(data["task_type"]),
                instruction=str(data["instruction"]),
                first_observation=str(data["first_observation"]),
                steps=steps,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed expert trajectory {data.get('task_id')!r}: {error}") from None


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
