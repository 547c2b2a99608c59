"""Preflight: before work starts, check that what a config names exists on this machine.

The models (a short name, a folder, or a hub id), the few-shot source, expert teacher and warm start the
environment must offer, and the accelerate config file. Validating a config (``ragdistill.config``) never looks at
the machine, so a stored run's config (``ragdistill report``) loads anywhere; the CLI commands and the
flows that run work call :func:`check_runnable` right after loading theirs.

An environment registered at run time (a test double, a plug-in) that is not registered yet is checked
by the stage that plays it, which stops before writing when the name is unknown.
"""

from __future__ import annotations

from pathlib import Path

from ragdistill.config import ConfigError, ExperimentConfig, RoleConfig
from ragdistill.environments.registry import get_profile, lister_takes, registered_envs
from ragdistill.models import CHAT_MODELS, EMBEDDING_MODELS
from ragdistill.training.accelerate_configs import AccelerateConfigError, accelerate_config_path


def check_runnable(config: ExperimentConfig, source: str | Path = "<config>") -> ExperimentConfig:
    """``config`` when this machine has everything it names; else :class:`ConfigError` naming ``source``
    and every setting at fault (see :func:`runnable_problems`)."""
    problems = runnable_problems(config)
    if problems:
        raise ConfigError(
            f"{source}: {len(problems)} setting(s) name what this machine lacks:\n  " + "\n  ".join(problems)
        )
    return config


def runnable_problems(config: ExperimentConfig) -> list[str]:
    """Every setting that names something this machine does not have, with what to set instead."""
    problems: list[str] = []
    for role_name, role in _roles_in_use(config).items():
        if role.backend.kind == "openai":
            continue  # the server's own model names
        problem = _model_problem(f"models.{role_name}.model.name", role.model.name, sorted(CHAT_MODELS))
        if problem:
            problems.append(problem)
        problem = _quantization_problem(f"models.{role_name}", role)
        if problem:
            problems.append(problem)
    problem = _model_problem(
        "retrieval.embedding_model", config.retrieval.embedding_model, sorted(EMBEDDING_MODELS)
    )
    if problem:
        problems.append(problem)
    problems += _environment_problems(config)
    try:
        accelerate_config_path(config.training.accelerate_config)
    except AccelerateConfigError as error:
        problems.append(f"training.accelerate_config: {error}")
    return problems


def _roles_in_use(config: ExperimentConfig) -> dict[str, RoleConfig]:
    roles = dict(config.engine_roles())
    if config.retrieval.group == "llm":
        roles["reranker"] = config.models.reranker
    return roles


def _model_problem(key: str, name: str, short_names: list[str]) -> str | None:
    """Why ``name`` names no model this machine can load, or None."""
    if name in short_names or Path(name).expanduser().is_dir():
        return None
    if name.startswith(("/", ".", "~")) or Path(name).suffix in {".gguf", ".safetensors", ".bin"}:
        return f"{key}: {name!r} looks like a local folder but there is none; prepare one or fix the path"
    if "/" in name.strip("/"):
        return None
    return (
        f"{key}: unknown model {name!r}; use a short name ({', '.join(short_names)}), a local folder, or a "
        "hub id written as org/name"
    )


def _quantization_problem(key: str, role: RoleConfig) -> str | None:
    """Why the installed vLLM cannot load ``role``'s quantization, or None. (The hf backend checks for
    CUDA and bitsandbytes when it starts: a machine with the ``gpu`` extra has both.)"""
    if role.backend.kind != "vllm" or role.model.quantization is None:
        return None
    offered = vllm_quantizations()
    if role.model.quantization in offered:
        return None
    installed = "vLLM is not installed" if not offered else "the installed vLLM does not offer it"
    return (
        f"{key}.model.quantization: {role.model.quantization!r} cannot be loaded by vllm here ({installed}; "
        f"vLLM 0.32 dropped bitsandbytes); set {key}.backend.kind: hf, which loads it with bitsandbytes on "
        "a CUDA GPU, or serve a 4-bit model elsewhere and point backend.kind: openai at it"
    )


def vllm_quantizations() -> frozenset[str]:
    """The quantization methods the installed vLLM offers (empty when vLLM is not installed)."""
    try:
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    except ImportError:
        return frozenset()
    return frozenset(QUANTIZATION_METHODS)


def _environment_problems(config: ExperimentConfig) -> list[str]:
    if config.env.name not in registered_envs():
        return []
    profile = get_profile(config.env.name)
    problems: list[str] = []
    if config.env.shuffle_seed is not None and not lister_takes(profile.name, "shuffle_seed"):
        problems.append(
            f"env.shuffle_seed: environment {profile.name!r} cannot order its tasks by a seed (its task "
            "lister takes no shuffle_seed); remove it"
        )
    source = config.agent.fewshot_source
    if source != "none" and source not in profile.fewshot_sources:
        offered = ", ".join([*profile.fewshot_sources, "none"])
        problems.append(
            f"agent.fewshot_source: environment {profile.name!r} offers no {source!r} few-shot examples; "
            f"use one of: {offered}"
        )
    if config.distill.teacher in ("expert", "both") and profile.render_demonstration is None:
        problems.append(
            f"distill.teacher: {config.distill.teacher!r} needs expert demonstrations, which environment "
            f"{profile.name!r} cannot render, so the distill student would have no training set; use 'rag'"
        )
    if config.warm_start.enabled and profile.render_demonstration is None:
        problems.append(
            f"warm_start.enabled: the warm start learns from expert demonstrations, which environment "
            f"{profile.name!r} cannot render; set warm_start.enabled: false"
        )
    return problems
