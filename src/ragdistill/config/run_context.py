"""Where and how stages run (:class:`RunContext`), never part of an identity, and which experiment a run
root belongs to (:class:`ExperimentRecord`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ragdistill.config.base import Frozen
from ragdistill.config.experiment import ExperimentConfig
from ragdistill.config.models import BackendConfig
from ragdistill.config.rollouts import OrchestrationConfig, RolloutConfig
from ragdistill.config.training import TrainingLaunch


class ExperimentRecord(Frozen):
    """Which experiment a run belongs to (``stages.experiment``): its run name and environment define it,
    ``settings`` (a digest of every stage's settings) says what it last ran with."""

    run_name: str
    env: str
    settings: str


class RunContext(Frozen):
    """Where and how stages run; never part of an identity."""

    run_root: str
    run_name: str
    env_name: str = ""
    """For names and logs only (task runs are named ``<stage>-<env>-<run>``)."""
    lease_wait_s: float = 0.0
    data_dir: Path = Path("data")
    env_workers: int = 2
    max_games_per_worker: int = 200
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """Batch size, shard size and count, error share and transient retries of every rollout."""
    mining_chunk_size: int = 32
    backends: dict[str, BackendConfig] = Field(default_factory=dict)
    """How each model role's engine is loaded (by role name); what it generates is in the settings."""
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    training_launch: TrainingLaunch = Field(default_factory=TrainingLaunch)
    """Where the training processes run: machines, this machine's rank, where they meet (``training.launch``)."""
    allow_unknown_files: bool = False
    """A stage runs even when its folder holds files ragdistill did not write (left in place)."""
    experiment: ExperimentRecord | None = None
    """The experiment every stage checks the run root against before it claims a folder (None: none)."""
    replace_experiment: bool = False
    """This experiment may take over a run root that records another one."""
    warm_start_root: str | None = None
    """The run root whose ``warm-start/`` holds the agent's warm-started checkpoint, when not this one (a
    retrain generation plays on its parent's)."""

    @classmethod
    def of_experiment(
        cls, config: ExperimentConfig, experiment: ExperimentRecord | None, warm_start_root: str | None = None
    ) -> RunContext:
        """Where and how ``config``'s stages run; ``experiment``: the experiment each of them checks (and
        records) in the run root first (``stages.experiment``), as every run the CLI or a flow starts
        does; ``warm_start_root``: the run root holding the warm start, when not ``run.run_root``."""
        return cls(
            run_root=config.run.run_root,
            run_name=config.run.name,
            env_name=config.env.name,
            lease_wait_s=config.run.lease_wait_s,
            data_dir=config.env.data_dir,
            env_workers=config.env.workers,
            max_games_per_worker=config.env.max_games_per_worker,
            rollout=config.rollout,
            mining_chunk_size=config.mining.chunk_size,
            backends={
                name: getattr(config.models, name).backend for name in ("agent", "extractor", "reranker")
            },
            orchestration=config.orchestration,
            training_launch=config.training.launch,
            allow_unknown_files=config.run.allow_unknown_files,
            experiment=experiment,
            replace_experiment=config.run.replace_experiment,
            warm_start_root=warm_start_root,
        )
