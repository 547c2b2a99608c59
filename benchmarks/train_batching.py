"""Long episodes one per micro-batch vs two, measured in one run: the same gradient, at what speed.

    .venv/bin/python benchmarks/train_batching.py [--dataset PATH] [--steps 4] [--threads 2]

The WebShop demo's warm start trains on expert episodes of 700-2000 tokens, 4 per optimizer step. With
two per micro-batch (``per_device_batch_size 2``, ``gradient_accumulation_steps 2``) the shorter one is
padded to the longer; with one (``1``, ``4``) nothing is padded. The loss is summed over the step's
assistant tokens and divided by their count (``num_items_in_batch``), so both give the same gradient up
to LoRA dropout's random masks: the script prints both loss curves side by side to show it.

Each arrangement trains the WebShop demo's recipe (configs/demo-webshop.yaml's ``training`` section with
the warm start's epochs and learning rate) for ``--steps`` optimizer steps through ``launch_training``
with the ``cpu`` accelerate config, in a process of its own as the demo does, on the same examples in the
same order: by default 32 shopping conversations drawn at 700-2000 tokens, the warm start's range;
``--dataset`` takes a warm-start folder's ``data.parquet`` instead (``runs/demo-webshop/warm-start/``
after the demo). Prints tokens/s (non-padding tokens) over the run and after its first step, the ratios
one/two (target > 1), then one JSON line. Nothing else heavy should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from train import write_conversations

CONFIG = Path("configs/demo-webshop.yaml")
TOKEN_RANGE = (700, 2000)
ARRANGEMENTS = {
    "two per micro-batch": {"per_device_batch_size": 2, "gradient_accumulation_steps": 2},
    "one per micro-batch": {"per_device_batch_size": 1, "gradient_accumulation_steps": 4},
}
STEP_LINE = re.compile(r"'loss': '([0-9.]+)'.*?'num_input_tokens_seen': (\d+), 'train_runtime': '([0-9.]+)'")


def write_dataset(folder: Path, count: int, model: str) -> Path:
    """``count`` WebShop-like conversations, each grown page by page to a length drawn from
    ``TOKEN_RANGE``."""
    from transformers import AutoTokenizer

    from ragdistill.messages import ChatMessage
    from ragdistill.training.examples import tokenize_conversation

    tokenizer = AutoTokenizer.from_pretrained(model)
    rng = random.Random(0)
    conversations = []
    for _ in range(count):
        target = rng.randint(*TOKEN_RANGE)
        size = rng.choice("SML")
        messages = [
            ChatMessage("system", "You are shopping on a web store. Reply with one action."),
            ChatMessage("user", f"Instruction: i need a long sleeve shirt in size {size}, under 40 dollars"),
        ]
        while True:
            page = " [SEP] ".join(
                f"B0{rng.randint(10**7, 10**8)} [SEP] Shirt {n} [SEP] ${rng.randint(5, 90)}.99"
                for n in range(3)
            )
            messages += [ChatMessage("assistant", "search[long sleeve shirt]"), ChatMessage("user", page)]
            if len(tokenize_conversation(tokenizer, messages)[0]) >= target:
                break
        conversations.append(messages)
    return write_conversations(folder, conversations, model)


def train(
    dataset: Path, model: str, recipe: dict[str, Any], arrangement: dict[str, int], steps: int, output: Path
) -> dict:
    from ragdistill.config import TrainingConfig
    from ragdistill.training.launch import launch_training
    from ragdistill.training.spec import TrainSpec

    training = {**recipe, **arrangement, "max_steps": steps, "tensorboard": False, "save_steps": 10_000}
    spec = TrainSpec.from_config(
        TrainingConfig.model_validate(training),
        dataset=str(dataset),
        base_model=model,
        output_dir=str(output),
    )
    launch_training(spec, "cpu")
    points = [
        (float(loss), int(tokens), float(seconds))
        for loss, tokens, seconds in STEP_LINE.findall((output / "train.log").read_text())
    ]
    (_, first_tokens, first_seconds), (_, tokens, seconds) = points[0], points[-1]
    return {
        "losses": [loss for loss, _, _ in points],
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "tokens_per_s_after_step_1": (tokens - first_tokens) / (seconds - first_seconds),
    }


def base_model() -> str:
    from ragdistill.config import load_config
    from ragdistill.models import resolve_model

    return resolve_model(load_config(CONFIG).models.agent.model)


def demo_recipe() -> dict[str, Any]:
    """The demo's training section, with the warm start's epochs and learning rate."""
    from ragdistill.config import load_config

    config = load_config(CONFIG)
    warm_start = config.warm_start
    return {
        **config.training.model_dump(mode="json"),
        "epochs": warm_start.epochs,
        "learning_rate": warm_start.learning_rate,
        "torch_threads": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", type=Path, help="a warm-start folder's data.parquet (default: generated)"
    )
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.dataset is not None and not args.dataset.is_file():
        sys.exit(f"--dataset {args.dataset} is not a file: pass a warm-start folder's data.parquet")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    recipe, model = demo_recipe(), base_model()
    results = {}
    with tempfile.TemporaryDirectory(prefix="train-batching-") as scratch:
        dataset = args.dataset or write_dataset(Path(scratch), args.examples, model)
        for index, (name, arrangement) in enumerate(ARRANGEMENTS.items()):
            results[name] = train(dataset, model, recipe, arrangement, args.steps, Path(scratch) / str(index))
            result = results[name]
            print(
                f"{name}: {result['tokens']} tokens in {result['seconds']:.1f} s, {result['tokens_per_s']:.1f} "
                f"tokens/s ({result['tokens_per_s_after_step_1']:.1f} after step 1); losses "
                f"{', '.join(f'{loss:.4f}' for loss in result['losses'])}",
                flush=True,
            )
    one, two = results["one per micro-batch"], results["two per micro-batch"]
    ratios = {
        "whole_run": one["tokens_per_s"] / two["tokens_per_s"],
        "after_step_1": one["tokens_per_s_after_step_1"] / two["tokens_per_s_after_step_1"],
    }
    print(
        f"one/two per micro-batch: {ratios['whole_run']:.2f}x whole run, {ratios['after_step_1']:.2f}x after step 1"
    )
    print(
        json.dumps({"benchmark": "train_batching", "steps": args.steps, "results": results, "ratios": ratios})
    )


if __name__ == "__main__":
    main()
