"""The loop's side-by-side table: the base agent, the pipeline's students and every retrain generation's
students on the same pinned evaluation tasks, read from their stored evaluations.

Generations count students, as the loop's users do: *generation 1* is the pipeline's students (the run
root's ``adapters/`` and ``rollouts/eval-*``); *generation k + 1* is what retrain ``k`` trained
(``generations/<k>/``, the watermark's generation ``k``: ``ragdistill loop status`` and the registry's
lineage number retrains). Only retrains that finished (advanced the watermark) are shown. Each row has
the evaluation's figures (the mean over the evaluation seeds that recorded episodes) or the reason it has
none, and the size of the training set the student learnt from; the gate's decision of each generation
(its ``promotion`` stage) follows the table, then the registry's champion.

Read from storage only, like the report (``stages.report.run_metrics_frame`` gives each root's metrics),
so ``ragdistill loop run`` can print it, store it as ``loop/generations.md`` and show it as a Prefect
artifact, and a test can build it from folders written as the stages leave them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ragdistill.adapter_registry import AdapterRegistry
from ragdistill.environments.registry import get_profile
from ragdistill.evaluation.frame import plain, whole_evaluations, with_episodes
from ragdistill.evaluation.paper_results import method_label
from ragdistill.evaluation.tables import MISSING, format_tokens, markdown_table, number
from ragdistill.layout import PROMOTION_DIR, RUN_FILE, STUDENTS, dataset_dir
from ragdistill.stages.promotion import DECISION_FILE
from ragdistill.stages.report import run_metrics_frame
from ragdistill.stages.retrain import GENERATIONS_DIR, read_watermark
from ragdistill.store import ArtifactError, ArtifactStore, read_manifest

LOOP_DIR = "loop"
GENERATIONS_TABLE_FILE = f"{LOOP_DIR}/generations.md"
FIGURES = ("success_percent", "score_percent", "invalid_action_percent", "total_tokens_per_episode")


@dataclass(frozen=True)
class GenerationRow:
    """One evaluated agent: the base agent (``generation`` None) or a student of a generation."""

    method: str
    generation: int | None
    folder: str
    """The generation's root relative to the run root ("" for the run root itself)."""
    figures: dict[str, float | None] | None
    """:data:`FIGURES` and ``episodes``, or None when it has no evaluated episodes (``reason`` says why)."""
    reason: str | None
    training_examples: int | None

    @property
    def label(self) -> str:
        if self.generation is None:
            return "Base"
        return f"Generation {self.generation} · {method_label(self.method)}"

    @property
    def trained_on(self) -> str:
        if self.generation is None:
            return MISSING
        where = "the pipeline" if self.generation == 1 else f"retrain {self.generation - 1}"
        examples = MISSING if self.training_examples is None else str(self.training_examples)
        return f"{where}: {examples} examples"


@dataclass(frozen=True)
class GateDecision:
    """What the promotion gate decided on one generation's candidate (its ``promotion`` stage)."""

    generation: int
    candidate: str | None
    version: str | None
    promoted: bool
    reason: str

    def line(self) -> str:
        made = "the pipeline" if self.generation == 1 else f"retrain {self.generation - 1}"
        if self.promoted:
            verdict = f"{self.version} promoted"
        else:
            verdict = f"{self.version} not promoted" if self.version else "nothing promoted"
        return f"Generation {self.generation} ({made}, candidate {self.candidate}): {verdict}: {self.reason}"


@dataclass(frozen=True)
class GenerationsTable:
    run_root: str
    env: str
    headline: str
    """The environment's headline figure: ``success``, or ``score`` (WebShop), which adds a column."""
    eval_split: str
    rows: list[GenerationRow]
    gates: list[GateDecision]
    champion: str | None

    @property
    def generations(self) -> int:
        """Student generations shown (1: only the pipeline's)."""
        return max((row.generation or 0 for row in self.rows), default=0)

    def markdown(self) -> str:
        header = ["agent", "trained on", "success %"]
        header += ["score %"] if self.headline == "score" else []
        header += ["invalid actions % (per action call)", "tokens / episode", "episodes"]
        episodes = max((int(row.figures["episodes"] or 0) for row in self.rows if row.figures), default=0)
        lines = [
            f"## The loop's generations on `{self.run_root}`",
            "",
            f"{self.env}, the same {episodes} pinned `{self.eval_split}` tasks for every row. Generation 1 is "
            "the pipeline's students, generation k + 1 the students of retrain k (`generations/<k>/`).",
            "",
            *markdown_table(header, (self._cells(row) for row in self.rows)),
            "",
        ]
        reasons = [f"- {row.label}: {row.reason}" for row in self.rows if row.figures is None]
        if reasons:
            lines += ["Rows without figures:", *reasons, ""]
        lines += ["Gate decisions:", *(f"- {gate.line()}" for gate in self.gates)] if self.gates else []
        lines += ["", f"Champion now: {self.champion or 'none (collect plays the base model)'}", ""]
        return "\n".join(lines)

    def _cells(self, row: GenerationRow) -> list[str]:
        figures = row.figures or {}
        cells = [row.label, row.trained_on, number(figures.get("success_percent"), 1)]
        if self.headline == "score":
            cells.append(number(figures.get("score_percent"), 1))
        cells += [
            number(figures.get("invalid_action_percent"), 1),
            format_tokens(figures.get("total_tokens_per_episode")),
            MISSING if row.figures is None else str(int(figures.get("episodes") or 0)),
        ]
        return cells

    def summary(self) -> dict[str, Any]:
        """The table as JSON: its rows (label, generation, method, figures, reason), the gate decisions
        and the champion."""
        return {
            "run_root": self.run_root,
            "rows": [{"label": row.label, **asdict(row)} for row in self.rows],
            "gates": [asdict(gate) for gate in self.gates],
            "champion": self.champion,
        }


