"""Stage E (report): ``reports/report.md``, ``reports/accuracy_tokens.png``, ``reports/metrics.json`` and
``reports/metrics.parquet``.

It reads only finished stages: the evaluation rollouts of every method under every evaluation seed
(exactly the shards their manifests list), the dataset cards and the training results, the warm start's
manifest (the report names the base it made), plus ``run.json`` (the run's settings, written by the
pipeline and the CLI). Identity (:class:`~ragdistill.config.stages.ReportSettings`, whole: the run's
config, name, methods and seeds), plus the content digests of the finished folders it reads, and the code.

Each run root gives one metrics frame (:func:`run_metrics_frame`, ``evaluation.frame``); ``ragdistill
report RUN_ROOT [RUN_ROOT …]`` concatenates several (one agent format each), which gives the paper's
method × agent table. The tables, ``metrics.json`` and ``metrics.parquet`` (the frame itself, for a
notebook: ``ragdistill.evaluation.read_metrics``) are all built from that frame.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import EvaluationSeeds, Inputs, ReportSettings
from ragdistill.episodes import EpisodeRecord
from ragdistill.layout import (
    ADAPTERS_DIR,
    PROMOTION_DIR,
    REPORTS_DIR,
    RUN_FILE,
    WARM_START_DIR,
    WARM_START_MODEL,
    rollout_prefix,
)
from ragdistill.stages.lifecycle import StageError, StageIdentity, StageRun, stage_identity, stage_inputs
from ragdistill.store import (
    ArtifactError,
    ArtifactStore,
    Manifest,
    read_manifest,
    read_records,
    verify_manifest,
)

if TYPE_CHECKING:
    import pandas as pd

REPORT_FILE = "report.md"
FIGURE_FILE = "accuracy_tokens.png"
METRICS_FILE = "metrics.json"
METRICS_TABLE_FILE = "metrics.parquet"
OUTPUTS = (REPORT_FILE, FIGURE_FILE, METRICS_FILE, METRICS_TABLE_FILE)


def write_run_file(store: ArtifactStore, config_name: str, config: dict[str, Any]) -> None:
    """What a report needs to know about the run: its settings (``config``, the experiment config as
    JSON) and the name of the config file it came from."""
    store.write_json(RUN_FILE, {"config_name": config_name, "config": config})


def report_identity(ctx: RunContext, settings: ReportSettings, inputs: Inputs) -> StageIdentity:
    return stage_identity(settings, stage_inputs(settings, inputs))


def run_report(ctx: RunContext, settings: ReportSettings, inputs: Inputs) -> Manifest:
    """The report of one run root (``inputs``: the finished folders of ``settings.input_dirs()``)."""
    store = ArtifactStore(ctx.run_root)
    if not store.exists(RUN_FILE):
        raise StageError(
            f"{store.uri(RUN_FILE)} is missing: the report reads the run's settings from it, which the "
            "pipeline and `ragdistill report` write first"
        )
    identity = report_identity(ctx, settings, inputs)
    with StageRun(store, REPORTS_DIR, identity, ctx, label=f"{ctx.run_name}: report", outputs=OUTPUTS) as run:
        if run.current is not None:
            return run.current
        run.clear()
        summary = render_run_reports([store], store.child(REPORTS_DIR))
        return run.finish(
            counts={
                "methods": summary["methods"],
                "evaluations": summary["evaluations"],
                "figure": int(summary["figure"]),
            }
        )


def render_run_reports(stores: list[ArtifactStore], out: ArtifactStore) -> dict[str, Any]:
    """Render the report over one or more run roots into ``out`` (report, figure, metrics): each root's
    metrics frame, concatenated."""
    from ragdistill.environments.registry import get_profile
    from ragdistill.evaluation import (
        ReportInputs,
        TrainingSummary,
        accuracy_tokens_figure,
        combined,
        figure_points,
        metrics_document,
        parquet_bytes,
        render_report,
    )
    from ragdistill.evaluation.frame import whole_evaluations

    datasets: dict[str, dict[str, Any]] = {}
    training: list[TrainingSummary] = []
    notes: list[str] = []
    runs = [_run_info(store) for store in stores]
    first = runs[0]["config"]
    frames = []
    for store, run in zip(stores, runs, strict=True):
        config = run["config"]
        suffix = f" ({config['agent']['format']})" if len(stores) > 1 else ""
        frames.append(run_metrics_frame(store, run))
        for name in ("sft", "distill"):
            card = _card(store, name)
            if card is not None:
                datasets[f"{name}{suffix}"] = card
            training.append(_training_summary(store, f"{name}{suffix}", name))
        notes += _run_notes(store, config, suffix)
    frame = combined(frames)
    figure_path: str | None = None
    points = figure_points(frame)
    if points:
        with tempfile.TemporaryDirectory() as scratch:
            local = Path(scratch) / FIGURE_FILE
            accuracy_tokens_figure(
                points, local, title=f"{first['run']['name']}: success vs tokens per episode"
            )
            out.write_bytes(FIGURE_FILE, local.read_bytes())
        figure_path = FIGURE_FILE
    whole = whole_evaluations(frame)
    evaluated = whole[whole["not_run_reason"].isna()]
    inputs = ReportInputs(
        run_name=", ".join(run["config"]["run"]["name"] for run in runs),
        config_name=runs[0]["config_name"] if len(runs) == 1 else "",
        env=first["env"]["name"],
        headline=get_profile(first["env"]["name"]).headline,
        eval_split=first["evaluation"]["split"],
        eval_task_count=int(evaluated["episodes"].max()) if len(evaluated) else 0,
        metrics=frame,
        model=_model_label(first),
        datasets=datasets,
        training=training,
        notes=notes,
        figure_path=figure_path,
    )
    out.write_text(REPORT_FILE, render_report(inputs))
    out.write_json(METRICS_FILE, metrics_document(frame))
    out.write_bytes(METRICS_TABLE_FILE, parquet_bytes(frame))
    return {
        "methods": len(evaluated[["run_name", "agent", "method"]].drop_duplicates()),
        "evaluations": len(evaluated),
        "figure": figure_path is not None,
    }


def run_metrics_frame(store: ArtifactStore, run: dict[str, Any] | None = None) -> pd.DataFrame:
    """The metrics frame of one run root (``evaluation.frame``): every method of ``evaluation.methods``
    under every evaluation seed, from its finished rollout folder, or with the reason it has none.
    ``run``: the run root's ``run.json`` (read when not given)."""
    from ragdistill.environments.registry import get_profile
    from ragdistill.evaluation import MethodResult, RunColumns, compute_metrics, metrics_frame

    run = run if run is not None else _run_info(store)
    config = run["config"]
    agent = config["agent"]["format"]
    invalid = get_profile(config["env"]["name"]).invalid_observation
    seeds = EvaluationSeeds.of_run_config(config)
    results: list[MethodResult] = []
    for method in config["evaluation"]["methods"]:
        for seed, stage in seeds.stages(method).items():
            folder = rollout_prefix(stage)
            try:
                manifest = verify_manifest(store, folder)
            except ArtifactError:
                reason = _not_run_reason(store, method, folder)
                results.append(MethodResult(method, agent, not_run_reason=reason, seed=seed))
                continue
            records = [EpisodeRecord.from_dict(item) for item in read_records(store, folder, manifest)]
            metrics = compute_metrics(records, invalid_observation=invalid)
            results.append(MethodResult(method, agent, metrics, seed=seed))
    columns = RunColumns(
        run_name=config["run"]["name"],
        config_name=run.get("config_name", ""),
        env=config["env"]["name"],
        eval_split=config["evaluation"]["split"],
    )
    return metrics_frame(results, columns)


