"""Every setting of an experiment, as typed pydantic models with documented defaults.

A YAML file under ``configs/`` is one :class:`ExperimentConfig`. Unknown keys and wrong types are
rejected before any work starts; :class:`ConfigError` names the file and the dotted key at fault.
Defaults follow the paper (``specs/paper.md``) wherever the paper fixes a value. Nothing here looks at
the machine: whether the models, the environment's offerings and the accelerate file a config names
exist is checked before a run by :mod:`ragdistill.preflight`.

One module per group of sections (``base``, ``models``, ``rollouts``, ``retrieval``, ``training``,
``warm_start``, ``evaluation``), the whole experiment in ``experiment``, finding a config by name in
``files`` and reading it in ``loading``; every name is importable from ``ragdistill.config``.
"""

from ragdistill.config.base import DEFAULT_GPU_SHARE, ConfigError, StrictModel
from ragdistill.config.evaluation import (
    CollectConfig,
    EvaluationConfig,
    PromotionConfig,
    RetrainConfig,
    RunConfig,
)
from ragdistill.config.experiment import ExperimentConfig
from ragdistill.config.files import CONFIGS_DIR, DEFAULT_CONFIG, available_configs, config_file
from ragdistill.config.loading import (
    config_hash,
    load_config,
    validate_config,
    validate_stored_config,
    with_overrides,
)
from ragdistill.config.models import (
    BackendConfig,
    ModelsConfig,
    ModelSpec,
    RoleConfig,
    SamplingConfig,
    engine_key,
)
from ragdistill.config.retrieval import AblationConfig, HintRules, MiningConfig, RetrievalConfig
from ragdistill.config.rollouts import AgentConfig, EnvConfig, OrchestrationConfig, RolloutConfig
from ragdistill.config.training import DistillConfig, TrainingConfig, TrainingLaunch, TrainingRecipe
from ragdistill.config.warm_start import WarmStartConfig

__all__ = [
    "CONFIGS_DIR",
    "DEFAULT_CONFIG",
    "DEFAULT_GPU_SHARE",
    "AblationConfig",
    "AgentConfig",
    "BackendConfig",
    "CollectConfig",
    "ConfigError",
    "DistillConfig",
    "EnvConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "HintRules",
    "MiningConfig",
    "ModelSpec",
    "ModelsConfig",
    "OrchestrationConfig",
    "PromotionConfig",
    "RetrainConfig",
    "RetrievalConfig",
    "RoleConfig",
    "RolloutConfig",
    "RunConfig",
    "SamplingConfig",
    "StrictModel",
    "TrainingConfig",
    "TrainingLaunch",
    "TrainingRecipe",
    "WarmStartConfig",
    "available_configs",
    "config_file",
    "config_hash",
    "engine_key",
    "load_config",
    "validate_config",
    "validate_stored_config",
    "with_overrides",
]
