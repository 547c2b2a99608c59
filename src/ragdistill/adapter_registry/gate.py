"""The promotion gate: whether a candidate adapter replaces the current one.

The rule (``promotion.*``): the candidate's headline on the evaluation split must exceed the
reference's by at least ``margin`` points, and a tie never promotes. The reference is the current
adapter's evaluation or, when nothing is current yet, the base agent's. Two evaluations compare only
when they played the same task list (same environment data, split and task ids, in order); otherwise
the gate refuses and says how to get a comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

from ragdistill.adapter_registry.entries import EvalSummary, RegistryEntry

TOLERANCE = 1e-9
"""Headline values are percentages of counts: equal ones may differ in the last bits."""


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    reference: str
    """``base``, a version id, or empty when nothing could be compared."""
    delta: float | None = None


def compare(candidate: EvalSummary, reference: EvalSummary, reference_name: str) -> str | None:
    """Why the two evaluations cannot be compared, or None when they can."""
    if reference.task_list_sha256 != candidate.task_list_sha256:
        return (
            f"cannot compare with {reference_name}: it was evaluated on another task list (tasks.json sha256 "
            f"{reference.task_list_sha256[:12]}, the candidate's {candidate.task_list_sha256[:12]}); evaluate "
            "both with the same evaluation.split and evaluation.limit on the same environment data, or promote "
            "by hand with `ragdistill adapters promote VERSION --force`"
        )
    if reference.headline != candidate.headline:
        return f"cannot compare with {reference_name}: it reports {reference.headline}, the candidate {candidate.headline}"
    if reference.value is None:
        return f"cannot compare with {reference_name}: its evaluation has no episodes"
    return None


def decide(
    candidate: RegistryEntry,
    *,
    current: RegistryEntry | None,
    base: EvalSummary | None,
    margin: float,
    min_episodes: int,
) -> Decision:
    """The gate's verdict on ``candidate``; see the module docstring."""
    evaluation = candidate.evaluation
    if evaluation is None or evaluation.value is None:
        return Decision(False, f"{candidate.version} has no evaluation to judge it by", "")
    if evaluation.episodes < min_episodes:
        return Decision(
            False,
            f"{candidate.version} was evaluated on {evaluation.episodes} episodes, fewer than "
            f"promotion.min_episodes ({min_episodes})",
            "",
        )
    if current is not None:
        if current.evaluation is None:
            reason = f"cannot compare with current {current.version}: it has no evaluation"
            return Decision(False, reason, current.version)
        reference, name = current.evaluation, f"current {current.version}"
    elif base is not None:
        reference, name = base, "the base agent"
    else:
        return Decision(
            False,
            "nothing is current and the base agent was not evaluated: add base to evaluation.methods, or "
            "promote by hand with `ragdistill adapters promote VERSION`",
            "",
        )
    label = current.version if current is not None else "base"
    problem = compare(evaluation, reference, name)
    if problem:
        return Decision(False, problem, label)
    assert reference.value is not None
    delta = evaluation.value - reference.value
    versus = f"{evaluation.describe()} against {name}'s {reference.value:.1f}"
    if abs(delta) <= TOLERANCE:
        return Decision(False, f"{versus}: a tie, not promoted", label, 0.0)
    if delta < 0:
        return Decision(False, f"{versus}: {delta:+.1f} points, worse", label, delta)
    if delta + TOLERANCE < margin:
        return Decision(
            False, f"{versus}: {delta:+.1f} points, below promotion.margin {margin:g}", label, delta
        )
    return Decision(True, f"{versus}: {delta:+.1f} points (promotion.margin {margin:g})", label, delta)


def manual_objection(entry: RegistryEntry, current: RegistryEntry | None) -> str | None:
    """Why promoting ``entry`` by hand needs ``--force`` (it is worse than the current adapter, or the
    two cannot be compared), or None. A tie is accepted: the person promoting decides."""
    if current is None:
        return None
    if entry.evaluation is None or current.evaluation is None:
        missing = entry.version if entry.evaluation is None else current.version
        return f"{missing} has no evaluation to compare"
    problem = compare(entry.evaluation, current.evaluation, f"current {current.version}")
    if problem:
        return problem
    assert entry.evaluation.value is not None and current.evaluation.value is not None
    if entry.evaluation.value + TOLERANCE < current.evaluation.value:
        return (
            f"{entry.version} ({entry.evaluation.describe()}) is worse than current {current.version} "
            f"({current.evaluation.value:.1f})"
        )
    return None
