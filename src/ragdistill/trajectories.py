"""Expert trajectories: a solved game as its instruction, first observation and (action, observation)
steps. A leaf type: environments turn one into demonstrated steps (``EnvProfile.render_demonstration``),
agents play and render them (``agents.expert``, ``agents.demonstrations``), and the expert teacher
records them as episodes, without importing each other for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
