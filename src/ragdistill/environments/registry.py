"""Environments by name: a factory that builds one :class:`Env`, a lister that finds its tasks, and
the :class:`EnvProfile` that tells agents, mining and training everything else about it.

Users add their own with :func:`register_env`. Conventions the pool, the checker and the rollout
stage rely on: the factory accepts a ``data_dir`` keyword; the lister accepts ``data_dir``, ``split``,
``limit`` and ``task_types`` keywords (``balanced`` and ``shuffle_seed`` optionally). The factory must
be importable by reference (a module-level class or function): the pool sends it to spawned worker
processes, which do not see registrations made at run time.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ragdistill.environments.base import Env, EnvError, TaskInfo
from ragdistill.environments.profile import EnvProfile

EnvFactory = Callable[..., Env]
TaskLister = Callable[..., list[TaskInfo]]


@dataclass(frozen=True)
class EnvSpec:
    """An environment by name: how to build one, how to list its tasks, and its profile (the facts
    about it that other stages need without naming it)."""

    name: str
    factory: EnvFactory
    task_lister: TaskLister
    profile: EnvProfile
    version: Callable[..., dict[str, str]] | None = None
    """``version(data_dir=...)``: what identifies the environment's code and data (package versions,
    the installed games); part of every rollout's identity and pinned task list."""
    check_report: Callable[..., dict[str, Any]] | None = None
    """``check_report(data_dir=..., tasks=..., summary=...)``: facts ``ragdistill env check`` prints after
    the success rate (label -> JSON-able value), e.g. WebShop's score and search hit rates."""


_REGISTRY: dict[str, EnvSpec] = {}


def register_env(
    name: str,
    factory: EnvFactory,
    task_lister: TaskLister,
    profile: EnvProfile,
    *,
    version: Callable[..., dict[str, str]] | None = None,
    check_report: Callable[..., dict[str, Any]] | None = None,
    replace: bool = False,
) -> EnvSpec:
    """Make ``name`` available to configs, the pool and ``ragdistill env check``."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"environment {name!r} is already registered; pass replace=True to override it")
    if profile.name != name:
        raise ValueError(f"environment {name!r} registered with the profile of {profile.name!r}")
    spec = EnvSpec(name, factory, task_lister, profile, version, check_report)
    _REGISTRY[name] = spec
    return spec


def registered_envs() -> list[str]:
    return sorted(_REGISTRY)


def get_env(name: str) -> EnvSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EnvError(
            f"unknown environment {name!r}; registered: {registered_envs()} "
            "(add one with ragdistill.environments.registry.register_env)"
        ) from None


def get_profile(name: str) -> EnvProfile:
    """The profile of the registered environment ``name``."""
    return get_env(name).profile


def make_env(name: str, **kwargs: Any) -> Env:
    return get_env(name).factory(**kwargs)


def list_tasks(env_name: str, **kwargs: Any) -> list[TaskInfo]:
    """The tasks of ``env_name`` (keyword arguments go to its lister: data_dir, split, limit, …)."""
    return get_env(env_name).task_lister(**kwargs)


def lister_takes(env_name: str, keyword: str) -> bool:
    """Whether ``env_name``'s task lister takes the optional ``keyword`` (``balanced``, ``shuffle_seed``)."""
    return keyword in inspect.signature(get_env(env_name).task_lister).parameters


def _register_builtin() -> None:
    from ragdistill.environments import webshop
    from ragdistill.environments.alfworld import env as alfworld
    from ragdistill.environments.alfworld.profile import ALFWORLD_PROFILE
    from ragdistill.environments.webshop.profile import WEBSHOP_PROFILE

    register_env(
        alfworld.ENV_NAME,
        alfworld.AlfworldEnv,
        alfworld.list_tasks,
        ALFWORLD_PROFILE,
        version=alfworld.environment_version,
    )
    register_env(
        webshop.ENV_NAME,
        webshop.make_env,
        webshop.list_tasks,
        WEBSHOP_PROFILE,
        version=webshop.environment_version,
        check_report=webshop.check_report,
    )


_register_builtin()


def environment_version(name: str, data_dir: Any) -> dict[str, str]:
    """The registered environment's version (empty when it does not say)."""
    spec = get_env(name)
    return spec.version(data_dir=data_dir) if spec.version is not None else {}
