"""The accelerate configs shipped with ragdistill (``training/accelerate/*.yaml``) and how a setting
``training.accelerate_config`` names one: a shipped name (cpu, multi-cpu, 1gpu, ddp, fsdp) or a YAML file.

The project builds the launch of a shipped config (``training.launch_plan``); a file of the user's own is
read here only to know where its processes run, and reaches ``accelerate launch`` unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ragdistill.errors import UserFacingError

SHIPPED_CONFIGS = ("cpu", "multi-cpu", "1gpu", "ddp", "fsdp")


class AccelerateConfigError(UserFacingError, ValueError):
    """An accelerate config that cannot be found or read."""


def shipped_config_dir() -> Path:
    return Path(str(resources.files("ragdistill.training") / "accelerate"))


def accelerate_config_path(name_or_path: str | Path) -> Path:
    """The YAML file of a shipped config name, or an existing file given by path."""
    text = str(name_or_path)
    if text in SHIPPED_CONFIGS:
        path = shipped_config_dir() / f"{text}.yaml"
        if not path.is_file():
            raise AccelerateConfigError(
                f"the shipped accelerate config {path} is missing; reinstall ragdistill"
            )
        return path
    path = Path(text).expanduser()
    if path.is_file():
        return path.resolve()
    raise AccelerateConfigError(
        f"accelerate config {text!r} is neither a shipped name ({', '.join(SHIPPED_CONFIGS)}) nor an existing "
        "file; set training.accelerate_config to one of those names or to the path of a file made with "
        "`accelerate config --config_file FILE`"
    )


@dataclass(frozen=True)
class AccelerateSetup:
    """What launching needs to know about a config."""

    path: Path
    distributed_type: str
    use_cpu: bool
    num_processes: int
    """Over all machines, as accelerate counts them."""
    shipped: bool = False
    """One of ``SHIPPED_CONFIGS`` (the project builds its launch), not a file of the user's own."""
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None

    @property
    def name(self) -> str:
        return self.path.stem if self.shipped else str(self.path)

    @property
    def uses_gpus(self) -> bool:
        return not self.use_cpu

    @property
    def multi_process_gpu(self) -> bool:
        return self.distributed_type in {"MULTI_GPU", "FSDP", "DEEPSPEED"}

    @property
    def multi_process_cpu(self) -> bool:
        return self.distributed_type == "MULTI_CPU"


def read_accelerate_config(name_or_path: str | Path) -> AccelerateSetup:
    path = accelerate_config_path(name_or_path)
    try:
        data: Any = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise AccelerateConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise AccelerateConfigError(f"{path}: an accelerate config is a mapping of settings")
    try:
        return AccelerateSetup(
            path=path,
            distributed_type=str(data.get("distributed_type", "NO")).upper(),
            use_cpu=bool(data.get("use_cpu", False)),
            num_processes=int(data.get("num_processes", 1)),
            shipped=str(name_or_path) in SHIPPED_CONFIGS,
            num_machines=int(data.get("num_machines", 1)),
            machine_rank=int(data.get("machine_rank", 0)),
            main_process_ip=str(data["main_process_ip"]) if data.get("main_process_ip") else None,
            main_process_port=int(data["main_process_port"]) if data.get("main_process_port") else None,
        )
    except (TypeError, ValueError) as error:
        raise AccelerateConfigError(
            f"{path}: a number of processes, machines or a port is not a whole number: {error}"
        ) from None
