"""Stage E (promote): register every trained and evaluated student in the adapter registry, then let the
promotion gate decide on the candidate (``promotion.*``; ``ragdistill.adapter_registry``).

A student is registered with its lineage (base model, dataset digest and the dataset's own inputs, the
hint bank digest, the base rollout its hints were mined from and how many failures were mined), its
training settings and its evaluation's headline. The gate compares the candidate (``promotion.student``)
with the registry's current adapter, or with the base agent's evaluation when nothing is current.
A student that was not trained (an empty training set) or not evaluated is recorded as not registered,
with the reason; without a candidate nothing is decided.

Writes ``promotion/decision.json`` (what was registered and decided) and its manifest; the registry under
``registry/`` belongs to no stage folder and is never cleared. Identity: the ``promotion`` settings, the
content digests of everything read, and the code. Registering the same adapter with the same evaluation
again finds the version registered before, so a re-run never adds versions.

A retrain generation (``generations/<k>/``, a run root of its own) promotes into its *parent's* registry:
``run_promotion(..., registry_store=<parent store>, generation=...)`` registers the generation's students
there with their folders named from the parent (``generations/<k>/adapters/<student>/adapter``) and the
generation (its number and the collect batches it consumed) in their lineage, and the gate compares the
candidate with the parent's current version, so ``collect`` plays the new student once it is promoted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ragdistill.adapter_registry import AdapterRegistry, EvalSummary, RegistryEntry, RegistryError
from ragdistill.adapter_registry.entries import Actor
from ragdistill.config import ExperimentConfig
from ragdistill.episodes import EpisodeRecord
from ragdistill.identity import code_fingerprint
from ragdistill.stages.datasets import dataset_dir
from ragdistill.stages.evaluation import STUDENTS, eval_stage
from ragdistill.stages.layout import ADAPTERS_DIR, BASE_STAGE, HINTS_DIR, PROMOTION_DIR, rollout_prefix
from ragdistill.stages.lifecycle import IDENTITY_NAME, StageIdentity, StageRun
from ragdistill.stages.rollout import TASKS_FILE
from ragdistill.store import (
    ArtifactError,
    ArtifactStore,
    Manifest,
    read_manifest,
    read_records,
    verify_manifest,
)

log = logging.getLogger("ragdistill.stages")

DECISION_FILE = "decision.json"
ADAPTER_SUBDIR = "adapter"


def promotion_inputs(store: ArtifactStore) -> dict[str, str]:
    """Every finished stage the promotion reads, by folder, with its content digest."""
    folders = [rollout_prefix(BASE_STAGE), HINTS_DIR, rollout_prefix(eval_stage("base"))]
    for name in STUDENTS:
        folders += [dataset_dir(name), f"{ADAPTERS_DIR}/{name}", rollout_prefix(eval_stage(name))]
    found: dict[str, str] = {}
    for folder in folders:
        try:
            found[folder] = read_manifest(store, folder).digest
        except ArtifactError:
            continue
    return found


def promotion_identity(
    config: ExperimentConfig,
    store: ArtifactStore,
    registry_store: ArtifactStore | None = None,
    generation: dict[str, Any] | None = None,
) -> StageIdentity:
    settings: dict[str, Any] = {"promotion": config.promotion.model_dump(mode="json"), "env": config.env.name}
    if registry_store is not None:
        settings["registry"] = registry_store.root_url
    if generation is not None:
        settings["generation"] = generation
    return StageIdentity(
        stage="promote",
        settings=settings,
        code=code_fingerprint("ragdistill.stages.promotion"),
        inputs=promotion_inputs(store),
    )


def run_promotion(
    config: ExperimentConfig,
    *,
    by: Actor = "pipeline",
    registry_store: ArtifactStore | None = None,
    generation: dict[str, Any] | None = None,
) -> Manifest:
    """Register the students and decide on the candidate; see the module docstring. ``registry_store``:
    the run root whose registry receives them (default: this run root), which must contain this one;
    ``generation``: what a retrain generation adds to each student's lineage (``number``,
    ``collect_batches``)."""
    store = ArtifactStore(config.run.run_root)
    identity = promotion_identity(config, store, registry_store, generation)
    label = f"{config.run.name}: {PROMOTION_DIR}"
    owner = registry_store if registry_store is not None else store
    source = Registration(store, _folder_prefix(store, owner), generation)
    registry = AdapterRegistry(owner, label=label, lease_wait_s=max(config.run.lease_wait_s, 60.0))
    with StageRun(store, PROMOTION_DIR, identity, label=label, lease_wait_s=config.run.lease_wait_s) as run:
        if run.current is not None and _registry_holds(registry, run.current):
            return run.current
        started = time.perf_counter()
        registered: list[dict[str, Any]] = []
        entries: dict[str, RegistryEntry] = {}
        for name in STUDENTS:
            outcome = _register(config, source, registry, name, by)
            if isinstance(outcome, str):
                registered.append({"student": name, "version": None, "reason": outcome})
                continue
            entry, new = outcome
            entries[name] = entry
            registered.append({"student": name, "version": entry.version, "new": new})
        candidate = config.promotion.student
        skipped = next((item.get("reason", "") for item in registered if item["student"] == candidate), "")
        decision = _decide(config, store, registry, entries.get(candidate), skipped, by)
        current = registry.pointer()
        payload = {
            "candidate": config.promotion.student,
            "registered": [{k: v for k, v in item.items() if k != "new"} for item in registered],
            "decision": decision,
            "current": current.version if current else None,
        }
        store.write_json(f"{PROMOTION_DIR}/{DECISION_FILE}", payload)
        return run.finish(
            [DECISION_FILE],
            counts={
                "registered": len(entries),
                "candidate": int(config.promotion.student in entries),
                "promoted": int(decision.get("promoted", False)),
            },
            extra={"decision": decision, "versions": sorted(e.version for e in entries.values())},
            run_stats={
                "new_versions": sum(bool(item.get("new")) for item in registered),
                "seconds": round(time.perf_counter() - started, 2),
            },
        )


def _registry_holds(registry: AdapterRegistry, manifest: Manifest) -> bool:
    """Whether the versions a finished promotion registered are still in the registry."""
    try:
        for version in manifest.extra.get("versions", []):
            registry.entry(version)
    except RegistryError as error:
        log.warning("%s: registering the students again", error)
        return False
    return True


@dataclass(frozen=True)
class Registration:
    """Where the students are read (``store``), the path of ``store`` inside the run root whose registry
    receives them ("" or ``generations/<k>/``) and the generation's lineage."""

    store: ArtifactStore
    prefix: str
    generation: dict[str, Any] | None


