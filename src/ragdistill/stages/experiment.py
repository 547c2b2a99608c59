"""One experiment per run root: ``experiment.json`` says which one the root holds.

An experiment is its run name and its environment (``run.name``, ``env.name``); within one, settings
change freely (a changed setting re-runs the stages that read it, as identities say). Two experiments
on one run root would clear each other's stage folders, so the first stage to run on a root records its
experiment there, and every later stage, CLI command and flow checks it first: another experiment stops
with an error naming both, before anything is written. ``run.replace_experiment`` (``--replace-experiment``)
lets a run take a root over on purpose; its stages then replace the other experiment's outputs.

A run root made before this file existed records its experiment in ``run.json`` (the config of the run
that wrote it), which is read instead. A retrain generation (``generations/<k>/``) is the same
experiment on a root of its own.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from ragdistill.config.run_context import ExperimentRecord
from ragdistill.errors import UserFacingError
from ragdistill.layout import RUN_FILE
from ragdistill.store import ArtifactError, ArtifactStore

EXPERIMENT_FILE = "experiment.json"

log = logging.getLogger("ragdistill.stages")


class ExperimentConflict(UserFacingError, RuntimeError):
    """The run root holds another experiment; the message names both and what to do."""


def recorded_experiment(store: ArtifactStore) -> dict[str, Any] | None:
    """The experiment the run root records (``run_name``, ``env``, ``settings``), or None for a new root."""
    if store.exists(EXPERIMENT_FILE):
        recorded = store.read_json(EXPERIMENT_FILE)
        if not isinstance(recorded, dict) or not {"run_name", "env"} <= recorded.keys():
            raise ArtifactError(
                f"{store.uri(EXPERIMENT_FILE)} is not an experiment record (run_name, env, settings): it was "
                "edited by hand; restore it, or delete it to let the next run record its own"
            )
        return recorded
    if store.exists(RUN_FILE):
        run = store.read_json(RUN_FILE)
        config = run.get("config", {}) if isinstance(run, dict) else {}
        try:
            return {"run_name": config["run"]["name"], "env": config["env"]["name"], "settings": None}
        except (KeyError, TypeError):
            return None
    return None


def describe(record: dict[str, Any] | ExperimentRecord) -> str:
    """``'demo-alfworld' on alfworld (settings 1a2b3c4d5e6f)``."""
    fields = record.model_dump() if isinstance(record, ExperimentRecord) else record
    settings = fields.get("settings")
    suffix = f" (settings {settings[:12]})" if settings else ""
    return f"{fields['run_name']!r} on {fields['env']}{suffix}"


def check_experiment(
    store: ArtifactStore, experiment: ExperimentRecord, *, replace: bool = False
) -> dict[str, Any] | None:
    """The run root's recorded experiment, after checking that it is ``experiment`` (or ``replace``);
    :class:`ExperimentConflict` naming both otherwise. Reads only."""
    recorded = recorded_experiment(store)
    if recorded is None or replace:
        return recorded
    if (recorded["run_name"], recorded["env"]) != (experiment.run_name, experiment.env):
        raise ExperimentConflict(
            f"the run root {store.root_url} holds the experiment {describe(recorded)}, and this run is "
            f"{describe(experiment)}: a run root holds one experiment, so that no stage of one clears "
            "another's outputs. Give this run a run root of its own (run.run_root, or --run-root), or "
            "take this one over with --replace-experiment (run.replace_experiment: true), which lets this "
            "run's stages replace that experiment's outputs"
        )
    return recorded


def claim_experiment(store: ArtifactStore, experiment: ExperimentRecord, *, replace: bool = False) -> None:
    """Check the run root's experiment (:func:`check_experiment`) and record ``experiment`` there when it
    is new, replaced, or ran with other settings since."""
    recorded = check_experiment(store, experiment, replace=replace)
    wanted = experiment.model_dump()
    if recorded is not None and {key: recorded.get(key) for key in wanted} == wanted:
        return
    if recorded is not None and (recorded["run_name"], recorded["env"]) != (
        experiment.run_name,
        experiment.env,
    ):
        log.warning(
            "%s: the experiment %s replaces %s (run.replace_experiment)",
            store.root_url,
            describe(experiment),
            describe(recorded),
        )
    store.write_json(
        EXPERIMENT_FILE, {**wanted, "updated_at": datetime.now(UTC).isoformat(timespec="seconds")}
    )
