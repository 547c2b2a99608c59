"""LoRA training throughput on this machine, measured in one run: ours vs TRL defaults vs a plain loop.

    .venv/bin/python benchmarks/train.py [--steps 20] [--warmup 2] [--threads 2] [--repeat 1]
                                         [--rank 16] [--batch 8] [--examples 64]

All three train SmolLM2-135M (the prepared fp32 checkpoint) with LoRA (r, alpha 2r, every linear
projection) on the same pre-tokenised chat examples (~70 tokens, the loss on the assistant turns):

(a) ``ragdistill.training.lora.train_lora`` with its defaults for this device;
(b) TRL's ``SFTTrainer`` with default settings (``use_cpu=True`` on a CPU, without which ``SFTConfig``
    refuses to start: its default bf16 needs a GPU) and the model given by path, as its docs show;
(c) a plain PyTorch loop over a peft model (bf16 weights where the CPU has native bf16, else fp32;
    full logits, AdamW): the ceiling.

Each runs in a process of its own with ``--threads`` torch threads, for ``--warmup`` + ``--steps``
optimizer steps; tokens/s counts the non-padding tokens of the steps after the warm-up. Prints each
rate, the ratios a/b (target >= 1) and a/c, then one JSON line. Nothing else heavy should run meanwhile:
``--repeat`` runs the three in turn N times and keeps each one's best.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ragdistill.training.lora import STEADY_AFTER_STEPS

MODEL_NAME = "smollm2-135m"
OBJECTS = ["mug", "apple", "knife", "book", "pencil", "cd", "towel", "plate", "egg", "soapbar"]
PLACES = ["countertop 1", "cabinet 3", "fridge 1", "drawer 2", "shelf 4", "desk 1", "sinkbasin 1"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_model() -> str:
    from ragdistill.config import ModelSpec
    from ragdistill.models import resolve_model

    return resolve_model(ModelSpec(name=MODEL_NAME, dtype="float32"))


def write_conversations(folder: Path, conversations: list[list[Any]], model: str) -> Path:
    """``conversations`` (lists of ChatMessage) tokenised as the datasets stage does, as
    ``folder/data.parquet``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from ragdistill.training.examples import tokenize_conversation

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = []
    for index, messages in enumerate(conversations):
        ids, mask = tokenize_conversation(tokenizer, messages)
        rows.append(
            {"input_ids": ids, "assistant_masks": mask, "episode_id": str(index), "num_tokens": len(ids)}
        )
    path = folder / "data.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_dataset(folder: Path, count: int, model: str) -> Path:
    """``count`` short ALFWorld-like conversations."""
    from ragdistill.messages import ChatMessage

    rng = random.Random(0)
    conversations = []
    for _ in range(count):
        thing, place = rng.choice(OBJECTS), rng.choice(PLACES)
        conversations.append(
            [
                ChatMessage("system", "You are an agent in a household. Reply with one action."),
                ChatMessage("user", f"Your task is to: put a clean {thing} in {place}."),
                ChatMessage("assistant", f"think: I need to find a {thing} first."),
                ChatMessage("user", "OK."),
                ChatMessage("assistant", f"go to {rng.choice(PLACES)}"),
            ]
        )
    return write_conversations(folder, conversations, model)


def _clock_rate(clock: Any, warmup: int) -> dict[str, float]:
    tokens, seconds = clock.steady_rate(warmup)
    steps = len(clock.marks) - warmup
    return {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds, "s_per_step": seconds / steps}


def run_ours(args: argparse.Namespace, data: Path, model: str, work: Path) -> dict[str, float]:
    from ragdistill.config import TrainingConfig
    from ragdistill.training.lora import train_lora
    from ragdistill.training.spec import TrainSpec

    training = TrainingConfig(
        lora_r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.05,
        per_device_batch_size=args.batch,
        max_steps=args.warmup + args.steps,
        torch_threads=args.threads,
        resume=False,
    )
    spec = TrainSpec.from_config(training, dataset=str(data), base_model=model, output_dir=str(work / "ours"))
    result = train_lora(spec)
    if result.steady_tokens_per_second is None:
        raise SystemExit(f"train_lora ran {result.steps_run} steps: too few to skip its warm-up")
    return {"tok_s": result.steady_tokens_per_second, "whole_call_tok_s": result.tokens_per_second}


def run_trl_defaults(args: argparse.Namespace, data: Path, model: str, work: Path) -> dict[str, float]:
    import datasets
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from ragdistill.training.trainer_setup import trainer_classes

    clock = trainer_classes()[1]()
    config = SFTConfig(
        output_dir=str(work / "trl"),
        use_cpu=not _cuda(),
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_parquet(str(data)),
        peft_config=LoraConfig(
            r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05, target_modules=TARGETS
        ),
        callbacks=[clock],
    )
    trainer.train()
    return _clock_rate(clock, args.warmup)


