"""Stage D (train): a LoRA student per training set, through ``accelerate launch``.

``adapters/<name>/`` holds ``adapter/`` (safetensors + ``adapter_config.json``), ``loss.csv``,
``loss.png``, ``tensorboard/``, ``train.log`` and ``result.json``; ``checkpoints/`` lets a killed
training resume from its last checkpoint (the same identity keeps the folder: ``stages.lifecycle``).
A student whose dataset is empty is not trained: the stage finishes with the reason in its manifest
(``extra.skipped``), which evaluation and the report show.

Several machines (``training.launch``, or the environment a cluster scheduler sets; README, "Training on
several machines"): the stage runs once on each machine. Machine 0 holds the folder as any stage does,
trains with the others and writes the adapter and the manifest once; every other machine runs its share
of the training processes, writes nothing under the run root (only ``train.machine-<rank>.log`` and
``spec.machine-<rank>.json`` in the working folder, which on a ``file://`` run root is the shared stage
folder) and then returns the manifest machine 0 wrote.

Identity (:class:`~ragdistill.config.stages.TrainingSettings`, whole): every ``training.*`` setting, the
base model, the seed and whether the base is the warm start's checkpoint; plus the dataset's content
digest (and the warm start's, when on), the library versions of torch / transformers / TRL / peft /
accelerate, and the code. With the warm start on, the student is LoRA on its merged checkpoint
(``stages.rollout.agent_model``), and the manifest names that base (``extra.base``) for the registry's lineage.

Object-store run roots: training writes to a local working folder under the cache and uploads the
results when it ends. Its checkpoints are copied to ``adapters/<name>/checkpoints/`` while it runs
(``stages.training_checkpoints``), and a training starting on a machine whose cache lacks them copies
the newest one back first, so a training killed on one machine resumes on another from its last copied
checkpoint. Finished, the stage removes the checkpoints, here and in the store.
"""

from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from ragdistill.config import ModelSpec, TrainingLaunch, TrainingRecipe
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import Inputs, TrainingSettings
from ragdistill.layout import dataset_dir
from ragdistill.stages.lifecycle import (
    StageError,
    StageIdentity,
    StageRun,
    current_manifest,
    rerun_remedy,
    stage_identity,
    stage_inputs,
    verified_input,
)
from ragdistill.stages.rollout import agent_model
from ragdistill.stages.training_checkpoints import CHECKPOINTS_DIR, CheckpointSync
from ragdistill.stages.training_sets import DATA_FILE
from ragdistill.store import ArtifactStore, Manifest

if TYPE_CHECKING:
    from ragdistill.training.lora import TrainResult

STUDENT_OUTPUTS = ("adapter", "loss.csv", "loss.png", "tensorboard", "train.log", "result.json")
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate")
OUTPUTS = (
    "adapter/**",
    "loss.csv",
    "loss.png",
    "tensorboard/**",
    "train.log",
    "result.json",
    "spec.json",
    "checkpoints/**",
    "train.machine-*.log",
    "spec.machine-*.json",
)
"""Everything training writes in a student's folder (the launcher's spec and log, the trainer's
checkpoints, the other machines' spec and log where machines share the folder)."""
MACHINE_0_WAIT_S = 600.0
"""How long another machine waits, after its share of the training ended, for machine 0's manifest."""
MANIFEST_POLL_S = 2.0


def training_identity(ctx: RunContext, settings: TrainingSettings, inputs: Inputs) -> StageIdentity:
    return stage_identity(settings, stage_inputs(settings, inputs), libraries=LIBRARIES)


def run_training(ctx: RunContext, settings: TrainingSettings, inputs: Inputs) -> Manifest:
    """Train the ``settings.name`` student on ``datasets/<name>``; see the module docstring."""
    from ragdistill.training.accelerate_configs import read_accelerate_config
    from ragdistill.training.launch_plan import this_machine_rank

    store = ArtifactStore(ctx.run_root)
    identity = training_identity(ctx, settings, inputs)
    setup = read_accelerate_config(settings.training.accelerate_config)
    machine_rank = this_machine_rank(setup, ctx.training_launch)
    if machine_rank > 0:
        return _train_on_another_machine(ctx, settings, inputs, store, identity, machine_rank)
    name, folder = settings.name, settings.stage_dir()
    with StageRun(store, folder, identity, ctx, label=f"{ctx.run_name}: {folder}", outputs=OUTPUTS) as run:
        if run.current is not None:
            return run.current
        dataset = verified_input(store, dataset_dir(name), inputs[dataset_dir(name)])
        _check_tokenizer(store, name, dataset, settings.base_model.name)
        if dataset.counts.get("examples", 0) == 0:
            reason = f"the {name} training set is empty: {dataset.extra.get('card', {}).get('empty_because')}"
            run.clear()
            return run.finish([], counts={"trained": 0}, extra={"skipped": reason})
        base = agent_model(ctx, settings.base_model, settings.warm_start, inputs)
        started = time.perf_counter()
        result, _ = train_adapter(
            store,
            folder,
            f"{dataset_dir(name)}/{DATA_FILE}",
            settings.training,
            base.model,
            seed=settings.seed,
            work_key=identity.key,
            launch=ctx.training_launch,
        )
        files = [path for path in run.output_files() if path.split("/", 1)[0] in STUDENT_OUTPUTS]
        return run.finish(
            files,
            counts={"trained": 1, "examples": result.examples, "steps": result.steps},
            extra={"result": result.to_dict(), **({"base": base.lineage} if base.lineage else {})},
            run_stats={"seconds": round(time.perf_counter() - started, 2)},
        )


