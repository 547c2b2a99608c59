"""LoRA training (stage D's library part): the dataset contract, precision and loss-head choices, the
accelerate configs, checkpoints and resume. Fast tests use synthetic token ids and a tiny random Llama;
the slow ones train SmolLM2-135M for a few steps, in-process and through ``accelerate launch``."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ragdistill.config import ModelSpec, TrainingConfig
from ragdistill.errors import UserFacingError
from ragdistill.messages import ChatMessage
from ragdistill.training.accelerate_configs import (
    SHIPPED_CONFIGS,
    AccelerateConfigError,
    accelerate_config_path,
    read_accelerate_config,
)
from ragdistill.training.curves import LossPoint, loss_points, plot_loss, read_loss_csv, write_loss_csv
from ragdistill.training.launch import RESULT_FILE, launch_command, launch_training
from ragdistill.training.launch_plan import plan_launch
from ragdistill.training.lora import (
    TrainResult,
    load_examples,
    prepare_training,
    train_lora,
)
from ragdistill.training.progress import TrainingProgress, use_training_progress
from ragdistill.training.replicas import last_complete_checkpoint
from ragdistill.training.spec import TrainSpec
from ragdistill.training.trainer_setup import (
    TrainingError,
    add_compact_loss_head,
    cpu_has_native_bf16,
    load_base_model,
    plan_precision,
    wants_checkpointing,
)

CONVERSATIONS = [
    [
        ChatMessage("system", "You are an agent in a household. Reply with one action."),
        ChatMessage("user", f"Your task is to: put a {thing} in {place}."),
        ChatMessage("assistant", f"go to {place}"),
        ChatMessage("user", f"You arrive at {place}. You see a {thing}."),
        ChatMessage("assistant", f"take {thing} from {place}"),
    ]
    for thing, place in [
        ("mug", "cabinet 1"),
        ("apple", "fridge 1"),
        ("knife", "drawer 2"),
        ("book", "shelf 3"),
        ("towel", "sinkbasin 1"),
        ("plate", "countertop 2"),
        ("pencil", "desk 1"),
        ("egg", "microwave 1"),
    ]
]


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def tiny_training(**overrides: object) -> TrainingConfig:
    settings: dict[str, object] = {
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "per_device_batch_size": 4,
        "learning_rate": 1e-3,
        "max_steps": 4,
        "torch_threads": 2,
    }
    settings.update(overrides)
    return TrainingConfig.model_validate(settings)


# --- fast: contract, configs, helpers ---------------------------------------------------------------


def test_train_spec_round_trips_through_json(tmp_path: Path) -> None:
    spec = TrainSpec.from_config(
        tiny_training(target_modules=["q_proj"]), dataset="d.parquet", base_model="m", output_dir="o", seed=7
    )
    assert TrainSpec.read(spec.write(tmp_path / "spec.json")) == spec
    assert json.loads((tmp_path / "spec.json").read_text())["training"]["lora_r"] == 4


def test_load_examples_cuts_long_rows_and_drops_rows_without_loss_tokens(tmp_path: Path) -> None:
    rows = [
        {"input_ids": [1, 2, 3, 4, 5, 6], "assistant_masks": [0, 0, 1, 1, 1, 1], "episode_id": "long"},
        {"input_ids": [1, 2, 3, 4, 5, 6], "assistant_masks": [0, 0, 0, 0, 1, 1], "episode_id": "cut-off"},
        {"input_ids": [7, 8, 9], "assistant_masks": [0, 1, 1], "episode_id": "short"},
    ]
    dataset, counts = load_examples(write_rows(tmp_path / "data.parquet", rows), max_seq_len=4)
    assert (counts.examples, counts.truncated, counts.dropped) == (2, 2, 1)
    assert dataset["input_ids"] == [[1, 2, 3, 4], [7, 8, 9]]
    assert dataset["assistant_masks"] == [[0, 0, 1, 1], [0, 1, 1]]
    assert counts.loss_tokens == 4


def test_load_examples_reads_a_folder_of_parquet_files(tmp_path: Path) -> None:
    for index in range(2):
        write_rows(tmp_path / f"part-{index}.parquet", [{"input_ids": [1, 2], "assistant_masks": [0, 1]}])
    assert load_examples(tmp_path, max_seq_len=8)[1].examples == 2


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"input_ids": [1, 2]}], "lacks the column"),
        ([{"input_ids": [1, 2], "assistant_masks": [1]}], "differ in length"),
        ([{"input_ids": [1, 2], "assistant_masks": [1, 0]}], "no example with an assistant token"),
    ],
)
def test_load_examples_rejects_broken_data(
    tmp_path: Path, rows: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(TrainingError, match=message):
        load_examples(write_rows(tmp_path / "data.parquet", rows), max_seq_len=8)


def test_missing_training_data_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserFacingError, match="no training data"):
        load_examples(tmp_path / "nothing-here", max_seq_len=8)


def test_cpu_precision_plan() -> None:
    assert plan_precision("fp32", on_cuda=False).weights == "float32"
    assert plan_precision("bf16", on_cuda=False).weights == "bfloat16"
    assert plan_precision("auto", on_cuda=False).weights == (
        "bfloat16" if cpu_has_native_bf16() else "float32"
    )
    assert plan_precision("auto", on_cuda=False).autocast == "no"
    with pytest.raises(TrainingError, match="fp16 needs a CUDA GPU"):
        plan_precision("fp16", on_cuda=False)


def test_gpu_precision_plan_uses_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert (plan_precision("auto", on_cuda=True).weights, plan_precision("auto", on_cuda=True).autocast) == (
        "float16",
        "fp16",
    )
    assert plan_precision("bf16", on_cuda=True).autocast == "bf16"
    assert plan_precision("fp32", on_cuda=True).autocast == "no"


def test_gradient_checkpointing_by_device_and_batch_size() -> None:
    small, large = tiny_training(per_device_batch_size=4), tiny_training(per_device_batch_size=8)
    assert not wants_checkpointing(small, on_cuda=False, longest_example=512)
    assert wants_checkpointing(large, on_cuda=False, longest_example=512)
    assert wants_checkpointing(small, on_cuda=True, longest_example=16)
    assert not wants_checkpointing(
        tiny_training(gradient_checkpointing=False), on_cuda=True, longest_example=16
    )


def test_four_bit_base_needs_cuda() -> None:
    spec = TrainSpec.from_config(
        tiny_training(load_in_4bit=True), dataset="d", base_model="m", output_dir="o"
    )
    with pytest.raises(UserFacingError, match="load_in_4bit needs a CUDA GPU"):
        load_base_model(spec, plan_precision("fp32", on_cuda=False), on_cuda=False)


def test_compact_loss_head_matches_the_models_own_loss_and_gradients() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    model = get_peft_model(
        LlamaForCausalLM(config),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    input_ids = torch.randint(0, 64, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 6:] = 0
    labels = input_ids.clone()
    labels[:, :4] = -100
    labels[attention_mask == 0] = -100

    def loss_and_gradients(**kwargs: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        loss = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    expected_loss, expected_gradients = loss_and_gradients(labels=labels)
    add_compact_loss_head(model.get_base_model())
    compact_loss, compact_gradients = loss_and_gradients(loss_labels=labels)
    assert compact_loss == pytest.approx(expected_loss, rel=1e-5)
    for expected, compact in zip(expected_gradients, compact_gradients, strict=True):
        torch.testing.assert_close(compact, expected, rtol=1e-4, atol=1e-6)
    assert model(input_ids=input_ids, labels=labels).loss.item() == pytest.approx(expected_loss, rel=1e-5)


def test_last_complete_checkpoint_skips_and_removes_interrupted_saves(tmp_path: Path) -> None:
    for step, complete in [(2, True), (4, True), (6, False), (10, False)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path, remove_incomplete=False) == tmp_path / "checkpoint-4"
    assert (tmp_path / "checkpoint-6").exists()
    assert last_complete_checkpoint(tmp_path, remove_incomplete=True) == tmp_path / "checkpoint-4"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert last_complete_checkpoint(tmp_path / "absent", remove_incomplete=True) is None


def test_loss_curve_csv_and_png(tmp_path: Path) -> None:
    history = [
        {
            "loss": 2.5,
            "grad_norm": 1.0,
            "learning_rate": 1e-4,
            "epoch": 0.5,
            "step": 1,
            "num_input_tokens_seen": 9,
        },
        {
            "loss": 2.0,
            "grad_norm": 0.5,
            "learning_rate": 5e-5,
            "epoch": 1.0,
            "step": 2,
            "num_input_tokens_seen": 18,
        },
        {"train_loss": 2.25, "train_runtime": 1.0, "step": 2},
    ]
    points = loss_points(history)
    assert points == [LossPoint(1, 0.5, 2.5, 1e-4, 1.0, 9), LossPoint(2, 1.0, 2.0, 5e-5, 0.5, 18)]
    assert read_loss_csv(write_loss_csv(points, tmp_path / "loss.csv")) == points
    png = plot_loss(points, tmp_path / "loss.png")
    assert png is not None and png.read_bytes().startswith(b"\x89PNG")


def test_shipped_accelerate_configs_resolve_and_parse() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    for name in SHIPPED_CONFIGS:
        path = accelerate_config_path(name)
        assert path.is_file()
        load_config_from_file(str(path))
    assert read_accelerate_config("cpu").use_cpu
    assert (
        read_accelerate_config("multi-cpu").multi_process_cpu and read_accelerate_config("multi-cpu").use_cpu
    )
    assert read_accelerate_config("ddp").multi_process_gpu
    fsdp = read_accelerate_config("fsdp")
    assert fsdp.distributed_type == "FSDP" and fsdp.multi_process_gpu
    assert not read_accelerate_config("1gpu").multi_process_gpu


def test_accelerate_config_by_path_and_unknown_name(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"
    own.write_text(accelerate_config_path("cpu").read_text())
    assert accelerate_config_path(own) == own.resolve()
    with pytest.raises(AccelerateConfigError, match="neither a shipped name"):
        accelerate_config_path("gpu-8")


def test_launch_command_runs_this_interpreter_under_accelerate(tmp_path: Path) -> None:
    import sys

    command = launch_command(tmp_path / "spec.json", plan_launch(read_accelerate_config("cpu")))
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[-4:] == ["-m", "ragdistill.training.launch", "--spec", str(tmp_path / "spec.json")]


def test_gpu_configs_without_a_gpu_stop_with_advice(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for name in ("1gpu", "ddp", "fsdp"):
        with pytest.raises(TrainingError, match="none is visible"):
            plan_launch(read_accelerate_config(name))


# --- slow: SmolLM2-135M ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model() -> str:
    from ragdistill.models import resolve_model

    return resolve_model(ModelSpec(name="smollm2-135m", dtype="float32"))


@pytest.fixture(scope="module")
def chat_dataset(base_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conversations tokenised by the datasets stage's own code, twice over (a repeated set)."""
    from transformers import AutoTokenizer

    from ragdistill.training.examples import tokenize_conversation

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    rows = []
    for index, messages in enumerate(CONVERSATIONS * 2):
        ids, mask = tokenize_conversation(tokenizer, messages)
        rows.append(
            {
                "input_ids": ids,
                "assistant_masks": mask,
                "episode_id": f"e{index}",
                "task_id": f"t{index % len(CONVERSATIONS)}",
                "task_type": "pick_and_place_simple",
                "source": "teacher",
                "num_tokens": len(ids),
            }
        )
    return write_rows(tmp_path_factory.mktemp("chat") / "data.parquet", rows)


