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

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import DatasetSettings, Inputs
from ragdistill.episodes import EpisodeRecord
from ragdistill.layout import HINTS_DIR
from ragdistill.stages.lifecycle import StageIdentity, StageRun, stage_identity, stage_inputs, verified_input
from ragdistill.stages.training_sets import (
    CARD_FILE,
    DATA_FILE,
    ExampleRecipe,
    selection_for,
    write_training_set,
)
from ragdistill.store import ArtifactStore, Manifest, read_records

if TYPE_CHECKING:
    from ragdistill.training.examples import Selection

OUTPUTS = (DATA_FILE, CARD_FILE)
LIBRARIES = ("transformers", "datasets")


def selection(settings: DatasetSettings) -> Selection:
    """Which episodes become examples: the settings, the environment's invalid observation, and its
    default invalid-action limit when ``max_invalid_actions`` is unset."""
    return selection_for(settings.env, settings.max_invalid_actions, settings.min_score)


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
