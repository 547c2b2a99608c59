"""Training under ``accelerate launch``: the launched module and the launcher.

``accelerate launch --config_file CFG -m ragdistill.training.launch --spec SPEC.json`` starts one
process per device; each runs :func:`main`, which calls :func:`~ragdistill.training.lora.train_lora`
(the Trainer inside shards the data and syncs the gradients), and the main process alone writes
``result.json``. :func:`launch_training` runs that command as a subprocess of the same interpreter and
streams its output to ``train.log`` in the output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from ragdistill.training.accelerate_configs import AccelerateSetup, read_accelerate_config
from ragdistill.training.lora import TrainingError, TrainResult
from ragdistill.training.progress import current_progress_listener, parse_progress_line
from ragdistill.training.spec import TrainSpec

RESULT_FILE = "result.json"
SPEC_FILE = "spec.json"
LOG_FILE = "train.log"
LOG_TAIL_LINES = 40


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _launch_arguments(setup: AccelerateSetup, num_processes: int | None) -> list[str]:
    if not setup.uses_gpus:
        return []
    gpus = _visible_gpus()
    if gpus == 0:
        raise TrainingError(
            f"the accelerate config {setup.path.name} trains on CUDA GPUs but none is visible; "
            "set training.accelerate_config: cpu"
        )
    if not setup.multi_process_gpu:
        return []
    processes = num_processes or gpus
    if processes > gpus:
        raise TrainingError(f"{processes} training processes asked for, but only {gpus} GPU(s) are visible")
    return ["--num_processes", str(processes), "--main_process_port", str(_free_port())]


def _child_environment(setup: AccelerateSetup, spec: TrainSpec) -> dict[str, str]:
    environment = dict(os.environ)
    environment.setdefault("TOKENIZERS_PARALLELISM", "false")
    environment["PYTHONUNBUFFERED"] = "1"
    if spec.training.torch_threads:
        environment["OMP_NUM_THREADS"] = str(spec.training.torch_threads)
    if setup.uses_gpus and not setup.multi_process_gpu:
        # One process seeing several GPUs would make the Trainer use nn.DataParallel, which TRL refuses.
        environment.setdefault("CUDA_VISIBLE_DEVICES", "0")
    return environment


def launch_command(spec_path: Path, setup: AccelerateSetup, num_processes: int | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(setup.path),
        *_launch_arguments(setup, num_processes),
        "-m",
        "ragdistill.training.launch",
        "--spec",
        str(spec_path),
    ]


def launch_training(
    spec: TrainSpec,
    accelerate_config: str | Path,
    *,
    num_processes: int | None = None,
    on_line: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train through ``accelerate launch`` with a shipped config name or a config file; output lines go
    to ``<output>/train.log`` (and to ``on_line``), progress lines also to the listener of
    :func:`~ragdistill.training.progress.use_training_progress`. A failure raises with the log's last
    lines."""
    setup = read_accelerate_config(accelerate_config)
    output = Path(spec.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    spec_path = spec.write(output / SPEC_FILE)
    result_path = output / RESULT_FILE
    result_path.unlink(missing_ok=True)
    command = launch_command(spec_path, setup, num_processes)
    log_path = output / LOG_FILE
    progress_listener = current_progress_listener()
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=_child_environment(setup, spec),
        )
        assert process.stdout is not None
        try:
            for line in process.stdout:
                log.write(line)
                log.flush()
                tail.append(line.rstrip("\n"))
                if on_line is not None:
                    on_line(line.rstrip("\n"))
                if progress_listener is not None and (progress := parse_progress_line(line)) is not None:
                    progress_listener(progress)
        finally:
            returncode = process.wait()
    if returncode != 0 or not result_path.is_file():
        last_lines = "\n".join(tail)
        raise TrainingError(
            f"training failed (exit status {returncode}); the last lines of {log_path}:\n{last_lines}"
        )
    return TrainResult.from_dict(json.loads(result_path.read_text()))


if __name__ == "__main__":
    sys.exit(main())
