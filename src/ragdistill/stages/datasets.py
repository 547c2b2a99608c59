"""Stage D (datasets): the SFT and distillation training sets, as Hugging Face datasets in parquet.

- ``datasets/sft``: the base agent's successful episodes (the paper's SFT baseline).
- ``datasets/distill``: the teacher's successful episodes (``distill.teacher``: the RAG teacher's
  rollout, the expert teacher's demonstrations, or both), with the ``hints`` and ``fewshot`` segments
  removed by kind, then checked for leaks (a hint or few-shot text left in any example stops the
  stage, naming the example and the text).

Both drop the few-shot examples (the paper trains on the first system line + the task). Each folder
holds ``data.parquet`` (``datasets.load_dataset("parquet", data_files=...)``) and ``README.md``, a
dataset card with the counts per source and task type, what was left out and why, the filters and the
source runs. An empty set is a recorded outcome (zero rows, the reason in the card), never an error.

Identity (each dataset on its own; :class:`~ragdistill.config.stages.DatasetSettings`, whole): the
selection settings, ``training.max_seq_len``, the agent model (its tokenizer), the environment (its
invalid-action text and default invalid-action limit, through the code), the sources and the segments
removed; plus the content digests of the source rollouts (and of the hint bank, which the leak check
reads), the versions of transformers and datasets, and the code.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import yaml

from ragdistill.config import ModelSpec
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import DatasetSettings, Inputs
from ragdistill.episodes import EpisodeRecord
from ragdistill.layout import HINTS_DIR
from ragdistill.stages.lifecycle import StageIdentity, StageRun, stage_identity, stage_inputs, verified_input
from ragdistill.store import ArtifactStore, Manifest, read_records

if TYPE_CHECKING:
    from ragdistill.training.examples import Selection

DATA_FILE = "data.parquet"
CARD_FILE = "README.md"
OUTPUTS = (DATA_FILE, CARD_FILE)
LIBRARIES = ("transformers", "datasets")


def selection(settings: DatasetSettings) -> Selection:
    """Which episodes become examples: the settings, the environment's invalid observation, and its
    default invalid-action limit when ``max_invalid_actions`` is unset."""
    return selection_for(settings.env, settings.max_invalid_actions, settings.min_score)


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
    store.write_bytes(f"{folder}/{DATA_FILE}", _parquet(rows))
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


def dataset_identity(ctx: RunContext, settings: DatasetSettings, inputs: Inputs) -> StageIdentity:
    return stage_identity(settings, stage_inputs(settings, inputs), libraries=LIBRARIES)


def run_dataset(ctx: RunContext, settings: DatasetSettings, inputs: Inputs) -> Manifest:
    """Build ``datasets/<name>``; see the module docstring."""
    store = ArtifactStore(ctx.run_root)
    identity = dataset_identity(ctx, settings, inputs)
    folder, name = settings.stage_dir(), settings.name
    with StageRun(store, folder, identity, ctx, label=f"{ctx.run_name}: {folder}", outputs=OUTPUTS) as run:
        if run.current is not None:
            return run.current
        started = time.perf_counter()
        records: dict[str, EpisodeRecord] = {}
        for prefix in settings.sources:
            manifest = verified_input(store, prefix, inputs[prefix])
            for item in read_records(store, prefix, manifest):
                record = EpisodeRecord.from_dict(item)
                records[f"{record.source}/{record.run_id}/{record.task_id}"] = record
        recipe = ExampleRecipe(
            selection(settings),
            settings.tokenizer,
            tuple(settings.removed),
            settings.max_seq_len,
            settings.overlong,
        )
        hint_text = _hint_lookup(store, inputs[HINTS_DIR]) if name == "distill" else None
        run.clear()
        counts, card = write_training_set(
            store,
            folder,
            name,
            records,
            recipe,
            source_runs=identity.inputs,
            identity_key=identity.key,
            empty_because=lambda skipped, episodes: _empty_reason(settings, skipped, episodes),
            hint_text=hint_text,
        )
        return run.finish(
            counts=counts,
            extra={"card": card},
            run_stats={"seconds": round(time.perf_counter() - started, 2)},
        )


def _empty_reason(settings: DatasetSettings, skipped: Counter[str], episodes: int) -> str:
    names = {"teacher": "rag", "expert": "expert"}
    teachers = " and ".join(names.get(prefix.rsplit("/", 1)[-1], prefix) for prefix in settings.sources)
    source = "the base agent" if settings.name == "sft" else f"the {teachers} teacher"
    if not episodes:
        return f"{source} recorded no episodes"
    reasons = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in skipped.most_common())
    return f"none of the {episodes} episodes of {source} qualified ({reasons})"


def _hint_lookup(store: ArtifactStore, expected: str) -> Any:
    from ragdistill.retrieval.bank import HintBank

    verified_input(store, HINTS_DIR, expected)
    bank = HintBank.load(store)
    return lambda hint_id: bank.get(hint_id).text if hint_id in bank else None


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


def _parquet(rows: list[dict[str, Any]]) -> bytes:
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