def train_adapter(
    store: ArtifactStore,
    folder: str,
    dataset: str,
    training: TrainingRecipe,
    base_model: ModelSpec,
    *,
    seed: int,
    work_key: str,
    launch: TrainingLaunch | None = None,
) -> tuple[TrainResult, Path]:
    """LoRA on the parquet file ``dataset`` (a path under the run root) from ``base_model``, through
    ``accelerate launch``, into ``folder`` (machine 0's share when ``launch`` spans several machines);
    returns the result and the local folder the training wrote (``folder`` itself on a local run root; on
    an object store a working folder of the cache named by ``work_key``, whose checkpoints are copied to
    the store while it trains and whose outputs are uploaded when it ends)."""
    work = working_folder(store, folder, work_key)
    sync = None if store.is_local else CheckpointSync(store, folder, work / CHECKPOINTS_DIR)
    if sync is not None and training.resume:
        sync.pull()
    with sync.pushing() if sync is not None else nullcontext():
        result = _launch(store, dataset, training, base_model, work, seed=seed, launch=launch)
    if result is None:
        raise StageError(f"machine 0 of the training of {folder} ended without its result")
    if sync is not None:
        upload_outputs(store, folder, work)
        sync.clear()
    shutil.rmtree(work / CHECKPOINTS_DIR, ignore_errors=True)  # only a killed training needs them
    return result, work


def working_folder(store: ArtifactStore, folder: str, work_key: str) -> Path:
    """The stage folder itself on a local run root, else a folder of the local cache named by the
    identity (the same on every machine, so a copied checkpoint is where the training looks)."""
    from ragdistill.paths import default_cache_root

    if store.is_local:
        return Path(store.local_path(folder))
    return default_cache_root() / "training" / work_key[:24]


def _launch(
    store: ArtifactStore,
    dataset: str,
    training: TrainingRecipe,
    base_model: ModelSpec,
    work: Path,
    *,
    seed: int,
    launch: TrainingLaunch | None,
) -> TrainResult | None:
    """This machine's share of the training, in ``work``: the result on machine 0, None elsewhere."""
    from ragdistill.inference.shared import close_shared_backends
    from ragdistill.models import resolve_model
    from ragdistill.training.launch import launch_training
    from ragdistill.training.spec import TrainSpec

    close_shared_backends()  # engines the pipeline loaded hold memory (on GPUs, all of it) training needs
    data = Path(store.local_path(dataset)) if store.is_local else _download(store, dataset, work)
    spec = TrainSpec.from_config(
        training,
        dataset=str(data),
        base_model=resolve_model(base_model),
        output_dir=str(work),
        seed=seed,
        trust_remote_code=base_model.trust_remote_code,
    )
    return launch_training(spec, training.accelerate_config, launch=launch)


def _train_on_another_machine(
    ctx: RunContext,
    settings: TrainingSettings,
    inputs: Inputs,
    store: ArtifactStore,
    identity: StageIdentity,
    machine_rank: int,
) -> Manifest:
    """Machine ``machine_rank`` (not 0) of a training on several machines: its share of the training
    processes, then the manifest machine 0 writes (see the module docstring)."""
    name, folder = settings.name, settings.stage_dir()
    current = current_manifest(store, folder, identity)
    if current is not None:
        return current
    dataset = verified_input(store, dataset_dir(name), inputs[dataset_dir(name)])
    _check_tokenizer(store, name, dataset, settings.base_model.name)
    if dataset.counts.get("examples", 0) > 0:
        base = agent_model(ctx, settings.base_model, settings.warm_start, inputs)
        work = working_folder(store, folder, identity.key)
        if not store.is_local and settings.training.resume:
            CheckpointSync(store, folder, work / CHECKPOINTS_DIR).pull()
        data = f"{dataset_dir(name)}/{DATA_FILE}"
        _launch(
            store, data, settings.training, base.model, work, seed=settings.seed, launch=ctx.training_launch
        )
    return _manifest_of_machine_0(store, folder, identity, machine_rank)


def _manifest_of_machine_0(
    store: ArtifactStore, folder: str, identity: StageIdentity, machine_rank: int
) -> Manifest:
    deadline = time.monotonic() + MACHINE_0_WAIT_S
    while (manifest := current_manifest(store, folder, identity)) is None:
        if time.monotonic() > deadline:
            raise StageError(
                f"machine {machine_rank} finished its share of the training of {folder}, but machine 0 wrote "
                f"no manifest in {store.uri(folder)} within {MACHINE_0_WAIT_S:.0f} s: see machine 0's stage "
                "output and its train.log, then run the stage again on every machine"
            )
        time.sleep(MANIFEST_POLL_S)
    return manifest


def _check_tokenizer(store: ArtifactStore, name: str, dataset: Manifest, model: str) -> None:
    """A training set holds token ids of one tokenizer: one built for another model (by another config)
    would train this model on the wrong tokens."""
    built_for = dataset.extra.get("card", {}).get("tokenizer")
    if built_for != model:
        raise StageError(
            f"{store.uri(dataset_dir(name) + '/manifest.json')} was built with the tokenizer of "
            f"{built_for!r} (another config's), but models.agent.model is {model!r}: "
            f"{rerun_remedy(dataset_dir(name))} to rebuild it for this model"
        )


def _download(store: ArtifactStore, dataset: str, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    target = work / DATA_FILE
    target.write_bytes(store.read_bytes(dataset))
    return target


def upload_outputs(store: ArtifactStore, folder: str, work: Path) -> None:
    """Copy what a training wrote in the local ``work`` folder (its outputs, not its checkpoints) to
    ``folder`` under the run root."""
    for path in sorted(work.rglob("*")):
        relative = path.relative_to(work).as_posix()
        if path.is_file() and relative.split("/", 1)[0] in STUDENT_OUTPUTS:
            store.write_bytes(f"{folder}/{relative}", path.read_bytes())