def _folder_prefix(store: ArtifactStore, owner: ArtifactStore) -> str:
    """The path of ``store`` inside ``owner``, ending with "/" (empty when they are the same root)."""
    if store.root_url == owner.root_url:
        return ""
    if not store.root_url.startswith(owner.root_url.rstrip("/") + "/"):
        raise RegistryError(
            f"{store.root_url} is not inside {owner.root_url}: a run root can only register its students "
            "in its own registry or in the registry of a run root that contains it (a retrain generation)"
        )
    return store.root_url[len(owner.root_url.rstrip("/")) + 1 :].strip("/") + "/"


def _register(
    config: ExperimentConfig, source: Registration, registry: AdapterRegistry, name: str, by: Actor
) -> tuple[RegistryEntry, bool] | str:
    """Register one student; the registered entry and whether it is new, or why it was not registered."""
    store = source.store
    folder = f"{ADAPTERS_DIR}/{name}"
    try:
        training = read_manifest(store, folder)
    except ArtifactError:
        return f"the {name} student has not been trained"
    if training.extra.get("skipped"):
        return training.extra["skipped"]
    evaluation = eval_summary(config, store, name)
    if evaluation is None:
        return f"the {name} student has not been evaluated (add it to evaluation.methods)"
    evaluated = read_manifest(store, rollout_prefix(eval_stage(name))).inputs.get(folder)
    if evaluated != training.digest:
        return f"the {name} student's evaluation is of an earlier training: evaluate it again"
    prefix = f"{ADAPTER_SUBDIR}/"
    files = {path[len(prefix) :]: info for path, info in training.files.items() if path.startswith(prefix)}
    settings = _recorded_settings(store, folder)
    lineage = _lineage(store, name)
    if source.generation is not None:
        lineage["generation"] = source.generation
    return registry.register(
        student=name,
        source_folder=f"{source.prefix}{folder}/{ADAPTER_SUBDIR}",
        files=files,
        training_manifest=training.digest,
        base_model=settings.get("base_model", {}),
        lineage=lineage,
        training={
            "settings": settings.get("training", {}),
            "seed": settings.get("seed"),
            "libraries": settings.get("libraries", {}),
            "result": training.extra.get("result", {}),
        },
        evaluation=evaluation,
        run={"name": config.run.name, "run_root": store.root_url},
        by=by,
    )


