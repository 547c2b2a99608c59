"""Stage B: mine the base rollout's failures for hints, in committed chunks, into the hint bank.

Identity (:class:`~ragdistill.config.stages.MiningSettings`, whole): the hint rules (the ``mining``
section without ``chunk_size``, which only sets how often work is committed: it is in the run context),
the extractor role (model, sampling, backend kind), the source rollout's folder and the dedupe embedding
model, plus the inference library versions and the mining code; the source rollout's content digest is
*growable*: new failures are mined, answers already given are reused.

Each chunk of failures is sent to the extractor in one batch and committed as ONE object,
``hints/chunks/chunk-NNNNNN.json``, holding every answered episode's validated hints and rejections:
hints and ledger entries land together, so a crash loses at most the chunk in flight, and an episode
whose request was lost to an infrastructure fault is not in the ledger and is sent again. The bank is
then folded from the ledger entries of the failures the current rollout holds, in rollout order.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import Inputs, MiningSettings
from ragdistill.episodes import EpisodeRecord
from ragdistill.inference.base import Backend
from ragdistill.inference.factory import BACKEND_LIBRARIES
from ragdistill.inference.shared import shared_backend
from ragdistill.layout import HINTS_DIR, REJECTED_HINTS
from ragdistill.stages.lifecycle import (
    StageIdentity,
    StageRun,
    handed,
    role_config,
    stage_identity,
    verified_input,
)
from ragdistill.store import ArtifactStore, Manifest, read_records

CHUNKS_DIR = f"{HINTS_DIR}/chunks"
MINED_EPISODES = f"{HINTS_DIR}/mined-episodes.json"
OUTPUTS = ("bank.jsonl", "rejected.jsonl", "mined-episodes.json", "chunks/chunk-*.json")


def mining_identity(ctx: RunContext, settings: MiningSettings, inputs: Inputs) -> StageIdentity:
    return stage_identity(
        settings,
        {},
        libraries=BACKEND_LIBRARIES[settings.extractor.backend],
        growable=handed(inputs, settings.source),
    )


def run_mining(
    ctx: RunContext, settings: MiningSettings, inputs: Inputs, *, backend: Backend | None = None
) -> Manifest:
    """Stage B; see the module docstring."""
    from ragdistill.retrieval.bank import HintBank
    from ragdistill.retrieval.mining import (
        episode_id,
        extract_hints,
        extraction_options,
        select_failures,
        summarize,
    )

    store = ArtifactStore(ctx.run_root)
    source = settings.source
    identity = mining_identity(ctx, settings, inputs)
    with StageRun(store, HINTS_DIR, identity, ctx, label=f"{ctx.run_name}: mine", outputs=OUTPUTS) as run:
        if run.current is not None:
            return run.current
        started = time.perf_counter()
        rollout = verified_input(store, source, inputs[source])
        records = [EpisodeRecord.from_dict(item) for item in read_records(store, source, rollout)]
        rules = settings.rules
        failures, counts = select_failures(records, rules.max_failures)
        ledger = _load_ledger(store)
        new = [record for record in failures if episode_id(record) not in ledger]
        extractor = role_config(ctx, settings.extractor)
        options = extraction_options(rules, extractor.sampling)
        chunk_size = ctx.mining_chunk_size
        sent = 0
        for start in range(0, len(new), chunk_size):
            chunk = new[start : start + chunk_size]
            backend = backend or shared_backend(extractor)
            mined = extract_hints(chunk, backend, **options)
            _commit_chunk(store, [entry.to_dict() for entry in mined])
            ledger.update({entry.episode_id: entry for entry in mined})
            sent += len(chunk)

        current = [ledger[episode_id(record)] for record in failures if episode_id(record) in ledger]
        result = summarize(current, counts)
        bank = HintBank.from_rules(rules, _embedder(settings.dedupe_embedding_model))
        outcomes = bank.add_all(result.hints)
        bank.save(store)
        store.write_json(MINED_EPISODES, sorted(entry.episode_id for entry in current))
        store.write_text(
            REJECTED_HINTS,
            "".join(
                json.dumps({"episode": episode, "text": text, "reason": reason}) + "\n"
                for episode, text, reason in result.rejected
            ),
        )
        counts = {
            **result.counts,
            "failures_not_answered": len(failures) - len(current),
            "transient_errors": len(failures) - len(current),  # never current: the next run sends them
            "hints_added": outcomes["added"],
            "hints_merged": outcomes["merged"],
            "bank_size": len(bank),
            **{f"bank_{task_type}": size for task_type, size in bank.counts_by_type().items()},
        }
        return run.finish(
            counts=counts,
            run_stats={
                "sent_to_extractor_now": sent,
                "reused_answers": len(current) - sent,
                "seconds": round(time.perf_counter() - started, 2),
            },
        )


def _load_ledger(store: ArtifactStore) -> dict[str, Any]:
    """Every answered episode committed so far, by episode id (later chunks win)."""
    from ragdistill.retrieval.mining import MinedEpisode

    ledger: dict[str, MinedEpisode] = {}
    for relative in store.list(CHUNKS_DIR):
        for item in store.read_json(relative)["episodes"]:
            entry = MinedEpisode.from_dict(item)
            ledger[entry.episode_id] = entry
    return ledger


def _commit_chunk(store: ArtifactStore, entries: list[dict[str, Any]]) -> None:
    number = len(store.list(CHUNKS_DIR))
    store.write_json(f"{CHUNKS_DIR}/chunk-{number:06d}.json", {"episodes": entries})


def _embedder(model: str | None) -> Any:
    """The embedder of embedding-based dedupe (None: fuzzy dedupe needs none)."""
    if model is None:
        return None
    from ragdistill.retrieval.embed import get_embedder

    return get_embedder(model)