def run_plain_loop(args: argparse.Namespace, data: Path, model: str, work: Path) -> dict[str, float]:
    import pyarrow.parquet as pq
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragdistill.training.trainer_setup import cpu_has_native_bf16

    torch.manual_seed(0)
    dtype = torch.bfloat16 if _cuda() or cpu_has_native_bf16() else torch.float32
    device = "cuda" if _cuda() else "cpu"
    network = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device)
    network = get_peft_model(
        network, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05, target_modules=TARGETS)
    )
    network.train()
    optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=2e-4)
    table = pq.read_table(data, columns=["input_ids", "assistant_masks"]).to_pylist()
    rng = random.Random(0)
    marks: list[tuple[float, int]] = []
    tokens_seen = 0
    for _ in range(args.warmup + args.steps):
        batch = rng.sample(table, args.batch)
        length = max(len(row["input_ids"]) for row in batch)
        ids = [row["input_ids"] + [0] * (length - len(row["input_ids"])) for row in batch]
        attention = [[1] * len(row["input_ids"]) + [0] * (length - len(row["input_ids"])) for row in batch]
        labels = [
            [
                token if bit else -100
                for token, bit in zip(row["input_ids"], row["assistant_masks"], strict=True)
            ]
            + [-100] * (length - len(row["input_ids"]))
            for row in batch
        ]
        loss = network(
            input_ids=torch.tensor(ids, device=device),
            attention_mask=torch.tensor(attention, device=device),
            labels=torch.tensor(labels, device=device),
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += sum(map(sum, attention))
        marks.append((time.perf_counter(), tokens_seen))
    (begin, before), (end, after) = marks[args.warmup - 1], marks[-1]
    return {
        "tokens": after - before,
        "seconds": end - begin,
        "tok_s": (after - before) / (end - begin),
        "s_per_step": (end - begin) / args.steps,
    }


RUNNERS = {"ours": run_ours, "trl": run_trl_defaults, "plain": run_plain_loop}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def measure_in_child(kind: str, args: argparse.Namespace, data: Path, work: Path) -> dict[str, float]:
    """Each variant in a process of its own: fresh thread pools, no memory left over from another."""
    command = [sys.executable, __file__, "--only", kind, "--data", str(data), "--work", str(work)]
    for name in ("steps", "warmup", "threads", "rank", "batch"):
        command += [f"--{name}", str(getattr(args, name))]
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment)
    if finished.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{finished.stdout[-3000:]}\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=STEADY_AFTER_STEPS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--only", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup != STEADY_AFTER_STEPS:
        parser.error(
            f"--warmup must be {STEADY_AFTER_STEPS}: train_lora reports tokens/s after that many steps"
        )
    if args.only:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(RUNNERS[args.only](args, args.data, base_model(), args.work)))
        return
    with tempfile.TemporaryDirectory(prefix="ragdistill-train-bench-") as folder:
        work = Path(folder)
        data = write_dataset(work, args.examples, base_model())
        print(
            f"load before: {os.getloadavg()[0]:.2f}; {args.threads} torch threads; "
            f"batch {args.batch}, LoRA r={args.rank}, {args.warmup} warm-up + {args.steps} measured steps"
        )
        best: dict[str, dict[str, Any]] = {}
        for _ in range(args.repeat):
            for kind in ("ours", "trl", "plain"):
                measured = measure_in_child(kind, args, data, work)
                if kind not in best or measured["tok_s"] > best[kind]["tok_s"]:
                    best[kind] = measured
        labels = {
            "ours": "(a) ragdistill train_lora",
            "trl": "(b) TRL SFTTrainer defaults",
            "plain": "(c) plain PyTorch loop + peft",
        }
        for kind, label in labels.items():
            print(f"{label:32s} {best[kind]['tok_s']:8.1f} tok/s")
        ratios = {
            "ours_over_trl": best["ours"]["tok_s"] / best["trl"]["tok_s"],
            "ours_over_plain": best["ours"]["tok_s"] / best["plain"]["tok_s"],
        }
        print(f"a/b = {ratios['ours_over_trl']:.2f} (target >= 1.0)   a/c = {ratios['ours_over_plain']:.2f}")
        print(f"load after: {os.getloadavg()[0]:.2f}")
        print(
            json.dumps(
                {
                    "tok_s": {kind: round(best[kind]["tok_s"], 1) for kind in best},
                    **{key: round(value, 3) for key, value in ratios.items()},
                }
            )
        )


if __name__ == "__main__":
    main()
