"""Stage 0 (warm start): behaviour cloning on expert demonstrations, before the base rollout.

A model too small to act in an environment gives self-improvement nothing to start from: its rollout
wins nothing, so there are no successes to train the SFT student on and no teacher successes to distil.
ETO and AgentTuning start such agents with behaviour cloning; so does this stage. ``warm-start/`` holds:

- ``episodes/``: the expert's demonstrations of the warm start's training tasks as episodes of the
  agent's own format, recorded by the expert teacher's code (``rollout.expert_episodes``), and
  ``episodes/tasks.json``. Nothing has been mined yet: with ``warm_start.hint_share`` a share of them
  carries a hint block of the environment's example hints (:class:`ExampleHints`), kept in their
  training prompts, so the warm-started agent has seen a hint block before the RAG teacher's prompt
  carries one;
- ``data.parquet`` + ``README.md``: the training set of the won demonstrations, built by the students'
  training-set code (``stages.training_sets.write_training_set``), without the few-shot examples unless
  ``warm_start.fewshot``;
- ``adapter/``, ``loss.csv``, ``loss.png``, ``tensorboard/``, ``train.log``, ``result.json``: LoRA on the
  agent's configured model by the training stage's code (``stages.training.train_adapter``), for the
  warm start's own epochs and learning rate;
- ``model/``: that model with the adapter merged in (safetensors, config and tokenizer): the agent role's
  weights in every later stage (``stages.rollout.agent_role``).

Resumable like every stage: demonstrations already recorded are kept, a killed training resumes from its
checkpoint, a finished one is not run again, and the manifest is written last. Its tasks must be its
own: before any work the stage lists the tasks of the selections it must not share (the base rollout's,
every collect batch's from the first on, the evaluation's; ``PipelineSettings.warm_start_reserved``) and
stops naming the shared ones. The manifest records its task ids and the selections they were checked
against. An environment that cannot render expert demonstrations stops it before any work too.

Identity (:class:`~ragdistill.config.stages.WarmStartSettings`, whole): the environment and its options,
the task selection, the agent section, the agent's model and completion length, the removed prompt
segments, the training settings (with the warm start's length) and the seed; inputs: the environment's
data version and the task list's digest; plus the versions of torch, transformers, tokenizers, TRL, peft,
accelerate and datasets, and the code.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import Inputs, TaskSelection, WarmStartSettings
from ragdistill.config.warm_start import describe_positions
from ragdistill.environments.base import TaskInfo
from ragdistill.episodes import EpisodeRecord
from ragdistill.identity import digest
from ragdistill.layout import RECORD_LOG_FILES, TASKS_FILE, WARM_START_DIR, WARM_START_MODEL
from ragdistill.rollout.collaborators import ProgressCallback, RetrievedHints
from ragdistill.rollout.expert_episodes import Demonstrations, record_demonstrations
from ragdistill.rollout.plan import environment_digest, select_tasks
from ragdistill.rollout.play import episode_counts
from ragdistill.stages.lifecycle import StageError, StageIdentity, StageRun, stage_identity
from ragdistill.stages.training import OUTPUTS as TRAINING_OUTPUTS
from ragdistill.stages.training import STUDENT_OUTPUTS, train_adapter, upload_outputs
from ragdistill.stages.training_sets import (
    CARD_FILE,
    DATA_FILE,
    ExampleRecipe,
    selection_for,
    write_training_set,
)
from ragdistill.store import ArtifactStore, Manifest, read_records

if TYPE_CHECKING:
    from ragdistill.training.lora import TrainResult

EPISODES_DIR = "episodes"
PARTIAL_MODEL = f".{WARM_START_MODEL}.*.partial"
"""The folder a merge writes before it is renamed to ``model/`` (left behind only by a killed merge)."""
OUTPUTS = (
    *(f"{EPISODES_DIR}/{pattern}" for pattern in (*RECORD_LOG_FILES, TASKS_FILE)),
    DATA_FILE,
    CARD_FILE,
    *TRAINING_OUTPUTS,
    f"{WARM_START_MODEL}/**",
    f"{PARTIAL_MODEL}/**",
)
LIBRARIES = ("torch", "transformers", "tokenizers", "trl", "peft", "accelerate", "datasets")
MAX_LISTED_TASKS = 5


class ExampleHints:
    """A hint source for the warm start's demonstrations: for a ``share`` of the tasks (chosen by a hash of
    the seed and the task id, so a resumed or repeated run picks the same ones), ``count`` of the
    environment's example hints in an order of that hash; no hints for the others."""

    def __init__(self, examples: Sequence[str], share: float, count: int, seed: int) -> None:
        self.examples, self.share, self.count, self.seed = list(examples), share, count, seed

    def hints_for(self, starts: Sequence[tuple[TaskInfo, str]]) -> list[RetrievedHints]:
        return [self._hints(task.task_id) for task, _ in starts]

    def _hints(self, task_id: str) -> RetrievedHints:
        draw = random.Random(f"{self.seed}:{task_id}")
        if draw.random() >= self.share:
            return RetrievedHints([], [])
        chosen = draw.sample(range(len(self.examples)), min(self.count, len(self.examples)))
        return RetrievedHints([self.examples[i] for i in chosen], [f"example-{i}" for i in chosen])


