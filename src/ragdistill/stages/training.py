"""Stage D (train): a LoRA student per training set, through ``accelerate launch``.

``adapters/<name>/`` holds ``adapter/`` (safetensors + ``adapter_config.json``), ``loss.csv``,
``loss.png``, ``tensorboard/``, ``train.log`` and ``result.json``; ``checkpoints/`` lets a killed
training resume from its last checkpoint (the same identity keeps the folder: ``stages.lifecycle``).
A student whose dataset is empty is not trained: the stage finishes with the reason in its manifest
(``extra.skipped``), which evaluation and the report show.

Identity (:class:`~ragdistill.config.stages.TrainingSettings`, whole): every ``training.*`` setting, the
base model, the seed and whether the base is the warm start's checkpoint; plus the dataset's content
digest (and the warm start's, when on), the library versions of torch / transformers / TRL / peft /
accelerate, and the code. With the warm start on, the student is LoRA on its merged checkpoint
(``stages.agent_model``), and the manifest names that base (``extra.base``) for the registry's lineage.

Object-store run roots: training writes to a local working folder under the cache and uploads the
results when it ends (a resume after a crash then starts from that local folder when it is there).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ragdistill.config import ModelSpec, TrainingConfig
from ragdistill.config.stages import Inputs, RunContext, TrainingSettings
from ragdistill.layout import dataset_dir
from ragdistill.stages.datasets import DATA_FILE
from ragdistill.stages.lifecycle import (
    StageError,
    StageIdentity,
    StageRun,
    rerun_remedy,
    stage_identity,
    stage_inputs,
    verified_input,
)
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
)
"""Everything training writes in a student's folder (the launcher's spec and log, the trainer's checkpoints)."""


def training_identity(ctx: RunContext, settings: TrainingSettings, inputs: Inputs) -> StageIdentity:
    return stage_identity(settings, stage_inputs(settings, inputs), libraries=LIBRARIES)


def run_training(ctx: RunContext, settings: TrainingSettings, inputs: Inputs) -> Manifest:
    """Train the ``settings.name`` student on ``datasets/<name>``; see the module docstring."""
    from ragdistill.inference.shared import close_shared_backends
    from ragdistill.stages.agent_model import agent_model

    store = ArtifactStore(ctx.run_root)
    identity = training_identity(ctx, settings, inputs)
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
        # Engines the pipeline loaded hold memory (all of a GPU's, on GPUs) that training needs.
        close_shared_backends()
        started = time.perf_counter()
        result, _ = train_adapter(
            store,
            folder,
            f"{dataset_dir(name)}/{DATA_FILE}",
            settings.training,
            base.model,
            seed=settings.seed,
            work_key=identity.key,
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
    training: TrainingConfig,
    base_model: ModelSpec,
    *,
    seed: int,
    work_key: str,
) -> tuple[TrainResult, Path]:
    """LoRA on the parquet file ``dataset`` (a path under the run root) from ``base_model``, through
    ``accelerate launch``, into ``folder``; returns the result and the local folder the training wrote
    (``folder`` itself on a local run root; on an object store a working folder under the cache, named by
    ``work_key``, whose outputs are uploaded). A killed training resumes from its checkpoints there."""
    from ragdistill.models import resolve_model
    from ragdistill.paths import default_cache_root
    from ragdistill.training.launch import launch_training
    from ragdistill.training.spec import TrainSpec

    work = (
        Path(store.local_path(folder))
        if store.is_local
        else default_cache_root() / "training" / work_key[:24]
    )
    data = Path(store.local_path(dataset)) if store.is_local else _download(store, dataset, work)
    spec = TrainSpec.from_config(
        training,
        dataset=str(data),
        base_model=resolve_model(base_model),
        output_dir=str(work),
        seed=seed,
        trust_remote_code=base_model.trust_remote_code,
    )
    result = launch_training(spec, training.accelerate_config)
    if not store.is_local:
        upload_outputs(store, folder, work)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)  # only a killed training needs them
    return result, work


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
