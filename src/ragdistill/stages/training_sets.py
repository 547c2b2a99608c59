"""A training set written to a stage folder: ``data.parquet`` and its dataset card.

Shared by the datasets stage (the students' sets) and the warm start (its demonstrations' set), and
nothing else: a stage that writes a training set runs this code, not the datasets stage's, so a change
to the distillation set's leak check (which reads the hint bank) leaves the warm start's cache alone.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import yaml

from ragdistill.config import ModelSpec
from ragdistill.episodes import EpisodeRecord
from ragdistill.store import ArtifactStore

if TYPE_CHECKING:
    from ragdistill.training.examples import Selection

DATA_FILE = "data.parquet"
CARD_FILE = "README.md"


def selection_for(env: str, max_invalid_actions: int | None, min_score: float | None) -> Selection:
    """The selection of :func:`selection` in environment ``env``."""
    from ragdistill.environments.registry import get_profile
    from ragdistill.training.examples import Selection

    profile = get_profile(env)
    max_invalid = profile.default_max_invalid if max_invalid_actions is None else max_invalid_actions
    return Selection(profile.invalid_observation, max_invalid, min_score)


@dataclass(frozen=True)
class ExampleRecipe:
    """How episodes become a training set: which ones (``selection``), tokenised by ``tokenizer``'s
    chat template without the ``removed`` prompt segments, fitted to ``max_seq_len`` (``overlong``)."""

    selection: Selection
    tokenizer: ModelSpec
    removed: tuple[str, ...]
    max_seq_len: int
    overlong: Literal["drop_oldest", "skip"]


def write_training_set(
    store: ArtifactStore,
    folder: str,
    name: str,
    records: dict[str, EpisodeRecord],
    recipe: ExampleRecipe,
    *,
    source_runs: dict[str, str],
    identity_key: str,
    empty_because: Callable[[Counter[str], int], str],
    hint_text: Callable[[str], str | None] | None = None,
) -> tuple[dict[str, int], dict[str, Any]]:
    """Write ``<folder>/data.parquet`` and its dataset card from ``records`` (by episode key); returns
    the manifest's counts and the card. ``hint_text``: the leak check's lookup (distillation only);
    ``empty_because(skipped, episodes)``: the card's reason when no example qualified."""
    from ragdistill.inference.chat import load_tokenizer
    from ragdistill.models import resolve_model
    from ragdistill.training.examples import build_examples, check_leaks

    tokenizer = load_tokenizer(resolve_model(recipe.tokenizer), recipe.tokenizer.trust_remote_code)
    built = build_examples(
        records.values(), tokenizer, recipe.selection, recipe.removed, recipe.max_seq_len, recipe.overlong
    )
    if hint_text is not None:
        check_leaks(built.examples, records, hint_text)
    rows = [example.row() for example in built.examples]
    store.write_bytes(f"{folder}/{DATA_FILE}", parquet_bytes(rows))
    episodes_per_source = Counter(record.source for record in records.values())
    counts: dict[str, int] = {
        "examples": len(rows),
        "episodes": len(records),
        "tokens": sum(row["num_tokens"] for row in rows),
        "loss_tokens": sum(sum(row["assistant_masks"]) for row in rows),
        **{f"source_{source}": n for source, n in Counter(row["source"] for row in rows).items()},
        **{f"type_{task_type}": n for task_type, n in Counter(row["task_type"] for row in rows).items()},
        **{f"skipped_{reason}": n for reason, n in built.skipped.items()},
    }
    card = {
        "dataset": name,
        "examples": len(rows),
        "empty_because": empty_because(built.skipped, len(records)) if not rows else None,
        "episodes_read": dict(episodes_per_source),
        "examples_per_source": dict(Counter(row["source"] for row in rows)),
        "examples_per_task_type": dict(Counter(row["task_type"] for row in rows)),
        "skipped": dict(built.skipped),
        "filters": {
            "success_or_min_score": recipe.selection.min_score,
            "max_invalid_actions": recipe.selection.max_invalid_actions,
            "invalid_observation": recipe.selection.invalid_observation,
            "removed_segments": list(recipe.removed),
            "max_seq_len": recipe.max_seq_len,
            "overlong": recipe.overlong,
        },
        "source_runs": source_runs,
        "tokenizer": recipe.tokenizer.name,
        "identity": identity_key,
    }
    store.write_text(f"{folder}/{CARD_FILE}", dataset_card(card))
    return counts, card


_COLUMNS = {
    "input_ids": "int32-list",
    "assistant_masks": "int8-list",
    "episode_id": "string",
    "task_id": "string",
    "task_type": "string",
    "source": "string",
    "num_tokens": "int32",
    "dropped_turns": "int32",
    "text": "string",
}


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    """The rows as one parquet file, with a fixed schema (an empty set keeps its columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {
        "int32-list": pa.list_(pa.int32()),
        "int8-list": pa.list_(pa.int8()),
        "string": pa.string(),
        "int32": pa.int32(),
    }
    schema = pa.schema([(name, types[kind]) for name, kind in _COLUMNS.items()])
    table = pa.Table.from_pylist(rows, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def dataset_card(card: dict[str, Any]) -> str:
    """A Hugging Face dataset card: YAML front matter (the data file, and our counts), then prose."""
    front = {"configs": [{"config_name": "default", "data_files": DATA_FILE}], "ragdistill": card}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        f"# {card['dataset']} — ragdistill training set",
        "",
        f"{card['examples']} examples, one per episode, from {json.dumps(card['episodes_read'])} episodes read.",
    ]
    if card["empty_because"]:
        lines.append(f"This set is empty: {card['empty_because']}.")
    lines += [
        "",
        "Columns: `input_ids` (the conversation through the model's chat template), `assistant_masks` (1 on the "
        "tokens the loss covers: the model's own turns), `text` (the conversation, readable), and metadata.",
        f"Removed prompt segments: {', '.join(card['filters']['removed_segments'])}.",
        "",
        'Load it with `datasets.load_dataset("parquet", data_files="data.parquet")`.',
    ]
    return "\n".join(lines) + "\n"
