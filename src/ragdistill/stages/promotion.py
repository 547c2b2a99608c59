"""Stage E (promote): register every trained and evaluated student in the adapter registry, then let the
promotion gate decide on the candidate (``promotion.*``; ``ragdistill.adapter_registry``).

A student is registered with its lineage (base model, dataset digest and the dataset's own inputs, the
hint bank digest, the base rollout its hints were mined from and how many failures were mined, and the
warm start its base came from when it is on: "smollm2-135m + warm start on 60 expert games"), its
training settings and its evaluation's headline. The gate compares the candidate (``promotion.student``)
with the registry's current adapter, or with the base agent's evaluation when nothing is current.
Under several evaluation seeds (``evaluation.seeds``) a headline is the mean over the seeds, and a
student is evaluated only when every seed's evaluation finished (``eval_summary``).
A student that was not trained (an empty training set) or not evaluated is recorded as not registered,
with the reason; without a candidate nothing is decided.

Writes ``promotion/decision.json`` (what was registered and decided) and its manifest; the registry under
``registry/`` belongs to no stage folder and is never cleared. Identity
(:class:`~ragdistill.config.stages.PromotionSettings`, whole: the ``promotion`` section, the environment,
the evaluation split, the registry's run root and the generation), the content digests of everything
read, and the code. Registering the same adapter with the same evaluation
again finds the version registered before, so a re-run never adds versions.

A retrain generation (``generations/<k>/``, a run root of its own) promotes into its *parent's* registry:
``PromotionSettings.registry_root`` (the parent's root) and ``generation`` registers the generation's students
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
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import Inputs, PromotionSettings
from ragdistill.episodes import EpisodeRecord
from ragdistill.evaluation.metrics import MethodMetrics
from ragdistill.identity import digest
from ragdistill.layout import (
    ADAPTERS_DIR,
    HINTS_DIR,
    PROMOTION_DIR,
    STUDENTS,
    TASKS_FILE,
    dataset_dir,
    rollout_prefix,
)
from ragdistill.stages.lifecycle import (
    IDENTITY_NAME,
    StageIdentity,
    StageRun,
    rerun_remedy,
    stage_identity,
    stage_inputs,
)
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


def promotion_identity(ctx: RunContext, settings: PromotionSettings, inputs: Inputs) -> StageIdentity:
    return stage_identity(settings, stage_inputs(settings, inputs))


def run_promotion(
    ctx: RunContext, settings: PromotionSettings, inputs: Inputs, *, by: Actor = "pipeline"
) -> Manifest:
    """Register the students and decide on the candidate; see the module docstring.
    ``settings.registry_root``: the run root whose registry receives them (default: this run root), which
    must contain this one; ``settings.generation``: what a retrain generation adds to each student's
    lineage (``number``, ``collect_batches``)."""
    store = ArtifactStore(ctx.run_root)
    identity = promotion_identity(ctx, settings, inputs)
    label = f"{ctx.run_name}: {PROMOTION_DIR}"
    owner = ArtifactStore(settings.registry_root) if settings.registry_root is not None else store
    source = Registration(store, _folder_prefix(store, owner), settings.generation)
    registry = AdapterRegistry(owner, label=label, lease_wait_s=max(ctx.lease_wait_s, 60.0))
    with StageRun(store, PROMOTION_DIR, identity, ctx, label=label, outputs=(DECISION_FILE,)) as run:
        if run.current is not None and _registry_holds(registry, run.current):
            return run.current
        started = time.perf_counter()
        registered: list[dict[str, Any]] = []
        entries: dict[str, RegistryEntry] = {}
        for name in STUDENTS:
            outcome = _register(ctx, settings, source, registry, name, by)
            if isinstance(outcome, str):
                registered.append({"student": name, "version": None, "reason": outcome})
                continue
            entry, new = outcome
            entries[name] = entry
            registered.append({"student": name, "version": entry.version, "new": new})
        candidate = settings.promotion.student
        skipped = next((item.get("reason", "") for item in registered if item["student"] == candidate), "")
        decision = _decide(ctx, settings, store, registry, entries.get(candidate), skipped, by)
        current = registry.pointer()
        payload = {
            "candidate": candidate,
            "registered": [{k: v for k, v in item.items() if k != "new"} for item in registered],
            "decision": decision,
            "current": current.version if current else None,
        }
        store.write_json(f"{PROMOTION_DIR}/{DECISION_FILE}", payload)
        return run.finish(
            [DECISION_FILE],
            counts={
                "registered": len(entries),
                "candidate": int(candidate in entries),
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
    ctx: RunContext,
    settings: PromotionSettings,
    source: Registration,
    registry: AdapterRegistry,
    name: str,
    by: Actor,
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
    evaluation = eval_summary(settings, store, name)
    if isinstance(evaluation, str):
        return evaluation
    for evaluated_folder in settings.seeds.folders(name):
        if read_manifest(store, evaluated_folder).inputs.get(folder) != training.digest:
            return (
                f"the {name} student's evaluation is of an earlier training ({evaluated_folder}): "
                "evaluate it again"
            )
    prefix = f"{ADAPTER_SUBDIR}/"
    files = {path[len(prefix) :]: info for path, info in training.files.items() if path.startswith(prefix)}
    recorded = _recorded_identity(store, folder)
    trained_with = recorded.get("settings", {})
    lineage = _lineage(store, name)
    if training.extra.get("base"):
        lineage["base"] = training.extra["base"]
    if source.generation is not None:
        lineage["generation"] = source.generation
    return registry.register(
        student=name,
        source_folder=f"{source.prefix}{folder}/{ADAPTER_SUBDIR}",
        files=files,
        training_manifest=training.digest,
        base_model=trained_with.get("base_model", {}),
        lineage=lineage,
        training={
            "settings": trained_with.get("training", {}),
            "seed": trained_with.get("seed"),
            "libraries": recorded.get("libraries", {}),
            "result": training.extra.get("result", {}),
        },
        evaluation=evaluation,
        run={"name": ctx.run_name, "run_root": store.root_url},
        by=by,
    )


def eval_summary(settings: PromotionSettings, store: ArtifactStore, method: str) -> EvalSummary | str:
    """The headline of ``method``'s evaluation, averaged over the evaluation seeds
    (``rollouts/eval-<method>`` and ``rollouts/eval-<method>-seed<S>``), or why there is none: a seed
    whose evaluation has not finished, or seeds that played different task lists. The evaluation's
    digest is its folder's (one seed) or a digest of every seed's (several), so the same evaluations
    registered again find the same version."""
    from ragdistill.environments.registry import get_profile
    from ragdistill.evaluation.metrics import compute_metrics

    profile = get_profile(settings.env)
    per_seed: dict[int, MethodMetrics] = {}
    digests: dict[str, str] = {}
    task_lists: dict[str, str] = {}
    split = settings.eval_split
    for seed, stage in settings.seeds.stages(method).items():
        folder = rollout_prefix(stage)
        try:
            manifest = verify_manifest(store, folder)
        except ArtifactError:
            return (
                f"the {method} evaluation under seed {seed} has not finished ({store.uri(folder)}): add "
                f"{method} to evaluation.methods, or {rerun_remedy(folder)}"
            )
        records = [EpisodeRecord.from_dict(item) for item in read_records(store, folder, manifest)]
        per_seed[seed] = compute_metrics(
            records, invalid_observation=profile.invalid_observation, split_task_types=False
        )
        digests[str(seed)] = manifest.digest
        task_lists[folder] = manifest.files[TASKS_FILE]["sha256"]
        split = store.read_json(f"{folder}/{TASKS_FILE}").get("split", split)
    if len(set(task_lists.values())) > 1:
        return (
            f"the {method} evaluations of the seeds played different task lists ({', '.join(task_lists)}): "
            "evaluate every seed again on the same environment data"
        )
    return EvalSummary.over_seeds(
        per_seed,
        method=method,
        headline=profile.headline,
        split=split,
        task_list_sha256=next(iter(task_lists.values())),
        eval_digest=next(iter(digests.values())) if len(digests) == 1 else f"seeds:{digest(digests)}",
    )


def _recorded_identity(store: ArtifactStore, folder: str) -> dict[str, Any]:
    """The identity a stage folder recorded (the settings and libraries the stage actually ran with)."""
    try:
        recorded = store.read_json(f"{folder}/{IDENTITY_NAME}")
    except ArtifactError:
        return {}
    return recorded if isinstance(recorded, dict) else {}


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
    ctx: RunContext,
    settings: PromotionSettings,
    store: ArtifactStore,
    registry: AdapterRegistry,
    candidate: RegistryEntry | None,
    skipped: str,
    by: Actor,
) -> dict[str, Any]:
    gate = settings.promotion
    if candidate is None:
        return {"promoted": False, "version": None, "reason": f"no candidate: {skipped}"}
    if not gate.enabled:
        return {"promoted": False, "version": candidate.version, "reason": "promotion.enabled is false"}
    base = eval_summary(settings, store, "base")
    decision = registry.gate(
        candidate.version,
        base=base if isinstance(base, EvalSummary) else None,
        margin=gate.margin,
        min_episodes=gate.min_episodes,
        by=by,
        run=ctx.run_name,
    )
    return {
        "promoted": decision.promote,
        "version": candidate.version,
        "reason": decision.reason,
        "reference": decision.reference,
        "delta": decision.delta,
    }
