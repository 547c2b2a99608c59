"""Where the training processes run: ``accelerate launch``'s arguments and each process's rank.

A file of the user's own (``training.accelerate_config: path/to/file.yaml``) reaches ``accelerate launch``
unchanged: no argument is added, and ``training.launch`` must stay unset (its numbers are the file's).
For a shipped config the project builds the launch from ``training.launch`` and, for what it leaves
unset, the environment a cluster scheduler sets for one launch per machine (``MASTER_ADDR``,
``MASTER_PORT``, ``NODE_RANK`` or ``RANK``, ``WORLD_SIZE``). accelerate counts processes over all
machines, so ``--num_processes`` is machines x processes per machine, and every machine names the same
``--main_process_ip``/``--main_process_port`` (machine 0's).

- ``cpu``, ``1gpu``: one process on one machine.
- ``ddp``, ``fsdp``: accelerate starts one process per GPU through ``torch.distributed.run``.
- ``multi-cpu``: accelerate's MULTI_CPU launcher starts one process per call (it spreads processes only
  through mpirun), so one ``accelerate launch`` per process is started, each told its rank in ``RANK``,
  ``LOCAL_RANK``, ``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE``, as mpirun would.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ragdistill.config import TrainingLaunch
from ragdistill.training.accelerate_configs import AccelerateSetup
from ragdistill.training.trainer_setup import TrainingError

SCHEDULER_VARIABLES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "GROUP_RANK",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
)
"""What a scheduler or an outer launcher sets about the launches; the processes of a shipped config get
their own values instead (a leftover ``WORLD_SIZE`` would make a one-process training wait for peers)."""
MULTI_MACHINE_PORT = 29500
"""accelerate's and torch's default rendezvous port: what every machine uses when none is given."""


@dataclass(frozen=True)
class LaunchPlan:
    """What this machine starts: ``accelerate launch --config_file FILE *arguments``, once per entry of
    ``process_environments`` (the variables that entry's process gets on top of the launcher's)."""

    setup: AccelerateSetup
    num_machines: int
    machine_rank: int
    processes_per_machine: int
    main_process_ip: str | None
    main_process_port: int | None
    arguments: tuple[str, ...]
    process_environments: tuple[dict[str, str], ...]

    @property
    def num_processes(self) -> int:
        """Every machine's processes together (accelerate's ``--num_processes``)."""
        return self.num_machines * self.processes_per_machine

    @property
    def is_main_machine(self) -> bool:
        """Machine 0: its main process writes the adapter, the curve and ``result.json``."""
        return self.machine_rank == 0

    @property
    def shipped(self) -> bool:
        return self.setup.shipped


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plan_launch(
    setup: AccelerateSetup,
    launch: TrainingLaunch | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    gpus: Callable[[], int] = visible_gpus,
) -> LaunchPlan:
    """The launch of ``setup`` on this machine (see the module docstring); a setting that cannot work
    raises :class:`TrainingError` saying which one and what to set."""
    launch = launch or TrainingLaunch()
    if setup.uses_gpus and gpus() == 0:
        raise TrainingError(
            f"the accelerate config {setup.path.name} trains on CUDA GPUs but none is visible; "
            "set training.accelerate_config: cpu (or multi-cpu)"
        )
    if not setup.shipped:
        return _own_file_plan(setup, launch)
    where = _Where.resolve(launch, os.environ if environ is None else environ)
    if setup.multi_process_gpu:
        per_machine = launch.processes_per_machine or gpus()
        if per_machine > gpus():
            raise TrainingError(
                f"training.launch.processes_per_machine is {per_machine}, but only {gpus()} GPU(s) are visible "
                "on this machine"
            )
        return _built_plan(setup, where, per_machine, ({},))
    if setup.multi_process_cpu:
        per_machine = launch.processes_per_machine or max(setup.num_processes // setup.num_machines, 1)
        total = where.num_machines * per_machine
        ranks = tuple(
            {
                "RANK": str(where.machine_rank * per_machine + local),
                "LOCAL_RANK": str(local),
                "WORLD_SIZE": str(total),
                "LOCAL_WORLD_SIZE": str(per_machine),
            }
            for local in range(per_machine)
        )
        return _built_plan(setup, where, per_machine, ranks)
    per_machine = launch.processes_per_machine or 1
    if where.num_machines > 1 or per_machine > 1:
        raise TrainingError(
            f"the {setup.name} accelerate config trains in one process on one machine, but "
            f"{where.num_machines} machine(s) x {per_machine} process(es) were asked for ({where.sources()}); "
            "set training.accelerate_config: multi-cpu (CPUs) or ddp/fsdp (GPUs) to train in several"
        )
    return LaunchPlan(setup, 1, 0, 1, None, None, (), ({},))


def this_machine_rank(
    setup: AccelerateSetup, launch: TrainingLaunch | None = None, *, environ: Mapping[str, str] | None = None
) -> int:
    """This machine's rank in the launch of ``setup``, without looking at its GPUs (a stage decides with
    it which machine writes the outputs, before it knows whether it has work to do)."""
    if not setup.shipped:
        return setup.machine_rank
    return _Where.resolve(launch or TrainingLaunch(), os.environ if environ is None else environ).machine_rank


def _own_file_plan(setup: AccelerateSetup, launch: TrainingLaunch) -> LaunchPlan:
    given = [
        name for name, value in launch.model_dump(exclude={"from_environment"}).items() if value is not None
    ]
    if given:
        raise TrainingError(
            f"training.launch.{given[0]} is set, but the accelerate file {setup.path} is your own: it reaches "
            "`accelerate launch` unchanged, so it decides where the processes run. Set num_machines, "
            "machine_rank, main_process_ip, main_process_port and num_processes in that file (one per "
            "machine) and leave training.launch unset, or use a shipped config (multi-cpu, ddp, fsdp)"
        )
    machines = max(setup.num_machines, 1)
    return LaunchPlan(
        setup,
        machines,
        setup.machine_rank,
        max(setup.num_processes // machines, 1),
        setup.main_process_ip,
        setup.main_process_port,
        (),
        ({},),
    )


def _built_plan(
    setup: AccelerateSetup, where: _Where, per_machine: int, environments: tuple[dict[str, str], ...]
) -> LaunchPlan:
    several = where.num_machines > 1
    if several and where.main_process_ip is None:
        raise TrainingError(
            f"training on {where.num_machines} machines needs the address of machine 0, where the processes "
            "meet: set training.launch.main_process_ip (or MASTER_ADDR) to the same address on every machine"
        )
    port = where.main_process_port or (MULTI_MACHINE_PORT if several else free_port())
    ip = where.main_process_ip or ("127.0.0.1" if setup.multi_process_cpu else None)
    arguments = [
        "--num_processes",
        str(where.num_machines * per_machine),
        "--num_machines",
        str(where.num_machines),
        "--machine_rank",
        str(where.machine_rank),
    ]
    if ip is not None:
        arguments += ["--main_process_ip", ip]
    arguments += ["--main_process_port", str(port)]
    return LaunchPlan(
        setup, where.num_machines, where.machine_rank, per_machine, ip, port, tuple(arguments), environments
    )


@dataclass(frozen=True)
class _Where:
    """The machines of a built launch, each value with where it came from (for error messages)."""

    num_machines: int
    machine_rank: int
    main_process_ip: str | None
    main_process_port: int | None
    origin: dict[str, str]

    def sources(self) -> str:
        return ", ".join(f"{name} from {source}" for name, source in self.origin.items()) or "the defaults"

    @classmethod
    def resolve(cls, launch: TrainingLaunch, environ: Mapping[str, str]) -> _Where:
        origin: dict[str, str] = {}

        def pick(name: str, variables: tuple[str, ...]) -> str | int | None:
            value = getattr(launch, name)
            if value is not None:
                origin[name] = f"training.launch.{name}"
                return value
            if launch.from_environment:
                for variable in variables:
                    if environ.get(variable, "").strip():
                        origin[name] = variable
                        return environ[variable].strip()
            return None

        machines = _whole(pick("num_machines", ("WORLD_SIZE",)), origin.get("num_machines"), minimum=1)
        rank = _whole(pick("machine_rank", ("NODE_RANK", "RANK")), origin.get("machine_rank"), minimum=0)
        ip = pick("main_process_ip", ("MASTER_ADDR",))
        port = _whole(pick("main_process_port", ("MASTER_PORT",)), origin.get("main_process_port"), minimum=1)
        where = cls(machines or 1, rank or 0, str(ip) if ip is not None else None, port, origin)
        if where.machine_rank >= where.num_machines:
            from_variables = any(not source.startswith("training.") for source in origin.values())
            raise TrainingError(
                f"this machine's rank is {where.machine_rank} but {where.num_machines} machine(s) train "
                f"({where.sources()}): machines are numbered 0 to {where.num_machines - 1}; set "
                "training.launch.machine_rank and num_machines (or NODE_RANK and WORLD_SIZE) to agree"
                + (
                    ", or training.launch.from_environment: false when those variables are not about this "
                    "training"
                    if from_variables
                    else ""
                )
            )
        return where


def _whole(value: str | int | None, source: str | None, *, minimum: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise TrainingError(f"{source} is {value!r}: expected a whole number of at least {minimum}")
    return number
