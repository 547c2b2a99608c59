"""Where a run root's loop stands: the champion, the failures pending since the watermark, the retrain
threshold, the generation and the last retrain decision.

Read from storage only (the registry, the collect batches, ``retrain/``), so ``ragdistill loop status``,
the ``loop-status`` Prefect artifact every collect and retrain updates, and the collect's decision to emit
``ragdistill.retrain.due`` all see the same numbers the retrain itself will read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ragdistill.adapter_registry import AdapterRegistry
from ragdistill.stages.collect import finished_batches
from ragdistill.stages.retrain import LAST_DECISION_FILE, pending_failures, read_watermark
from ragdistill.store import ArtifactStore


@dataclass(frozen=True)
class LoopStatus:
    run_root: str
    champion: str | None
    """The registry's current version (None: nothing promoted, collect plays the base model)."""
    champion_summary: str
    pending_failures: int
    pending_by_batch: dict[str, int]
    min_failures: int
    generation: int
    """The last finished retrain generation (0: none yet)."""
    collect_batches: int
    last_decision: dict[str, Any] | None

    @property
    def retrain_due(self) -> bool:
        return self.pending_failures >= self.min_failures

    def summary(self) -> dict[str, Any]:
        """The status as JSON (the keys ``champion``, ``pending_failures``, ``min_failures``,
        ``generation`` first)."""
        return {
            "champion": self.champion,
            "pending_failures": self.pending_failures,
            "min_failures": self.min_failures,
            "generation": self.generation,
            "retrain_due": self.retrain_due,
            "pending_by_batch": self.pending_by_batch,
            "collect_batches": self.collect_batches,
            "last_decision": self.last_decision,
            "run_root": self.run_root,
        }

    def lines(self) -> list[str]:
        pending = f"{self.pending_failures} failure(s) pending since the last retrain"
        if self.pending_by_batch:
            pending += " (" + ", ".join(f"{batch}: {n}" for batch, n in self.pending_by_batch.items()) + ")"
        due = "a retrain is due" if self.retrain_due else "below the threshold: no retrain yet"
        return [
            f"run root: {self.run_root}",
            f"champion: {self.champion_summary}",
            f"{pending}; {self.collect_batches} collect batch(es) finished",
            f"threshold: retrain.min_failures = {self.min_failures} ({due})",
            f"generation: {self.generation}",
            f"last decision: {describe_decision(self.last_decision)}",
        ]

    def markdown(self) -> str:
        rows = [("champion", self.champion_summary), ("failures pending", str(self.pending_failures))]
        rows += [("threshold (retrain.min_failures)", str(self.min_failures))]
        rows += [("retrain due", "yes" if self.retrain_due else "no"), ("generation", str(self.generation))]
        rows += [("last decision", describe_decision(self.last_decision))]
        table = "\n".join(f"| {name} | {value.replace('|', '/')} |" for name, value in rows)
        return f"## Loop status of `{self.run_root}`\n\n| | |\n|---|---|\n{table}\n"


def describe_decision(decision: dict[str, Any] | None) -> str:
    """One line for a recorded retrain decision (``stages.retrain.record_decision``)."""
    if decision is None:
        return "none yet"
    when = decision.get("decided_at", "?")
    if decision.get("skipped"):
        return f"{when}: skipped: {decision['skipped']}"
    promotion = (decision.get("counts") or {}).get("promotion") or {}
    verdict = "promoted" if promotion.get("promoted") else "not promoted"
    return (
        f"{when}: generation {decision.get('generation')} trained on {decision.get('new_failures')} new "
        f"failure(s), its candidate {verdict}"
    )


def _champion(store: ArtifactStore) -> tuple[str | None, str]:
    entry = AdapterRegistry(store).current()
    if entry is None:
        return None, "none: nothing promoted yet, collect plays the base model and the gate compares with it"
    evaluation = entry.evaluation.describe() if entry.evaluation else "not evaluated"
    generation = (entry.lineage.get("generation") or {}).get("number")
    made = f"generation {generation}" if generation else "the first pipeline"
    return entry.version, f"{entry.version} ({entry.student} student of {made}; {evaluation})"


def loop_status(store: ArtifactStore, min_failures: int) -> LoopStatus:
    """The loop status of the run root ``store`` with the retrain threshold ``min_failures``."""
    watermark = read_watermark(store)
    pending = pending_failures(store, watermark)
    champion, champion_summary = _champion(store)
    last = store.read_json(LAST_DECISION_FILE) if store.exists(LAST_DECISION_FILE) else None
    return LoopStatus(
        run_root=store.root_url,
        champion=champion,
        champion_summary=champion_summary,
        pending_failures=pending.total,
        pending_by_batch={stage: len(ids) for stage, ids in pending.by_stage.items()},
        min_failures=min_failures,
        generation=watermark.generation,
        collect_batches=len(finished_batches(store)),
        last_decision=last,
    )
