"""Training under ``accelerate launch``: the launched module and the launcher.

``accelerate launch --config_file CFG [ARGS] -m ragdistill.training.launch --spec SPEC.json`` starts the
training processes; each runs :func:`main`, which calls :func:`~ragdistill.training.lora.train_lora`
(the Trainer inside shards the data and syncs the gradients), and the main process of machine 0 alone
writes ``result.json``. :func:`launch_training` plans the launch (``training.launch_plan``: a user's
file unchanged, a shipped one with accelerate's arguments for every machine's processes together), runs
it as subprocesses of the same interpreter and streams their output to ``train.log`` in the output
folder (``train.machine-<rank>.log`` on the other machines, so that machines sharing the folder never
write one file).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from ragdistill.config import TrainingLaunch
from ragdistill.preload import without_openmp_preload
from ragdistill.training.accelerate_configs import read_accelerate_config
from ragdistill.training.launch_plan import SCHEDULER_VARIABLES, LaunchPlan, plan_launch
from ragdistill.training.lora import TrainingError, TrainResult
from ragdistill.training.progress import current_progress_listener, parse_progress_line
from ragdistill.training.spec import TrainSpec
from ragdistill.training.trainer_setup import per_process_accumulation

RESULT_FILE = "result.json"
SPEC_FILE = "spec.json"
LOG_FILE = "train.log"
LOG_TAIL_LINES = 40
STOP_GRACE_S = 10.0
"""How long the processes of a failed launch get to end after SIGTERM before they are killed."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a LoRA student (run under `accelerate launch`).")
    parser.add_argument("--spec", required=True, type=Path, help="A TrainSpec JSON file.")
    arguments = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("ragdistill").setLevel(logging.INFO)
    from accelerate import PartialState

    from ragdistill.training.lora import train_lora

    spec = TrainSpec.read(arguments.spec)
    result = train_lora(spec)
    if PartialState().is_main_process:
        path = Path(spec.output_dir) / RESULT_FILE
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        partial.replace(path)
    return 0


def machine_file(name: str, machine_rank: int) -> str:
    """``name`` on machine 0, ``<stem>.machine-<rank><suffix>`` on the others."""
    if machine_rank == 0:
        return name
    stem, dot, suffix = name.partition(".")
    return f"{stem}.machine-{machine_rank}{dot}{suffix}"


def _child_environment(plan: LaunchPlan, spec: TrainSpec, process: dict[str, str]) -> dict[str, str]:
    environment = without_openmp_preload(os.environ)
    if plan.shipped:
        for variable in SCHEDULER_VARIABLES:
            environment.pop(variable, None)
    environment.update(process)
    environment.setdefault("TOKENIZERS_PARALLELISM", "false")
    environment["PYTHONUNBUFFERED"] = "1"
    if spec.training.torch_threads:
        environment["OMP_NUM_THREADS"] = str(spec.training.torch_threads)
    if plan.setup.uses_gpus and not plan.setup.multi_process_gpu:
        # One process seeing several GPUs would make the Trainer use nn.DataParallel, which TRL refuses.
        environment.setdefault("CUDA_VISIBLE_DEVICES", "0")
    return environment


def launch_command(spec_path: Path, plan: LaunchPlan) -> list[str]:
    """One ``accelerate launch`` of ``plan`` (its config file, then the arguments the plan built)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(plan.setup.path),
        *plan.arguments,
        "-m",
        "ragdistill.training.launch",
        "--spec",
        str(spec_path),
    ]


def launch_training(
    spec: TrainSpec,
    accelerate_config: str | Path,
    *,
    launch: TrainingLaunch | None = None,
    on_line: Callable[[str], None] | None = None,
) -> TrainResult | None:
    """Train through ``accelerate launch`` with a shipped config name or a config file, on this machine's
    share of ``launch`` (see ``training.launch_plan``). Output lines go to the machine's log in the
    output folder (and to ``on_line``), progress lines also to the listener of
    :func:`~ragdistill.training.progress.use_training_progress`. A failure raises with the log's last
    lines. Returns the result on machine 0 (which writes it), None on the others."""
    plan = plan_launch(read_accelerate_config(accelerate_config), launch)
    if plan.shipped:
        per_process_accumulation(spec.training, plan.num_processes)  # fails before any process starts
    output = Path(spec.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    spec_path = spec.write(output / machine_file(SPEC_FILE, plan.machine_rank))
    result_path = output / RESULT_FILE
    if plan.is_main_machine:
        result_path.unlink(missing_ok=True)
    command = launch_command(spec_path, plan)
    log_path = output / machine_file(LOG_FILE, plan.machine_rank)
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    progress_listener = current_progress_listener()

    def handle(line: str) -> None:
        text = line.rstrip("\n")
        tail.append(text)
        if on_line is not None:
            on_line(text)
        if progress_listener is not None and (progress := parse_progress_line(line)) is not None:
            progress_listener(progress)

    with log_path.open("a", encoding="utf-8") as log:
        for process in plan.process_environments:
            shown = " ".join(f"{name}={value}" for name, value in process.items())
            log.write(f"$ {shown + ' ' if shown else ''}{' '.join(command)}\n")
        log.flush()
        returncodes = _run_processes(
            [(command, _child_environment(plan, spec, process)) for process in plan.process_environments],
            log,
            handle,
        )
    failed = [code for code in returncodes if code != 0]
    if failed or (plan.is_main_machine and not result_path.is_file()):
        last_lines = "\n".join(tail)
        raise TrainingError(
            f"training failed (exit status {failed[0] if failed else 0}); the last lines of {log_path}:\n"
            f"{last_lines}"
        )
    if not plan.is_main_machine:
        return None
    return TrainResult.from_dict(json.loads(result_path.read_text()))


def _run_processes(
    launches: list[tuple[list[str], dict[str, str]]], log: TextIO, handle: Callable[[str], None]
) -> list[int]:
    """Run every launch at once, each in a process group of its own; their output lines go to ``log``
    and ``handle`` in this thread. When one fails, or this thread is interrupted, the others are
    stopped (a peer left waiting on a collective would wait for gloo's or NCCL's timeout)."""
    lines: queue.Queue[str | None] = queue.Queue()
    processes = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=environment,
            start_new_session=True,
        )
        for command, environment in launches
    ]

    def pump(process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    for process in processes:
        threading.Thread(target=pump, args=(process,), daemon=True).start()
    try:
        streams = len(processes)
        while streams:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                line = ""
            if line is None:
                streams -= 1
            elif line:
                log.write(line)
                log.flush()
                handle(line)
            if any(process.poll() not in (None, 0) for process in processes):
                _stop(processes)
    except BaseException:
        _stop(processes)
        raise
    return [process.wait() for process in processes]


def _stop(processes: list[subprocess.Popen[str]]) -> None:
    """SIGTERM the process groups still running, then SIGKILL those that outlive ``STOP_GRACE_S``."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        _signal_group(process, signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen[str], signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal_number)


if __name__ == "__main__":
    sys.exit(main())
