"""One round of the retraining loop through Prefect, as a user would drive it from the UI: ``make loop``,
``ragdistill loop run``.

1. :func:`plan_loop_round` checks, before any server starts: the run root has a pipeline (the loop's
   refusal, ``flows.loop_config``), the given config computes its stage settings, the next batches play
   fresh tasks, and the batches can bring the stored failures to the run root's ``retrain.min_failures``.
2. :func:`run_loop_round` serves the project's deployments as ``ragdistill serve`` does
   (``deployments.serving``: the server, the deployments with their trigger and automations, one process
   worker; the nightly schedule as ``RAGDISTILL_NIGHTLY`` says, the retrain check and the collect schedule
   off, so the round's retrain comes from the trigger alone), and runs the ``collect/ragdistill`` deployment once per batch, each a deployment run the
   worker executes, with the run root alone as parameter, so it uses the run root's stored config as the
   triggered retrain does.
3. The collect that brings the stored failures to the threshold emits ``ragdistill.retrain.due``, and the
   retrain deployment's event trigger starts the retrain: this module never starts one. It finds the
   triggered run through the API (a run of ``retrain/ragdistill`` created by an automation after that
   collect run was created) and waits for it, and for any retrain run started meanwhile (one queued
   behind it, one started by hand), to end; their decisions are read from storage.
4. The table of base, generation 1 and later generations (``stages.generations_table``) is written to
   ``loop/generations.md`` under the run root and shown as the Prefect artifact ``loop-generations``.

Leaving, however (the end, an error, Ctrl-C), stops the worker with its flow runs and the server when this
round started it. Nothing finished is lost: collect episodes are stored as they finish and a batch
resumes, a retrain's stages resume and its watermark moves only at its end (a crashed retrain is retried
by the crash automations on the next worker of the pool).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ragdistill.config.stages import PipelineSettings
from ragdistill.deployments.run_watch import COMPLETED, Progress, RunOutcome, RunWatcher
from ragdistill.deployments.serving import served_deployments
from ragdistill.deployments.specs import (
    DEPLOYMENT_NAME,
    DEPLOYMENTS,
    ActiveSchedules,
    FlowDeployment,
    nightly_requested,
)
from ragdistill.flows.loop_config import LoopInputError, loop_config, recorded_config
from ragdistill.layout import ROLLOUTS_DIR, collect_stage
from ragdistill.orchestration.server import DEFAULT_START_TIMEOUT_S, configure_prefect_home
from ragdistill.orchestration.worker import WORK_POOL
from ragdistill.stages.collect import check_fresh_tasks, next_batch, recorded_failures
from ragdistill.stages.generations_table import GENERATIONS_TABLE_FILE, GenerationsTable, generations_table
from ragdistill.stages.loop_status import LoopStatus, loop_status
from ragdistill.stages.retrain import DECISIONS_DIR
from ragdistill.store import ArtifactStore, read_manifest

COLLECT_DEPLOYMENT = f"collect/{DEPLOYMENT_NAME}"
RETRAIN_DEPLOYMENT = f"retrain/{DEPLOYMENT_NAME}"
DEFAULT_BATCHES = 2
GENERATIONS_ARTIFACT = "loop-generations"
WORKER_LOG = "loop-worker.log"
"""The worker's output (its flow runs' logs), under the Prefect home."""
WORKER_QUERY_ENV = "PREFECT_WORKER_QUERY_SECONDS"
WORKER_QUERY_S = "2"
"""How often the worker asks for scheduled runs (Prefect's default: 10 s), unless the environment says."""
TRIGGER_WAIT_S = 180.0
"""How long after the due collect ended the triggered retrain run may take to appear."""


@dataclass(frozen=True)
class LoopPlan:
    """What a round will do, checked by :func:`plan_loop_round`."""

    config_name: str
    """The config the deployments are registered from (``-c``)."""
    run_root: str
    batches: int
    first_batch: int
    batch_size: int
    min_failures: int
    """The run root's stored ``retrain.min_failures``: the one its collects and the triggered retrain use."""
    pending_failures: int
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CollectOutcome:
    run: RunOutcome
    batch: str
    episodes: int
    won: int
    failures: int
    status: LoopStatus
    """The run root's loop status after this batch."""


@dataclass(frozen=True)
class LoopRound:
    run_root: str
    ui_url: str
    """The Prefect UI the round reported to (stopped with the round when the round started it)."""
    collects: list[CollectOutcome]
    retrains: list[RunOutcome]
    decisions: list[dict[str, Any]]
    """The retrain decisions recorded during the round, oldest first."""
    table: GenerationsTable
    table_uri: str
    status: LoopStatus
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The round as the command's JSON line."""
        decision = self.decisions[-1] if self.decisions else None
        trained = next((d for d in reversed(self.decisions) if not d.get("skipped")), None)
        generation = trained.get("generation") if trained else None
        gate = next(
            (g for g in self.table.gates if generation is not None and g.generation == generation + 1), None
        )
        return {
            "command": "loop run",
            "run_root": self.run_root,
            "ui_url": self.ui_url,
            "collects": [
                {
                    **c.run.summary(),
                    "batch": c.batch,
                    "episodes": c.episodes,
                    "won": c.won,
                    "failures": c.failures,
                }
                for c in self.collects
            ],
            "retrains": [run.summary() for run in self.retrains],
            "retrain_generation": generation,
            "student_generation": generation + 1 if generation is not None else None,
            "skipped": decision.get("skipped") if decision else None,
            "new_failures": trained.get("new_failures") if trained else None,
            "gate": None if gate is None else {k: v for k, v in vars(gate).items() if k != "generation"},
            "champion": self.status.champion,
            "pending_failures": self.status.pending_failures,
            "min_failures": self.status.min_failures,
            "table": self.table_uri,
            "artifact": GENERATIONS_ARTIFACT,
            "seconds": round(self.seconds, 1),
        }


def plan_loop_round(
    config_name: str, run_root: str | None = None, batches: int = DEFAULT_BATCHES
) -> LoopPlan:
    """The round's plan, or a :class:`~ragdistill.errors.UserFacingError` saying what stops it: no pipeline
    on the run root, a config whose stage settings are not the run root's, a batch on reserved tasks, or a
    threshold these batches cannot reach even if every episode fails."""
    if batches < 1:
        raise LoopInputError(f"batches must be at least 1, not {batches}")
    config = loop_config(config_name, run_root)
    stages = PipelineSettings.from_experiment(config, experiment_check=True)
    store = ArtifactStore(stages.ctx.run_root)
    first = next_batch(store)
    for batch in range(first, first + batches):
        check_fresh_tasks(stages.ctx, stages.collect(batch), stages.reserved_tasks())
    stored = recorded_config(store.root_url)
    min_failures = stored.retrain.min_failures
    pending = loop_status(store, min_failures).pending_failures
    batch_size = stored.collect.batch_size
    reachable = pending + batches * batch_size
    if reachable < min_failures:
        raise LoopInputError(
            f"{batches} collect batch(es) of collect.batch_size {batch_size} record at most {batches * batch_size} "
            f"failure(s); with {pending} pending, the run root's retrain.min_failures ({min_failures}) cannot "
            f"be reached, so no retrain would start. Lower retrain.min_failures to at most {reachable} in "
            f"{config_name} and run the pipeline again (`make demo`: every stage is reused, the run root then "
            "stores the new threshold), or collect more first (`ragdistill collect --run-root "
            f"{store.root_url}`)"
        )
    notes = []
    if config.retrain.min_failures != min_failures:
        notes.append(
            f"{config_name} sets retrain.min_failures {config.retrain.min_failures}, the run root stores "
            f"{min_failures}: the loop's runs use the run root's (run the pipeline again to store the new one)"
        )
    return LoopPlan(config_name, store.root_url, batches, first, batch_size, min_failures, pending, notes)


def run_loop_round(
    plan: LoopPlan,
    progress: Progress = print,
    *,
    work_pool: str = WORK_POOL,
    timeout_s: float = DEFAULT_START_TIMEOUT_S,
    trigger_wait_s: float = TRIGGER_WAIT_S,
    working_dir: Path | None = None,
    worker_environment: dict[str, str] | None = None,
    deployments: Sequence[FlowDeployment] = DEPLOYMENTS,
) -> LoopRound:
    """Run the round ``plan`` describes (see the module docstring); ``deployments`` are the project's
    (a test serves its own flows under the same names), ``worker_environment`` adds to the worker's."""
    started, since = time.monotonic(), datetime.now(UTC)
    store = ArtifactStore(plan.run_root)
    log_path = configure_prefect_home() / WORKER_LOG
    environment = {
        WORKER_QUERY_ENV: os.environ.get(WORKER_QUERY_ENV, WORKER_QUERY_S),
        **(worker_environment or {}),
    }
    schedules = ActiveSchedules(nightly=nightly_requested())
    with (
        log_path.open("ab") as log,
        served_deployments(
            plan.config_name,
            schedules,
            work_pool,
            timeout_s=timeout_s,
            run_root=plan.run_root,
            working_dir=working_dir,
            worker_output=log,
            worker_environment=environment,
            deployments=deployments,
        ) as served,
    ):
        progress(f"Prefect UI: {served.ui_url}; a process worker serves {work_pool!r} (its log: {log_path})")
        watcher = RunWatcher(served.worker, log_path)
        collects = [_collect(watcher, store, plan, index, progress) for index in range(plan.batches)]
        due = next((c for c in collects if c.status.retrain_due), None)
        retrains: list[RunOutcome] = []
        if due is None:
            progress(
                f"no retrain: {collects[-1].status.pending_failures} failure(s) pending, fewer than "
                f"retrain.min_failures ({plan.min_failures}); `make loop` again collects more"
            )
        else:
            progress(f"{due.batch} reached the threshold: waiting for the retrain its event triggers")
            retrains = watcher.wait_triggered(
                RETRAIN_DEPLOYMENT, due.run.created, since, trigger_wait_s, progress
            )
        decisions = _decisions_since(store, since)
        table = generations_table(store)
        table_uri = store.uri(GENERATIONS_TABLE_FILE)
        store.write_text(GENERATIONS_TABLE_FILE, table.markdown())
        _publish(table, plan.run_root, (retrains or [c.run for c in collects])[-1].flow_run_id)
        status = loop_status(store, plan.min_failures)
        ui_url = served.ui_url
    return LoopRound(
        plan.run_root,
        ui_url,
        collects,
        retrains,
        decisions,
        table,
        table_uri,
        status,
        time.monotonic() - started,
    )


def _collect(
    watcher: RunWatcher, store: ArtifactStore, plan: LoopPlan, index: int, progress: Progress
) -> CollectOutcome:
    """One ``collect/ragdistill`` deployment run, waited for; the batch it finished and the status after."""
    from prefect.deployments import run_deployment

    batch = collect_stage(next_batch(store))
    flow_run = run_deployment(
        COLLECT_DEPLOYMENT, parameters={"run_root": plan.run_root}, timeout=0, as_subflow=False
    )
    progress(f"collect {index + 1}/{plan.batches}: deployment run {flow_run.name} plays {batch}")
    outcome = watcher.wait(flow_run.id, f"the collect run {flow_run.name}", "the round")
    if outcome.state != COMPLETED:
        raise watcher.failure(f"the collect run {flow_run.name} ended {outcome.state}: {outcome.message}")
    counts = read_manifest(store, f"{ROLLOUTS_DIR}/{batch}").counts
    failures = len(recorded_failures(store, batch))
    status = loop_status(store, plan.min_failures)
    progress(
        f"  {batch}: {counts.get('episodes', 0)} episodes, {counts.get('won', 0)} won, {failures} failure(s); "
        f"{status.pending_failures} pending of retrain.min_failures {status.min_failures}"
        + ("; retrain due" if status.retrain_due else "")
    )
    return CollectOutcome(
        outcome, batch, int(counts.get("episodes", 0)), int(counts.get("won", 0)), failures, status
    )


def _decisions_since(store: ArtifactStore, since: datetime) -> list[dict[str, Any]]:
    """The retrain decisions recorded since ``since``, oldest first (their file names sort by time)."""
    decisions = []
    for relative in sorted(store.list(DECISIONS_DIR)):
        record = store.read_json(relative)
        decided = record.get("decided_at")
        if decided and datetime.fromisoformat(decided) >= since.replace(microsecond=0):
            decisions.append(record)
    return decisions


def _publish(table: GenerationsTable, run_root: str, flow_run_id: str) -> None:
    """The table as the markdown artifact :data:`GENERATIONS_ARTIFACT` of the run ``flow_run_id`` (the
    retrain that made the last generation, else the last collect), so the UI shows it there and under
    Artifacts."""
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    artifact = ArtifactCreate(
        key=GENERATIONS_ARTIFACT,
        type="markdown",
        data=table.markdown(),
        description=f"{run_root}: base, generation 1 and later generations on the pinned evaluation tasks",
        flow_run_id=uuid.UUID(flow_run_id),
    )
    with get_client(sync_client=True) as client:
        client.create_artifact(artifact)