@pytest.mark.slow
def test_group_by_length_batches_examples_of_similar_length_and_pads_less(
    base_model: str, tmp_path: Path
) -> None:
    """``training.group_by_length`` reaches the Trainer: on 64 episodes of 1 to 12 turns, batches of two
    carry under half the padding that a random order gives them. (The Trainer sorts by length within
    megabatches of a quarter of the data at most, so a set of a few dozen examples is grouped loosely.)"""
    from transformers import AutoTokenizer

    from ragdistill.training.examples import tokenize_conversation

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    rows = []
    for index in range(64):
        turns = CONVERSATIONS[index % len(CONVERSATIONS)]
        messages = [*turns[:3], *turns[3:] * (index % 12)]
        ids, mask = tokenize_conversation(tokenizer, messages)
        rows.append(
            {"input_ids": ids, "assistant_masks": mask, "episode_id": f"e{index}", "num_tokens": len(ids)}
        )
    dataset = write_rows(tmp_path / "data" / "data.parquet", rows)

    def padding_share(group_by_length: bool) -> float:
        training = tiny_training(
            per_device_batch_size=2, gradient_accumulation_steps=2, group_by_length=group_by_length
        )
        spec = TrainSpec.from_config(
            training, dataset=str(dataset), base_model=base_model, output_dir=str(tmp_path)
        )
        masks = [batch["attention_mask"] for batch in prepare_training(spec).trainer.get_train_dataloader()]
        return float(sum((mask == 0).sum() for mask in masks) / sum(mask.numel() for mask in masks))

    grouped, shuffled = padding_share(True), padding_share(False)
    assert shuffled > 0.15, "the check needs examples of different lengths"
    assert grouped < shuffled / 2, (grouped, shuffled)


