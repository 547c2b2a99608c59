"""Stage E metrics: what one evaluated method (base, RAG teacher, SFT, distilled) × agent format achieved.

``compute_metrics`` turns a group of episode records into a :class:`MethodMetrics`. Every rate is a
percentage; every figure that has no data (no episodes, no successes, no non-think calls) is ``None``
rather than 0 or NaN, so ``to_dict`` is always valid JSON and a report can print "—".
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ragdistill.episodes import EpisodeRecord

WILSON_Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z_95) -> tuple[float, float] | None:
    """The Wilson score interval for a binomial proportion, as fractions in [0, 1]; None for 0 trials.

    Unlike the normal approximation it stays inside [0, 1] and is informative at 0/n and n/n, which is
    where small evaluation splits (a dozen games on a laptop) usually land.
    """
    if trials <= 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, {trials}], got {successes}")
    proportion = successes / trials
    z_squared = z * z
    denominator = 1 + z_squared / trials
    centre = (proportion + z_squared / (2 * trials)) / denominator
    half_width = (z / denominator) * math.sqrt(
        proportion * (1 - proportion) / trials + z_squared / (4 * trials * trials)
    )
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == trials else min(1.0, centre + half_width)
    return low, high


def _mean(total: float, count: int) -> float | None:
    return total / count if count else None


def _percent(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


@dataclass
class MethodMetrics:
    """Figures for one group of episodes. Percentages are 0–100; ``None`` means "no data for this"."""

    episodes: int
    successes: int
    success_percent: float | None
    success_ci_low: float | None
    success_ci_high: float | None
    mean_score: float | None
    score_percent: float | None
    mean_env_steps: float | None
    mean_model_calls: float | None
    policy_tokens_per_episode: float | None
    retrieval_tokens_per_episode: float | None
    total_tokens_per_episode: float | None
    tokens_per_success: float | None
    non_think_calls: int
    think_calls: int
    invalid_actions: int
    invalid_action_percent: float | None
    episodes_with_invalid_action: int
    episodes_with_invalid_action_percent: float | None
    parse_error_calls: int
    error_episodes: int
    stop_reasons: dict[str, int]
    agents: dict[str, int]
    sources: dict[str, int]
    invalid_observation: str
    by_task_type: dict[str, MethodMetrics] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.episodes == 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["empty"] = self.empty
        data["by_task_type"] = {name: metrics.to_dict() for name, metrics in self.by_task_type.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodMetrics:
        fields = {key: value for key, value in data.items() if key != "empty"}
        fields["by_task_type"] = {
            name: cls.from_dict(nested) for name, nested in data.get("by_task_type", {}).items()
        }
        return cls(**fields)


def _is_invalid(observation: str, invalid_observation: str) -> bool:
    return observation.strip() == invalid_observation


def compute_metrics(
    records: Iterable[EpisodeRecord],
    invalid_observation: str,
    split_task_types: bool = True,
) -> MethodMetrics:
    """Metrics of one evaluated method × agent, plus the same figures per task type.

    ``invalid_observation`` is what the environment answers to an action it cannot execute
    (``EnvProfile.invalid_observation``); a step whose observation equals it after stripping counts as
    an invalid action. The rate divides by non-think model calls, since a ReAct thought never reaches
    the environment.
    """
    episodes: Sequence[EpisodeRecord] = list(records)
    invalid_text = invalid_observation.strip()
    count = len(episodes)
    successes = sum(1 for record in episodes if record.success)
    score_total = sum(record.score for record in episodes)
    policy_total = sum(record.policy_prompt_tokens + record.policy_completion_tokens for record in episodes)
    retrieval_total = sum(record.retrieval_tokens for record in episodes)
    all_tokens = policy_total + retrieval_total

    non_think_calls = think_calls = invalid_actions = parse_errors = episodes_with_invalid = 0
    for record in episodes:
        invalid_here = 0
        for step in record.steps:
            if step.is_think:
                think_calls += 1
                continue
            non_think_calls += 1
            invalid_here += int(_is_invalid(step.observation, invalid_text))
            parse_errors += int(step.parse_error is not None)
        invalid_actions += invalid_here
        episodes_with_invalid += int(invalid_here > 0)

    interval = wilson_interval(successes, count)
    mean_score = _mean(score_total, count)
    stop_reasons = Counter(record.stop_reason for record in episodes)
    by_task_type: dict[str, MethodMetrics] = {}
    if split_task_types:
        for task_type in sorted({record.task_type for record in episodes}):
            by_task_type[task_type] = compute_metrics(
                (record for record in episodes if record.task_type == task_type),
                invalid_observation=invalid_observation,
                split_task_types=False,
            )
    return MethodMetrics(
        episodes=count,
        successes=successes,
        success_percent=_percent(successes, count),
        success_ci_low=100.0 * interval[0] if interval else None,
        success_ci_high=100.0 * interval[1] if interval else None,
        mean_score=mean_score,
        score_percent=100.0 * mean_score if mean_score is not None else None,
        mean_env_steps=_mean(sum(record.env_steps for record in episodes), count),
        mean_model_calls=_mean(sum(record.model_calls for record in episodes), count),
        policy_tokens_per_episode=_mean(policy_total, count),
        retrieval_tokens_per_episode=_mean(retrieval_total, count),
        total_tokens_per_episode=_mean(all_tokens, count),
        tokens_per_success=_mean(all_tokens, successes),
        non_think_calls=non_think_calls,
        think_calls=think_calls,
        invalid_actions=invalid_actions,
        invalid_action_percent=_percent(invalid_actions, non_think_calls),
        episodes_with_invalid_action=episodes_with_invalid,
        episodes_with_invalid_action_percent=_percent(episodes_with_invalid, count),
        parse_error_calls=parse_errors,
        error_episodes=stop_reasons.get("error", 0),
        stop_reasons=dict(sorted(stop_reasons.items())),
        agents=dict(sorted(Counter(record.agent for record in episodes).items())),
        sources=dict(sorted(Counter(record.source for record in episodes).items())),
        invalid_observation=invalid_text,
        by_task_type=by_task_type,
    )