def example_hints(settings: WarmStartSettings) -> ExampleHints | None:
    """The warm start's hint source (None without ``hint_share``)."""
    if not settings.hint_share or not settings.hints_per_episode:
        return None
    from ragdistill.environments.registry import get_profile

    examples = get_profile(settings.env.name).hints.examples
    return ExampleHints(examples, settings.hint_share, settings.hints_per_episode, settings.seed)


def _identity(ctx: RunContext, settings: WarmStartSettings, tasks: list[TaskInfo]) -> StageIdentity:
    facts = {
        "environment": environment_digest(settings.env.name, ctx.data_dir),
        "tasks": digest([task.task_id for task in tasks]),
    }
    return stage_identity(settings, facts, libraries=LIBRARIES)


def warm_start_identity(ctx: RunContext, settings: WarmStartSettings, inputs: Inputs) -> StageIdentity:
    """See the module docstring (the warm start reads no upstream folder: ``inputs`` is unused)."""
    return _identity(ctx, settings, select_tasks(ctx, settings.env, settings.tasks))


def check_demonstrable(env_name: str) -> None:
    """:class:`StageError` when environment ``env_name`` cannot render its expert's demonstrations."""
    from ragdistill.environments.registry import get_profile

    if get_profile(env_name).render_demonstration is None:
        raise StageError(
            f"the warm start learns from expert demonstrations, which environment {env_name!r} cannot "
            "render (its profile has no render_demonstration): set warm_start.enabled: false for it"
        )


def _positions(selection: TaskSelection) -> str:
    return f"{describe_positions(selection.start, selection.limit)} of split {selection.split!r}"


def warm_start_tasks(ctx: RunContext, settings: WarmStartSettings) -> list[TaskInfo]:
    """The tasks the warm start demonstrates; :class:`StageError` when its positions hold none."""
    tasks = select_tasks(ctx, settings.env, settings.tasks)
    if not tasks:
        raise StageError(
            f"the warm start would demonstrate {_positions(settings.tasks)}, which holds no task: lower "
            "warm_start.start, or set warm_start.split to a split with more tasks"
        )
    return tasks


def check_own_tasks(
    ctx: RunContext,
    settings: WarmStartSettings,
    tasks: list[TaskInfo],
    reserved: dict[str, TaskSelection],
) -> None:
    """:class:`StageError` naming the folder and the shared tasks when a task of the warm start is one of
    a ``reserved`` selection's (by the folder that plays it); a task is its split and its id."""
    mine = {(task.split, task.task_id) for task in tasks}
    for folder, selection in reserved.items():
        theirs = {(task.split, task.task_id) for task in select_tasks(ctx, settings.env, selection)}
        shared = sorted(task_id for _, task_id in mine & theirs)
        if not shared:
            continue
        listed = ", ".join(shared[:MAX_LISTED_TASKS]) + (" …" if len(shared) > MAX_LISTED_TASKS else "")
        raise StageError(
            f"the warm start ({_positions(settings.tasks)}) would learn from {len(shared)} task(s) that "
            f"{folder} plays ({_positions(selection)}): {listed}. Its tasks must be ones no later stage "
            "plays: set warm_start.start past them (or leave it empty: it then starts after the base "
            "rollout's tasks), or warm_start.split to another split"
        )