def generations_table(store: ArtifactStore) -> GenerationsTable:
    """The table of the run root ``store`` (see the module docstring); an :class:`ArtifactError` naming
    the file when no pipeline ran there."""
    if not store.exists(RUN_FILE):
        raise ArtifactError(
            f"{store.uri(RUN_FILE)} is missing: no pipeline ran on {store.root_url}, so it has no evaluations "
            "to compare (run `ragdistill pipeline -c CONFIG` first)"
        )
    run = store.read_json(RUN_FILE)
    config = run["config"]
    students = [method for method in STUDENTS if method in config["evaluation"]["methods"]]
    roots: list[tuple[int, str]] = [(1, "")]
    roots += [(k + 1, f"{GENERATIONS_DIR}/{k}") for k in range(1, read_watermark(store).generation + 1)]
    rows: list[GenerationRow] = []
    gates: list[GateDecision] = []
    for generation, folder in roots:
        root = store.child(folder) if folder else store
        evaluations = _evaluations(root, run)
        if generation == 1:
            rows.append(_row("base", None, folder, evaluations, None))
        for method in students:
            rows.append(_row(method, generation, folder, evaluations, _examples(root, method)))
        gate = _gate(root, generation)
        if gate is not None:
            gates.append(gate)
    pointer = AdapterRegistry(store).pointer()
    return GenerationsTable(
        run_root=store.root_url,
        env=config["env"]["name"],
        headline=get_profile(config["env"]["name"]).headline,
        eval_split=config["evaluation"]["split"],
        rows=rows,
        gates=gates,
        champion=pointer.version if pointer is not None else None,
    )


def _evaluations(root: ArtifactStore, run: dict[str, Any]) -> dict[str, tuple[dict[str, Any] | None, str]]:
    """Per method: the mean of :data:`FIGURES` over the seeds with episodes (and ``episodes``), or None
    and the reason it has none."""
    whole = whole_evaluations(run_metrics_frame(root, run))
    found: dict[str, tuple[dict[str, Any] | None, str]] = {}
    for method, rows in whole.groupby("method", sort=False):
        ran = with_episodes(rows)
        if ran.empty:
            reasons = rows["not_run_reason"].dropna()
            reason = plain(reasons.iloc[0]) if len(reasons) else "evaluated, but no episode was recorded"
            found[str(method)] = (None, str(reason))
            continue
        figures = {name: plain(ran[name].mean()) for name in FIGURES}
        figures["episodes"] = plain(ran["episodes"].max())
        found[str(method)] = (figures, "")
    return found


def _row(
    method: str,
    generation: int | None,
    folder: str,
    evaluations: dict[str, tuple[dict[str, Any] | None, str]],
    examples: int | None,
) -> GenerationRow:
    figures, reason = evaluations.get(method, (None, "not in evaluation.methods"))
    return GenerationRow(method, generation, folder, figures, reason or None, examples)


def _examples(root: ArtifactStore, method: str) -> int | None:
    try:
        return int(read_manifest(root, dataset_dir(method)).counts.get("examples", 0))
    except ArtifactError:
        return None


def _gate(root: ArtifactStore, generation: int) -> GateDecision | None:
    try:
        manifest = read_manifest(root, PROMOTION_DIR)
    except ArtifactError:
        return None
    decision = manifest.extra.get("decision") or {}
    recorded = f"{PROMOTION_DIR}/{DECISION_FILE}"
    candidate = root.read_json(recorded).get("candidate") if root.exists(recorded) else None
    return GateDecision(
        generation=generation,
        candidate=candidate,
        version=decision.get("version"),
        promoted=bool(decision.get("promoted")),
        reason=str(decision.get("reason", "no reason recorded")),
    )
