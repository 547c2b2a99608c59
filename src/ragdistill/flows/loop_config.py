"""The config a collect or a retrain runs with: the one that made its run root.

A run root's outputs were computed with the config its pipeline ran (the pipeline stores it in
``run.json``). Collect batches extend its rollouts and retrain generations extend its registry, so both
run with that config, never a default fixed when a deployment was made: given only a run root (as the
retrain trigger and the loop deployments' defaults give it), :func:`loop_config` reads the stored config.
A config named as well (the CLI's ``-c``, a run form's ``config_name``) or overrides may change where and
how the loop runs (workers, batch sizes, engines, the retrain threshold) but no stage setting: a config
whose stage settings differ from the stored ones (``config.run_root_match``) stops with an error naming
each differing setting, before anything is written. A run root without ``run.json`` has no pipeline to
extend, and a loop never takes a run root over (``run.replace_experiment`` stays off).

A run a deployment started (the UI, the API, the retrain trigger, a schedule) is bounded as every
deployment run is (``flows.run_requests``): a config named by name under ``configs/`` only, and the run
root inside the operator's prefix, checked before its ``run.json`` is read.
"""

from __future__ import annotations

from pydantic import BaseModel

from ragdistill.config import ExperimentConfig, validate_stored_config, with_overrides
from ragdistill.config.run_root_match import settings_differences
from ragdistill.config.stages import experiment_record
from ragdistill.errors import UserFacingError
from ragdistill.flows.parameters import dotted_overrides, experiment_config
from ragdistill.flows.run_requests import check_run_root, deployment_defaults
from ragdistill.layout import RUN_FILE
from ragdistill.preflight import check_runnable
from ragdistill.stages.experiment import check_experiment
from ragdistill.store import ArtifactStore

ONE_RUN_SWITCHES = {"run.allow_unknown_files": False, "run.replace_experiment": False}
"""What the stored config's run recorded for itself alone; a loop run starts from these."""


class LoopInputError(UserFacingError, ValueError):
    """A collect or retrain cannot run on what it was given; the message says what to do."""


class RunRootMismatch(LoopInputError):
    """The config given for a collect or retrain computes other stage settings than its run root's."""


def recorded_config(run_root: str) -> ExperimentConfig:
    """The config the pipeline of ``run_root`` ran with (its ``run.json``), on that run root, without
    the one-run switches of that run; :class:`LoopInputError` when no pipeline ran there."""
    store = ArtifactStore(run_root)
    if not store.exists(RUN_FILE):
        raise LoopInputError(
            f"no pipeline has run on the run root {store.root_url}: {store.uri(RUN_FILE)}, where the pipeline "
            "stores the config it ran with, is missing, and collect and retrain extend that run. Run "
            "`ragdistill pipeline -c CONFIG` with this run root first (stages it finished are reused)"
        )
    run = store.read_json(RUN_FILE)
    stored = run.get("config") if isinstance(run, dict) else None
    config = validate_stored_config(stored, source=store.uri(RUN_FILE))
    return with_overrides(config, {"run.run_root": run_root, **ONE_RUN_SWITCHES})


def stored_config(run_root: str) -> ExperimentConfig:
    """:func:`recorded_config` for a run given only its run root (a loop run, or naming one): in a run a
    deployment started, only once the run root lies inside the operator's prefix
    (:func:`~ragdistill.flows.run_requests.check_run_root`), before its ``run.json`` is read."""
    deployed = deployment_defaults()
    if deployed is not None:
        check_run_root(run_root, [deployed.get("run_root")])
    return recorded_config(run_root)


def loop_config(
    config_name: str | None, run_root: str | None, overrides: BaseModel | None = None
) -> ExperimentConfig:
    """The checked config a collect or retrain runs with (see the module docstring): the run root's own,
    or ``config_name`` (with ``overrides``) when its stage settings are the run root's."""
    explicit = {"run.run_root": run_root, **ONE_RUN_SWITCHES}
    if config_name:
        config, path = experiment_config(config_name, overrides, explicit)
        source = str(path)
        recorded = recorded_config(config.run.run_root)
    elif run_root:
        recorded = stored_config(run_root)
        source = ArtifactStore(run_root).uri(RUN_FILE)
        config = with_overrides(recorded, {**dotted_overrides(overrides), **explicit})
        config = check_runnable(config, source)
        check_experiment(ArtifactStore(run_root), experiment_record(config))
    else:
        raise LoopInputError(
            "which run root? give run_root (the stored config of its pipeline is used) or config_name "
            "(its run.run_root)"
        )
    differences = settings_differences(recorded, config)
    if differences:
        raise RunRootMismatch(
            f"{source} does not match the run root {ArtifactStore(config.run.run_root).root_url}: collect "
            f"and retrain extend what its pipeline computed, so they run with the stage settings stored in "
            f"its {RUN_FILE}, and {len(differences)} setting(s) differ:\n  "
            + "\n  ".join(differences)
            + "\nGive only the run root (its stored config is used), set those back, or start a run root of "
            "its own with `ragdistill pipeline`"
        )
    return config