def run_warm_start(
    ctx: RunContext,
    settings: WarmStartSettings,
    inputs: Inputs | None = None,
    *,
    reserved: dict[str, TaskSelection] | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Demonstrate, train and merge into ``warm-start/``; see the module docstring. ``reserved``: the
    selections its tasks must not share (:func:`check_own_tasks`), checked before anything is written."""
    store = ArtifactStore(ctx.run_root)
    check_demonstrable(settings.env.name)
    tasks = warm_start_tasks(ctx, settings)
    if reserved:
        check_own_tasks(ctx, settings, tasks, reserved)
    identity = _identity(ctx, settings, tasks)
    label = f"{ctx.run_name}: {WARM_START_DIR}"
    with StageRun(store, WARM_START_DIR, identity, ctx, label=label, outputs=OUTPUTS) as run:
        if run.current is not None:
            return run.current
        started = time.perf_counter()
        prefix = f"{WARM_START_DIR}/{EPISODES_DIR}"
        how = Demonstrations(settings.env, settings.agent, settings.base_model, settings.max_tokens)
        episode_files, played_now = record_demonstrations(
            ctx, store, prefix, how, tasks, settings.tasks.split, lambda: example_hints(settings), progress
        )
        episodes = [EpisodeRecord.from_dict(item) for item in read_records(store, prefix)]
        counts, card = _training_set(store, settings, identity, episodes)
        result, work = _trained(store, settings, identity)
        model_files = _merge(store, settings, work)
        training_files = [path for path in run.output_files() if path.split("/", 1)[0] in STUDENT_OUTPUTS]
        description = f"{settings.base_model.name} + warm start on {counts['examples']} expert games"
        return run.finish(
            [*episode_files, DATA_FILE, CARD_FILE, *training_files, *model_files],
            counts={
                **episode_counts(episodes),
                "examples": counts["examples"],
                "tokens": counts["tokens"],
                "steps": result.steps,
            },
            extra={
                "description": description,
                "base_model": settings.base_model.name,
                "tasks": {
                    "split": settings.tasks.split,
                    "start": settings.tasks.start,
                    "end": settings.tasks.limit,
                    "task_ids": [task.task_id for task in tasks],
                },
                "disjoint_from": {
                    folder: selection.model_dump(mode="json")
                    for folder, selection in (reserved or {}).items()
                },
                "card": card,
                "result": result.to_dict(),
            },
            run_stats={"played_now": played_now, "seconds": round(time.perf_counter() - started, 2)},
        )


def _training_set(
    store: ArtifactStore, settings: WarmStartSettings, identity: StageIdentity, episodes: list[EpisodeRecord]
) -> tuple[dict[str, int], dict[str, Any]]:
    """The won demonstrations as ``data.parquet`` (the datasets stage's code); none stops the stage."""
    records = {f"{record.source}/{record.run_id}/{record.task_id}": record for record in episodes}
    recipe = ExampleRecipe(
        selection_for(settings.env.name, None, None),
        settings.base_model,
        tuple(settings.removed),
        settings.training.max_seq_len,
        "drop_oldest",
    )
    counts, card = write_training_set(
        store,
        WARM_START_DIR,
        "warm-start",
        records,
        recipe,
        source_runs=identity.inputs,
        identity_key=identity.key,
        empty_because=_empty_reason,
    )
    if not counts["examples"]:
        raise StageError(
            f"the warm start has nothing to learn from: {card['empty_because']} (see "
            f"{store.uri(f'{WARM_START_DIR}/{EPISODES_DIR}')}); demonstrate other tasks (warm_start.start, "
            "warm_start.limit) or turn the warm start off"
        )
    return counts, card


def _empty_reason(skipped: Counter[str], episodes: int) -> str:
    if not episodes:
        return "the expert recorded no demonstrations"
    reasons = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in skipped.most_common())
    return f"none of the expert's {episodes} demonstrations qualified ({reasons})"


def _trained(
    store: ArtifactStore, settings: WarmStartSettings, identity: StageIdentity
) -> tuple[TrainResult, Path]:
    """The finished training of this identity (a resumed run whose training had finished before its
    merge), else a training run now: its result and the local folder it wrote."""
    from ragdistill.inference.shared import close_shared_backends
    from ragdistill.paths import default_cache_root
    from ragdistill.training.launch import RESULT_FILE
    from ragdistill.training.lora import ADAPTER_DIR, TrainResult

    work = (
        Path(store.local_path(WARM_START_DIR))
        if store.is_local
        else default_cache_root() / "training" / identity.key[:24]
    )
    finished = work / RESULT_FILE
    if finished.is_file() and (work / ADAPTER_DIR / "adapter_config.json").is_file():
        if not store.is_local:
            upload_outputs(store, WARM_START_DIR, work)
        return TrainResult.from_dict(json.loads(finished.read_text())), work
    close_shared_backends()  # engines loaded by this process hold memory training needs
    return train_adapter(
        store,
        WARM_START_DIR,
        f"{WARM_START_DIR}/{DATA_FILE}",
        settings.training,
        settings.base_model,
        seed=settings.seed,
        work_key=identity.key,
    )


def _merge(store: ArtifactStore, settings: WarmStartSettings, work: Path) -> list[str]:
    """Merge the adapter into the agent's model as ``model/`` (uploaded from ``work`` on an object
    store); the files written, relative to the run root."""
    from ragdistill.inference.adapters import merge_adapter
    from ragdistill.models import resolve_model
    from ragdistill.training.lora import ADAPTER_DIR

    for leftover in work.glob(PARTIAL_MODEL):
        shutil.rmtree(leftover, ignore_errors=True)
    model = settings.base_model
    target = merge_adapter(
        resolve_model(model),
        work / ADAPTER_DIR,
        work / WARM_START_MODEL,
        model.dtype,
        trust_remote_code=model.trust_remote_code,
    )
    files = []
    for path in sorted(target.rglob("*")):
        if path.is_file():
            relative = f"{WARM_START_DIR}/{WARM_START_MODEL}/{path.relative_to(target).as_posix()}"
            if not store.is_local:
                store.write_bytes(relative, path.read_bytes())
            files.append(relative)
    return files