@pytest.mark.slow
def test_collator_labels_decode_to_exactly_the_assistant_turns(
    base_model: str, chat_dataset: Path, tmp_path: Path
) -> None:
    prepared = prepare_training(
        TrainSpec.from_config(
            tiny_training(), dataset=str(chat_dataset), base_model=base_model, output_dir=str(tmp_path)
        )
    )
    trainer = prepared.trainer
    tokenizer = trainer.processing_class
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}
    expected_turns = {
        tuple(f"{message.content}<|im_end|>" for message in messages if message.role == "assistant")
        for messages in CONVERSATIONS
    }
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
        runs: list[list[int]] = []
        for position, label in enumerate(labels):
            if label == -100:
                continue
            assert label == ids[position]
            if runs and labels[position - 1] != -100:
                runs[-1].append(label)
            else:
                runs.append([label])
        assert tuple(tokenizer.decode(run) for run in runs) in expected_turns


@pytest.mark.slow
def test_ten_lora_steps_lower_the_training_loss(base_model: str, chat_dataset: Path, tmp_path: Path) -> None:
    spec = TrainSpec.from_config(
        tiny_training(max_steps=10, tensorboard=False, save_steps=100),
        dataset=str(chat_dataset),
        base_model=base_model,
        output_dir=str(tmp_path),
        seed=3,
    )
    result = train_lora(spec)
    losses = [point.loss for point in read_loss_csv(Path(result.loss_csv))]
    assert [point.step for point in read_loss_csv(Path(result.loss_csv))] == list(range(1, 11))
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    assert (result.steps, result.steps_run, result.examples, result.loss_head) == (10, 10, 16, "compact")
    assert result.tokens > 10 * 4 * 40


