"""The retrain stage's bookkeeping: which collect failures are new, whether to retrain, and generations.

Storage is the source of truth, never the events that started a retrain (a reactive Prefect trigger drops
events inside its window): the failures to learn from are those recorded in finished collect batches
(``stages.collect``) that the watermark, ``retrain/watermark.json``, does not list yet. The watermark
holds, per collect batch, the episode ids already consumed and the last finished generation; it is
written (atomically, one object) only when a retrain has finished every stage, so a crashed retrain
leaves it untouched and the next one picks the same failures up again.

A retrain is a new *generation*: generation ``k`` is a run root of its own, ``generations/<k>/`` under
the run root. Its ``rollouts/base`` is the pipeline's base rollout plus every collect batch consumed so
far, combined into one stage folder whose inputs are those folders' content digests; its mining ledger
starts as a copy of the previous generation's (or the run root's), so only failures no extractor saw
before are sent to it. Hints, index, teacher, datasets, adapters and evaluations of generation ``k`` then
live under ``generations/<k>/`` with identities computed there, so the first pipeline's cache and every
earlier generation stay truthful.

One retrain at a time per run root: the whole retrain holds the lease of ``retrain/`` (``leases``). A
retrain that finds it held (two triggers, a manual run beside a triggered one) records a skip naming the
holder and ends without reading or writing the watermark (:func:`retrain_turn`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import RetrainSettings
from ragdistill.identity import code_fingerprint
from ragdistill.layout import BASE_STAGE, HINTS_DIR, ROLLOUT_OUTPUTS, ROLLOUTS_DIR, rollout_prefix
from ragdistill.leases import LeaseHeldError, StageLease
from ragdistill.retrieval.mining import episode_id
from ragdistill.stages.collect import finished_batches, recorded_failures
from ragdistill.stages.lifecycle import IDENTITY_NAME, StageError, StageIdentity, StageRun
from ragdistill.store import ArtifactError, ArtifactStore, Manifest, read_manifest, read_records

RETRAIN_DIR = "retrain"
WATERMARK_FILE = f"{RETRAIN_DIR}/watermark.json"
DECISIONS_DIR = f"{RETRAIN_DIR}/decisions"
LAST_DECISION_FILE = f"{RETRAIN_DIR}/last-decision.json"
GENERATIONS_DIR = "generations"
LEDGER_DIR = f"{HINTS_DIR}/chunks"
COMBINED_SHARD = "shard-00000.jsonl"


@dataclass
class Watermark:
    """What earlier retrains consumed: episode ids per collect batch, and the last finished generation."""

    generation: int = 0
    consumed: dict[str, list[str]] = field(default_factory=dict)
    updated_at: str | None = None

    def consumed_ids(self, stage: str) -> set[str]:
        return set(self.consumed.get(stage, []))


@dataclass(frozen=True)
class PendingFailures:
    """Failures stored in finished collect batches and not yet consumed, by batch (episode ids)."""

    by_stage: dict[str, list[str]]

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.by_stage.values())


def read_watermark(store: ArtifactStore) -> Watermark:
    if not store.exists(WATERMARK_FILE):
        return Watermark()
    payload = store.read_json(WATERMARK_FILE)
    return Watermark(
        generation=int(payload.get("generation", 0)),
        consumed={stage: list(ids) for stage, ids in payload.get("consumed", {}).items()},
        updated_at=payload.get("updated_at"),
    )


def advance_watermark(store: ArtifactStore, watermark: Watermark, pending: PendingFailures) -> Watermark:
    """The watermark with ``pending`` consumed and the generation counted, written as one object.

    ``watermark`` is the one the retrain decided on; when the stored one has moved since (another retrain
    finished a generation while this one held no lease), nothing is written: consuming ``pending`` on top
    of it would count a generation twice."""
    stored = read_watermark(store)
    if stored.generation != watermark.generation:
        raise StageError(
            f"the retrain watermark moved from generation {watermark.generation} to {stored.generation} while "
            f"this retrain ran: its decision is stale and nothing was consumed; run retrain again"
        )
    consumed = {stage: sorted(ids) for stage, ids in watermark.consumed.items()}
    for stage, ids in pending.by_stage.items():
        consumed[stage] = sorted(set(consumed.get(stage, [])) | set(ids))
    advanced = Watermark(watermark.generation + 1, consumed, _now())
    store.write_json(WATERMARK_FILE, asdict(advanced))
    return advanced


def pending_failures(store: ArtifactStore, watermark: Watermark) -> PendingFailures:
    """Every failure a finished collect batch holds that ``watermark`` does not list."""
    by_stage: dict[str, list[str]] = {}
    for stage in finished_batches(store):
        seen = watermark.consumed_ids(stage)
        new = [
            eid
            for eid in (episode_id(record) for record in recorded_failures(store, stage))
            if eid not in seen
        ]
        if new:
            by_stage[stage] = new
    return PendingFailures(by_stage)


def skip_reason(settings: RetrainSettings, pending: PendingFailures) -> str | None:
    """Why no retrain runs now, or None when enough new failures are stored."""
    if pending.total < settings.min_failures:
        return (
            f"{pending.total} new failure(s) stored since the last retrain, fewer than retrain.min_failures "
            f"({settings.min_failures}): nothing retrained"
        )
    return None


def record_decision(store: ArtifactStore, payload: dict[str, Any]) -> dict[str, Any]:
    """Keep one retrain decision under ``retrain/decisions/`` and as ``retrain/last-decision.json``."""
    record = {"decided_at": _now(), **payload}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    store.write_json(f"{DECISIONS_DIR}/{stamp}-{uuid.uuid4().hex[:8]}.json", record)
    store.write_json(LAST_DECISION_FILE, record)
    return record


def retrain_lease(ctx: RunContext) -> StageLease:
    """The lease every retrain of a run root holds from its decision to its watermark."""
    store = ArtifactStore(ctx.run_root)
    return StageLease(store, RETRAIN_DIR, label=f"{ctx.run_name}: retrain", wait_s=0.0)


@contextmanager
def retrain_turn(ctx: RunContext) -> Iterator[dict[str, Any] | None]:
    """Hold the retrain lease for the block, which sees None; when another retrain holds it, the block
    sees the skip decision recorded here instead (``skipped`` names the holder) and must not retrain."""
    lease = retrain_lease(ctx)
    try:
        lease.acquire()
    except LeaseHeldError as held:
        reason = f"another retrain of this run root is running, nothing retrained: {held}"
        yield record_decision(ArtifactStore(ctx.run_root), {"generation": None, "skipped": reason})
        return
    try:
        yield None
    finally:
        lease.release()


def generation_root(run_root: str, generation: int) -> str:
    """The run root of generation ``generation`` of the run root ``run_root``: every stage of it runs
    with the same settings there."""
    return ArtifactStore(run_root).uri(f"{GENERATIONS_DIR}/{generation}")


def prepare_generation(ctx: RunContext, generation: int, stages: list[str]) -> Manifest:
    """Make generation ``generation``'s root ready for mining: its combined base rollout (the run root's
    ``rollouts/base``, when finished, plus the collect batches ``stages``) and its inherited mining
    ledger. Returns the combined rollout's manifest."""
    store = ArtifactStore(ctx.run_root)
    target = ArtifactStore(generation_root(ctx.run_root, generation))
    sources = [rollout_prefix(stage) for stage in ([BASE_STAGE] if _finished(store, BASE_STAGE) else [])]
    sources += [f"{ROLLOUTS_DIR}/{stage}" for stage in stages]
    manifests = {source: read_manifest(store, source) for source in sources}
    identity = StageIdentity(
        stage=rollout_prefix(BASE_STAGE),
        settings={"combined": sources},
        code=code_fingerprint("ragdistill.stages.retrain"),
        inputs={source: manifest.digest for source, manifest in manifests.items()},
    )
    previous = store if generation <= 1 else ArtifactStore(generation_root(ctx.run_root, generation - 1))
    _inherit_ledger(previous, target)
    prefix = rollout_prefix(BASE_STAGE)
    label = f"{ctx.run_name}: generation {generation} rollouts/base"
    with StageRun(target, prefix, identity, ctx, label=label, outputs=ROLLOUT_OUTPUTS) as run:
        if run.current is not None:
            return run.current
        counts = {"episodes": 0, "won": 0, "errors": 0, "transient_errors": 0}
        lines = []
        for source, manifest in manifests.items():
            for record in read_records(store, source, manifest):
                lines.append(json.dumps(record, sort_keys=True) + "\n")
                counts["episodes"] += 1
                counts["won"] += int(bool(record.get("success")))
                counts["errors"] += int(record.get("stop_reason") == "error")
        target.write_text(f"{prefix}/{COMBINED_SHARD}", "".join(lines))
        return run.finish([COMBINED_SHARD], counts=counts, extra={"sources": sources})


def _inherit_ledger(source: ArtifactStore, target: ArtifactStore) -> int:
    """Copy the mining ledger's chunk objects the target lacks (answers are immutable once committed), and
    the identity they were made under, so mining keeps them only when its settings and code are the same."""
    copied = 0
    recorded = f"{HINTS_DIR}/{IDENTITY_NAME}"
    if source.exists(recorded) and not target.exists(recorded):
        target.write_bytes(recorded, source.read_bytes(recorded))
    have = set(target.list(LEDGER_DIR))
    for relative in source.list(LEDGER_DIR):
        if relative not in have:
            target.write_bytes(relative, source.read_bytes(relative))
            copied += 1
    return copied


def _finished(store: ArtifactStore, stage: str) -> bool:
    try:
        read_manifest(store, rollout_prefix(stage))
    except ArtifactError:
        return False
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