def eval_summary(config: ExperimentConfig, store: ArtifactStore, method: str) -> EvalSummary | None:
    """The headline of ``rollouts/eval-<method>`` (None when it has not finished)."""
    from ragdistill.environments.registry import get_profile
    from ragdistill.evaluation.metrics import compute_metrics

    folder = rollout_prefix(eval_stage(method))
    try:
        manifest = verify_manifest(store, folder)
    except ArtifactError:
        return None
    profile = get_profile(config.env.name)
    records = [EpisodeRecord.from_dict(item) for item in read_records(store, folder, manifest)]
    metrics = compute_metrics(
        records, invalid_observation=profile.invalid_observation, split_task_types=False
    )
    tasks = store.read_json(f"{folder}/{TASKS_FILE}")
    return EvalSummary.from_metrics(
        metrics,
        method=method,
        headline=profile.headline,
        split=tasks.get("split", config.evaluation.split),
        task_list_sha256=manifest.files[TASKS_FILE]["sha256"],
        eval_digest=manifest.digest,
    )


def _recorded_settings(store: ArtifactStore, folder: str) -> dict[str, Any]:
    """The settings a stage folder's identity recorded (what the stage actually ran with)."""
    try:
        return store.read_json(f"{folder}/{IDENTITY_NAME}").get("settings", {})
    except ArtifactError:
        return {}


def _lineage(store: ArtifactStore, name: str) -> dict[str, Any]:
    """Where a student's training data came from: its dataset, and through it the hint bank and the
    base-agent failures the hints were mined from."""
    dataset = read_manifest(store, dataset_dir(name))
    lineage: dict[str, Any] = {
        "dataset": {
            "folder": dataset_dir(name),
            "digest": dataset.digest,
            "examples": dataset.counts.get("examples", 0),
            "inputs": dataset.inputs,
        },
        "hint_bank": None,
        "failures": None,
    }
    if HINTS_DIR in dataset.inputs:
        hints = read_manifest(store, HINTS_DIR)
        mined_from = _recorded_growable(store, HINTS_DIR)
        lineage["hint_bank"] = {
            "folder": HINTS_DIR,
            "digest": hints.digest,
            "hints": hints.counts.get("bank_size"),
        }
        lineage["failures"] = {
            "rollouts": mined_from,
            "failures_mined": hints.counts.get("failures"),
            "episodes_read": hints.counts.get("episodes"),
        }
    return lineage


def _recorded_growable(store: ArtifactStore, folder: str) -> dict[str, Any]:
    try:
        return store.read_json(f"{folder}/{IDENTITY_NAME}").get("growable", {})
    except ArtifactError:
        return {}


def _decide(
    config: ExperimentConfig,
    store: ArtifactStore,
    registry: AdapterRegistry,
    candidate: RegistryEntry | None,
    skipped: str,
    by: Actor,
) -> dict[str, Any]:
    settings = config.promotion
    if candidate is None:
        return {"promoted": False, "version": None, "reason": f"no candidate: {skipped}"}
    if not settings.enabled:
        return {"promoted": False, "version": candidate.version, "reason": "promotion.enabled is false"}
    decision = registry.gate(
        candidate.version,
        base=eval_summary(config, store, "base"),
        margin=settings.margin,
        min_episodes=settings.min_episodes,
        by=by,
        run=config.run.name,
    )
    return {
        "promoted": decision.promote,
        "version": candidate.version,
        "reason": decision.reason,
        "reference": decision.reference,
        "delta": decision.delta,
    }