def _run_notes(store: ArtifactStore, config: dict[str, Any], suffix: str) -> list[str]:
    """What the report's notes say about one run root's settings."""
    notes = []
    base = _warm_start_note(store, config)
    if base:
        notes.append(f"Base model{suffix}: {base}")
    teacher = config["distill"]["teacher"]
    if teacher != "rag":
        notes.append(
            f"Distillation teacher{suffix}: {teacher} — the environment's demonstrations of training tasks, "
            "rendered in the agent's format with the hints the RAG teacher retrieves (distill.teacher); the "
            "paper distils the RAG teacher's own successes."
        )
    group = config["retrieval"].get("group", "task")
    if group != "task":
        notes.append(
            f"Hint groups{suffix}: the teacher's category was predicted from each instruction by the {group} "
            "classifier (retrieval.group); its model tokens, if any, count as retrieval tokens."
        )
    if config["distill"]["min_score"] is not None:
        notes.append(
            f"Training episodes{suffix} include unsuccessful ones scoring ≥ {config['distill']['min_score']}."
        )
    seeds = EvaluationSeeds.of_run_config(config)
    if len(seeds.seeds) > 1:
        greedy = config["models"]["agent"]["sampling"]["temperature"] == 0
        notes.append(
            f"Seeds{suffix}: every method was evaluated with the agent sampling under seeds "
            f"{', '.join(map(str, seeds.seeds))} (evaluation.seeds); cells show the mean ± sd across them and "
            "the promotion gate compares mean headlines."
            + (
                " Decoding is greedy (temperature 0), so the seed changes no sampled token: the runs are "
                "reruns, and their spread is the engine's run-to-run nondeterminism only (none on a "
                "deterministic engine)."
                if greedy
                else ""
            )
        )
    examples = (
        "their few-shot examples" if config["evaluation"]["student_fewshot"] else "no few-shot examples"
    )
    promotion = _promotion_note(store)
    if promotion:
        notes.append(f"Promotion{suffix}: {promotion}")
    notes.append(
        f"Students{suffix} ran with {config['evaluation']['student_weights']} weights, no retrieval and {examples}."
    )
    return notes


