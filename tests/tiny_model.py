"""A tiny randomly initialised Llama with a small real tokenizer, and a pre-tokenised training set for it:
enough for LoRA trainings of a few steps through ``accelerate launch`` that take seconds, not minutes."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from openai_fault_server import train_tiny_tokenizer

EXAMPLES = 16
"""Rows of :func:`write_token_dataset`: with an effective batch of 8, an epoch is 2 optimizer steps."""


def write_tiny_model(folder: Path) -> Path:
    """A 2-layer, 32-wide Llama over a 296-token BPE with a ChatML template, saved to ``folder``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    train_tiny_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def write_token_dataset(path: Path, vocab_size: int = 296) -> Path:
    """:data:`EXAMPLES` rows of random token ids (24 to 39 tokens), the second half of each a loss span."""
    rng = random.Random(0)
    rows = []
    for index in range(EXAMPLES):
        length = 24 + index
        rows.append(
            {
                "input_ids": [rng.randrange(3, vocab_size) for _ in range(length)],
                "assistant_masks": [0] * (length // 2) + [1] * (length - length // 2),
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def dataset_tokens(path: Path) -> int:
    return sum(len(ids) for ids in pq.read_table(path, columns=["input_ids"]).column("input_ids").to_pylist())