@pytest.mark.slow
def test_launch_training_with_the_cpu_config_writes_adapter_and_curve(
    base_model: str, chat_dataset: Path, tmp_path: Path
) -> None:
    spec = TrainSpec.from_config(
        tiny_training(max_steps=3), dataset=str(chat_dataset), base_model=base_model, output_dir=str(tmp_path)
    )
    progress: list[TrainingProgress] = []
    with use_training_progress(progress.append):
        result = launch_training(spec, "cpu")
    assert [(point.step, point.max_steps) for point in progress] == [(1, 3), (2, 3), (3, 3)]
    adapter = Path(result.adapter_dir)
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    with (tmp_path / "loss.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert TrainResult.from_dict(json.loads((tmp_path / RESULT_FILE).read_text())) == result
    assert "ragdistill.training.launch" in (tmp_path / "train.log").read_text()


@pytest.mark.slow
def test_failed_launch_quotes_the_log(base_model: str, tmp_path: Path) -> None:
    spec = TrainSpec.from_config(
        tiny_training(),
        dataset=str(tmp_path / "missing.parquet"),
        base_model=base_model,
        output_dir=str(tmp_path),
    )
    with pytest.raises(UserFacingError, match=r"(?s)training failed.*no training data at"):
        launch_training(spec, "cpu")


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(
    base_model: str, chat_dataset: Path, tmp_path: Path
) -> None:
    spec = TrainSpec.from_config(
        tiny_training(max_steps=8, save_steps=2, save_total_limit=2),
        dataset=str(chat_dataset),
        base_model=base_model,
        output_dir=str(tmp_path),
    )
    command = launch_command(spec.write(tmp_path / "spec.json"), plan_launch(read_accelerate_config("cpu")))
    first = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file():
            assert first.poll() is None, "the training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (tmp_path / "adapter").exists()

    result = launch_training(spec, "cpu")
    resumed_step = int(result.resumed_from.split("-")[1]) if result.resumed_from else 0
    assert 2 <= resumed_step < 8
    assert (result.steps, result.steps_run) == (8, 8 - resumed_step)
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    assert [point.step for point in read_loss_csv(tmp_path / "loss.csv")] == list(range(1, 9))
    assert (
        f"resuming from {tmp_path / 'checkpoints' / result.resumed_from}"
        in (tmp_path / "train.log").read_text()
    )