def _run_info(store: ArtifactStore) -> dict[str, Any]:
    if not store.exists(RUN_FILE):
        raise ArtifactError(
            f"{store.uri(RUN_FILE)} is missing: that folder is not a ragdistill run root (run the pipeline first)"
        )
    return store.read_json(RUN_FILE)


def _model_label(config: dict[str, Any]) -> str:
    """The agent's model as the report names it: the configured one, "+ warm start" when it is on."""
    name = config["models"]["agent"]["model"]["name"]
    return f"{name} + warm start" if config.get("warm_start", {}).get("enabled") else name


def _warm_start_note(store: ArtifactStore, config: dict[str, Any]) -> str | None:
    """What every method's base is when the warm start is on: "base = <model> + warm start on N expert
    games", with how it was trained (``stages.warm_start``)."""
    if not config.get("warm_start", {}).get("enabled"):
        return None
    try:
        manifest = read_manifest(store, WARM_START_DIR)
    except ArtifactError:
        return f"the warm start is on, but {store.uri(WARM_START_DIR)} has no finished manifest."
    tasks = manifest.extra.get("tasks", {})
    result = manifest.extra.get("result", {})
    losses = " → ".join(
        f"{value:.3f}" for value in (result.get("first_loss"), result.get("last_loss")) if value is not None
    )
    return (
        f"base = {manifest.extra.get('description')} (tasks {tasks.get('start')}–{(tasks.get('end') or 0) - 1} "
        f"of split {tasks.get('split')!r}, none of them a rollout, collect or evaluation task; LoRA for "
        f"{result.get('epochs')} epochs, {result.get('steps')} steps, loss {losses or 'not logged'}, merged "
        f"into {WARM_START_DIR}/{WARM_START_MODEL}). Every method plays on it; the students are LoRA on top "
        "of it."
    )


def _not_run_reason(store: ArtifactStore, method: str, folder: str) -> str:
    skipped = store.uri(folder)
    if method in ("sft", "distill"):
        try:
            reason = read_manifest(store, f"{ADAPTERS_DIR}/{method}").extra.get("skipped")
        except ArtifactError:
            reason = None
        if reason:
            return reason
    return f"not evaluated ({skipped} has no finished manifest)"


def _promotion_note(store: ArtifactStore) -> str | None:
    """The promotion gate's decision in one line (``stages.promotion``), if the stage ran."""
    try:
        decision = read_manifest(store, PROMOTION_DIR).extra.get("decision")
    except ArtifactError:
        return None
    if not decision:
        return None
    version = decision.get("version")
    if decision.get("promoted"):
        return f"{version} promoted to current in the adapter registry: {decision['reason']}."
    subject = f"{version} not promoted" if version else "nothing promoted"
    return f"{subject}: {decision['reason']}."


def _card(store: ArtifactStore, name: str) -> dict[str, Any] | None:
    try:
        card = read_manifest(store, f"datasets/{name}").extra.get("card")
    except ArtifactError:
        return None
    if not card:
        return None
    keys = (
        "examples",
        "empty_because",
        "episodes_read",
        "examples_per_source",
        "examples_per_task_type",
        "skipped",
    )
    return {key: card[key] for key in keys if card.get(key) not in (None, {}, [])}


def _training_summary(store: ArtifactStore, label: str, name: str) -> Any:
    from ragdistill.evaluation import TrainingSummary

    try:
        manifest = read_manifest(store, f"{ADAPTERS_DIR}/{name}")
    except ArtifactError:
        return TrainingSummary(label, skipped_reason="not trained")
    if manifest.extra.get("skipped"):
        return TrainingSummary(label, skipped_reason=manifest.extra["skipped"])
    result = manifest.extra.get("result", {})
    return TrainingSummary(
        label,
        examples=result.get("examples"),
        steps=result.get("steps"),
        epochs=result.get("epochs"),
        first_loss=result.get("first_loss"),
        final_loss=result.get("last_loss"),
        seconds=result.get("seconds"),
    )
