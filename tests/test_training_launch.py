"""Training on several processes and machines (``training.launch_plan``, ``training.launch``): a user's
accelerate file reaches ``accelerate launch`` unchanged; a shipped config's launch is built with totals
over all machines, from ``training.launch`` or a scheduler's environment, and read back by accelerate's
own argument handling; the effective batch holds at any number of processes.

The slow tests train a tiny random Llama through ``accelerate launch`` with the ``multi-cpu`` config
(gloo): two processes on one machine, and two "machines" on loopback, one launch each, which must end
with the same weights as the one-machine training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from ragdistill.config import TrainingConfig, TrainingLaunch, TrainingRecipe
from ragdistill.training.accelerate_configs import accelerate_config_path, read_accelerate_config
from ragdistill.training.launch import RESULT_FILE, launch_command, launch_training
from ragdistill.training.launch_plan import plan_launch
from ragdistill.training.lora import TrainResult
from ragdistill.training.replicas import lora_weights_digest
from ragdistill.training.spec import TrainSpec
from ragdistill.training.trainer_setup import TrainingError, per_process_accumulation
from tiny_model import EXAMPLES, dataset_tokens, write_tiny_model, write_token_dataset

TWO_MACHINES = TrainingLaunch(
    num_machines=2, machine_rank=1, main_process_ip="10.1.2.3", main_process_port=29400
)


def eight_gpus() -> int:
    return 8


def accelerate_reads(plan_arguments: tuple[str, ...], config: Path) -> dict[str, Any]:
    """What accelerate's own launcher makes of ``--config_file config *plan_arguments``: the arguments
    it hands ``torch.distributed.run`` (nothing is started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    command = ["--config_file", str(config), *plan_arguments, "-m", "ragdistill.training.launch"]
    arguments, _, _ = _validate_launch_command(launch_command_parser().parse_args(command))
    prepare_multi_gpu_env(arguments)
    return vars(arguments)


# --- fast: launch plans ------------------------------------------------------------------------------


def test_a_users_accelerate_file_reaches_accelerate_launch_unchanged(tmp_path: Path) -> None:
    own = tmp_path / "cluster.yaml"
    text = accelerate_config_path("ddp").read_text().replace("num_processes: 2", "num_processes: 16")
    text = text.replace("num_machines: 1", "num_machines: 2").replace("machine_rank: 0", "machine_rank: 1")
    own.write_text(text + "main_process_ip: 10.9.8.7\nmain_process_port: 31000\n")
    before = own.read_bytes()
    plan = plan_launch(
        read_accelerate_config(own), environ={"WORLD_SIZE": "5", "NODE_RANK": "3"}, gpus=eight_gpus
    )
    command = launch_command(tmp_path / "spec.json", plan)
    config_at = command.index("--config_file")
    assert command[config_at : config_at + 4] == [
        "--config_file",
        str(own),
        "-m",
        "ragdistill.training.launch",
    ]
    assert (plan.num_machines, plan.machine_rank, plan.num_processes) == (2, 1, 16), "read from the file"
    assert own.read_bytes() == before
    read = accelerate_reads(plan.arguments, own)
    assert (read["nproc_per_node"], read["nnodes"], read["node_rank"]) == ("8", "2", 1)


def test_training_launch_settings_beside_a_users_file_are_refused(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"
    own.write_text(accelerate_config_path("cpu").read_text())
    with pytest.raises(
        TrainingError, match=r"training.launch.num_machines is set.*reaches `accelerate launch` unchanged"
    ):
        plan_launch(read_accelerate_config(own), TrainingLaunch(num_machines=2))


@pytest.mark.parametrize("config", ["ddp", "fsdp"])
def test_two_machines_of_eight_gpus_are_sixteen_processes_to_accelerate(config: str) -> None:
    plan = plan_launch(read_accelerate_config(config), TWO_MACHINES, environ={}, gpus=eight_gpus)
    assert plan.arguments == (
        "--num_processes", "16", "--num_machines", "2", "--machine_rank", "1",
        "--main_process_ip", "10.1.2.3", "--main_process_port", "29400",
    )  # fmt: skip
    read = accelerate_reads(plan.arguments, plan.setup.path)
    assert (read["num_processes"], read["nproc_per_node"], read["nnodes"], read["node_rank"]) == (
        16,
        "8",
        "2",
        1,
    )
    assert read["rdzv_endpoint"] == "10.1.2.3:29400"


def test_a_schedulers_environment_fills_what_training_launch_leaves_unset() -> None:
    ddp = read_accelerate_config("ddp")
    environment = {"MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29400", "NODE_RANK": "1", "WORLD_SIZE": "2"}
    from_environment = plan_launch(ddp, environ=environment, gpus=eight_gpus)
    assert from_environment.arguments == plan_launch(ddp, TWO_MACHINES, environ={}, gpus=eight_gpus).arguments
    pod_style = plan_launch(ddp, environ={**environment, "NODE_RANK": "", "RANK": "1"}, gpus=eight_gpus)
    assert pod_style.machine_rank == 1, "one launch per pod: RANK numbers the launches"
    settings_win = plan_launch(ddp, TrainingLaunch(machine_rank=0), environ=environment, gpus=eight_gpus)
    assert settings_win.machine_rank == 0 and settings_win.num_machines == 2
    ignored = plan_launch(ddp, TrainingLaunch(from_environment=False), environ=environment, gpus=eight_gpus)
    assert (ignored.num_machines, ignored.num_processes) == (1, 8)


def test_multi_cpu_gives_every_process_its_rank_over_all_machines() -> None:
    launch = TrainingLaunch(
        num_machines=2, machine_rank=1, main_process_ip="10.1.2.3", processes_per_machine=2
    )
    plan = plan_launch(read_accelerate_config("multi-cpu"), launch, environ={})
    assert plan.arguments[:6] == ("--num_processes", "4", "--num_machines", "2", "--machine_rank", "1")
    assert "--main_process_port" in plan.arguments and plan.main_process_port == 29500
    assert [process["RANK"] for process in plan.process_environments] == ["2", "3"]
    assert [process["LOCAL_RANK"] for process in plan.process_environments] == ["0", "1"]
    assert {process["WORLD_SIZE"] for process in plan.process_environments} == {"4"}
    one_machine = plan_launch(read_accelerate_config("multi-cpu"), environ={})
    assert one_machine.num_processes == 2 and one_machine.main_process_ip == "127.0.0.1"


def test_the_training_processes_start_without_intel_openmp_preloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``ragdistill`` command preloads Intel OpenMP for vLLM; under accelerate's ``KMP_AFFINITY`` it
    would pin a training to one core (tests/test_preload.py), so the launcher's processes start without
    it and keep the rest of ``LD_PRELOAD``."""
    from ragdistill.training.launch import _child_environment

    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libtcmalloc_minimal.so.4:/venv/lib/libiomp5.so")
    plan = plan_launch(read_accelerate_config("cpu"), environ={})
    spec = TrainSpec(dataset="data.parquet", base_model="model", output_dir="out")
    for process in plan.process_environments:
        assert _child_environment(plan, spec, process)["LD_PRELOAD"] == "/usr/lib/libtcmalloc_minimal.so.4"


@pytest.mark.parametrize(
    ("config", "launch", "environment", "message"),
    [
        ("ddp", TrainingLaunch(num_machines=2, machine_rank=2, main_process_ip="h"), {}, "numbered 0 to 1"),
        ("cpu", None, {"RANK": "1"}, "numbered 0 to 0.*from_environment: false"),
        ("ddp", TrainingLaunch(num_machines=2), {}, "needs the address of machine 0"),
        ("multi-cpu", None, {"WORLD_SIZE": "two"}, "WORLD_SIZE is 'two'"),
        ("cpu", None, {"WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "one process on one machine.*multi-cpu"),
        ("ddp", TrainingLaunch(processes_per_machine=9), {}, "only 8 GPU"),
    ],
)
def test_launch_settings_that_cannot_work_are_refused_naming_what_to_set(
    config: str, launch: TrainingLaunch | None, environment: dict[str, str], message: str
) -> None:
    with pytest.raises(TrainingError, match=message):
        plan_launch(read_accelerate_config(config), launch, environ=environment, gpus=eight_gpus)


def test_the_effective_batch_is_divided_among_the_processes(tmp_path: Path) -> None:
    recipe = TrainingRecipe(per_device_batch_size=2, gradient_accumulation_steps=4)
    assert [per_process_accumulation(recipe, size) for size in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(TrainingError, match=r"\(4\) does not divide among the 3 .* = 8 examples"):
        per_process_accumulation(recipe, 3)
    spec = TrainSpec.from_config(TrainingConfig(), dataset="d", base_model="m", output_dir=str(tmp_path))
    with pytest.raises(TrainingError, match="multiple of 2"):
        launch_training(spec, "multi-cpu")  # accumulation 1 over 2 processes: refused before any starts
    assert not (tmp_path / "train.log").exists()


def test_a_full_training_config_keeps_only_its_recipe_in_the_spec(tmp_path: Path) -> None:
    config = TrainingConfig(lora_r=4, launch=TrainingLaunch(num_machines=3))
    spec = TrainSpec.from_config(config, dataset="d", base_model="m", output_dir="o")
    assert type(spec.training) is TrainingRecipe and spec.training.lora_r == 4
    assert TrainSpec.read(spec.write(tmp_path / "spec.json")) == spec


# --- slow: a tiny model through accelerate launch ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tiny-llama")
    return write_tiny_model(folder), write_token_dataset(folder / "data.parquet")


def two_process_spec(tiny: tuple[Path, Path], output: Path) -> TrainSpec:
    """Effective batch 8 (2 per device x 4 accumulated), one epoch of 16 examples: 2 optimizer steps."""
    model, data = tiny
    training = TrainingRecipe(
        lora_r=4, lora_alpha=8, lora_dropout=0.0, per_device_batch_size=2, gradient_accumulation_steps=4,
        learning_rate=1e-2, epochs=1, torch_threads=1, tensorboard=False, save_steps=100,
    )  # fmt: skip
    return TrainSpec.from_config(training, dataset=str(data), base_model=str(model), output_dir=str(output))


def adapter_digest(output: Path) -> str:
    from safetensors.torch import load_file

    return lora_weights_digest(load_file(str(output / "adapter" / "adapter_model.safetensors")))


@pytest.fixture(scope="module")
def two_processes(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    result = launch_training(two_process_spec(tiny, tmp_path_factory.mktemp("two-processes")), "multi-cpu")
    assert result is not None
    return result


@pytest.mark.slow
def test_two_cpu_processes_end_with_one_set_of_weights_at_the_configured_effective_batch(
    tiny: tuple[Path, Path], two_processes: TrainResult
) -> None:
    result, output = two_processes, Path(two_processes.output_dir)
    log = (output / "train.log").read_text()
    launches = [line for line in log.splitlines() if line.startswith("$ ")]
    assert len(launches) == 2 and all("accelerate.commands.launch" in line for line in launches)
    assert all(
        "multi-cpu.yaml --num_processes 2 --num_machines 1 --machine_rank 0" in line for line in launches
    )
    assert (result.processes, result.gradient_accumulation_steps, result.effective_batch_size) == (2, 2, 8)
    assert (result.steps, result.epochs, result.examples) == (EXAMPLES // 8, 1.0, EXAMPLES)
    assert result.tokens == dataset_tokens(tiny[1]), "the two processes saw every example once"
    assert result.weight_digests is not None and len(result.weight_digests) == 2
    assert len(set(result.weight_digests)) == 1, "each process digested its own weights: they are one"
    assert result.weight_digests[0] == adapter_digest(output), "the adapter holds those weights"
    assert log.count("wrote the adapter to") == 1 and log.count("ragdistill-training-progress") == 2


MACHINE = """
import json, sys
from pathlib import Path
from ragdistill.config import TrainingLaunch
from ragdistill.training.launch import launch_training
from ragdistill.training.spec import TrainSpec
spec = TrainSpec.read(Path(sys.argv[1]))
result = launch_training(spec, "multi-cpu", launch=TrainingLaunch.model_validate_json(sys.argv[2]))
print("RESULT", json.dumps(result.to_dict() if result else None))
"""


@pytest.mark.slow
def test_two_machines_on_loopback_one_launch_each_finish_the_same_training(
    tiny: tuple[Path, Path], two_processes: TrainResult, tmp_path: Path
) -> None:
    """Machine 0 is told where it is by ``training.launch``, machine 1 by a scheduler's environment; each
    has its own output folder, as machines without shared storage do."""
    port = free_port()
    machine_0 = TrainingLaunch(
        num_machines=2,
        machine_rank=0,
        main_process_ip="127.0.0.1",
        main_process_port=port,
        processes_per_machine=1,
    )
    scheduler = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": "1", "WORLD_SIZE": "2"}
    machines = []
    for rank, launch, environment in [
        (0, machine_0, {}),
        (1, TrainingLaunch(processes_per_machine=1), scheduler),
    ]:
        spec = two_process_spec(tiny, tmp_path / f"machine-{rank}")
        spec_path = spec.write(tmp_path / f"spec-{rank}.json")
        command = [sys.executable, "-c", MACHINE, str(spec_path), launch.model_dump_json()]
        machines.append(
            subprocess.Popen(
                command,
                env={**os.environ, **environment},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [machine.communicate(timeout=300)[0] for machine in machines]
    assert [machine.returncode for machine in machines] == [0, 0], "\n".join(out[-3000:] for out in outputs)
    results = [json.loads(out.rsplit("RESULT ", 1)[1]) for out in outputs]
    assert results[1] is None, "machine 1 writes no result"
    result = TrainResult.from_dict(results[0])
    assert (result.processes, result.steps, result.effective_batch_size) == (2, 2, 8)
    assert result.weight_digests == two_processes.weight_digests, "the same training as on one machine"
    assert adapter_digest(tmp_path / "machine-0") == two_processes.weight_digests[0]
    assert (tmp_path / "machine-0" / RESULT_FILE).is_file()
    machine_1 = tmp_path / "machine-1"
    assert not (machine_1 / "adapter").exists() and not (machine_1 / RESULT_FILE).exists()
    log = (machine_1 / "train.machine-1.log").read_text()
    assert (
        "RANK=1 LOCAL_RANK=0 WORLD_SIZE=2" in log
        and f"--machine_rank 1 --main_process_ip 127.0.0.1 --main_process_port {port}" in log
    )
