"""The checkpoints, tokenizer and training data of benchmarks/gpu_check.py, built without a model hub.

Random weights of the published Qwen2.5 shapes train and generate at the speed of the real models; the
tokenizer is byte-level with the model's vocabulary size, so any text encodes and every id a random
model generates decodes to text, and it has Qwen2.5's ChatML template and special tokens.
"""

from __future__ import annotations

import gc
import itertools
import random
import time
from pathlib import Path
from typing import Any

QWEN25_COMMON = {
    "max_position_embeddings": 32768,
    "rope_theta": 1e6,
    "rms_norm_eps": 1e-6,
    "use_sliding_window": False,
}
QWEN25_SHAPES = {  # the published config.json of each model
    "qwen2.5-1.5b": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
}
TINY = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}
TINY_SHAPES = {  # the same two models, shrunk for --dry-run
    "qwen2.5-1.5b": {**QWEN25_SHAPES["qwen2.5-1.5b"], **TINY, "hidden_size": 64, "intermediate_size": 128},
    "qwen2.5-7b": {**QWEN25_SHAPES["qwen2.5-7b"], **TINY, "hidden_size": 96, "intermediate_size": 192},
}
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
"""The last three ids of the vocabulary, as in Qwen2.5's tokenizer: padding, turn start, turn end."""
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer with ``vocab_size`` ids: the 256 byte symbols (so any text encodes),
    filler tokens of 2+ byte symbols (so every id the model generates decodes to text) and the
    special tokens last; no merges, so text encodes one token per byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    longer = (
        "".join(combo) for size in itertools.count(2) for combo in itertools.product(alphabet, repeat=size)
    )
    fillers = list(itertools.islice(longer, vocab_size - len(alphabet) - len(SPECIAL_TOKENS)))
    vocabulary = {token: index for index, token in enumerate([*alphabet, *fillers, *SPECIAL_TOKENS])}
    backend = Tokenizer(models.BPE(vocab=vocabulary, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[2],
        additional_special_tokens=[SPECIAL_TOKENS[1]],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)


def build_checkpoint(name: str, shape: dict[str, Any], folder: Path, device: str) -> dict[str, Any]:
    """A randomly initialised bf16 checkpoint of ``shape`` (built on ``device``) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    started = time.perf_counter()
    vocab = shape["vocab_size"]
    config = Qwen2Config(**QWEN25_COMMON, **shape, pad_token_id=vocab - 3, eos_token_id=vocab - 1)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    model.save_pretrained(folder)
    write_tokenizer(folder, vocab)
    del model
    release_memory()
    return {"model": name, "parameters": parameters, "seconds": round(time.perf_counter() - started, 1)}


def release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_dataset(path: Path, seq_len: int, count: int, vocab_size: int) -> Path:
    """``count`` pre-tokenised examples of ``seq_len`` random ids, as the datasets stage writes them
    (``input_ids``, ``assistant_masks``), the loss on the last three quarters."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    prompt = seq_len // 4
    rows = [
        {
            "input_ids": [rng.randrange(vocab_size - len(SPECIAL_TOKENS)) for _ in range(seq_len)],
            "assistant_masks": [0] * prompt + [1] * (seq_len - prompt),
        }
        for _ in range(count)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
