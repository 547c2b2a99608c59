"""The paper's own result tables and method / agent names (specs/paper.md; arXiv 2510.01375) as data, to print beside ours.

ALFWorld rows report success % on valid_unseen (134 games); WebShop rows report score (mean reward × 100)
on the first 100 test goals. Tokens per episode are published for Qwen2.5-14B only. The paper labels its
WebShop action-only agent "ReAct"; here it is the ``act`` row, which is what that agent is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

METHODS: tuple[str, ...] = ("base", "rag", "sft", "distill")
AGENTS: tuple[str, ...] = ("react", "act", "stateact")
METHOD_LABELS: dict[str, str] = {"base": "Base", "rag": "RAG teacher", "sft": "SFT", "distill": "Distilled"}
AGENT_LABELS: dict[str, str] = {"react": "ReAct", "act": "Act", "stateact": "StateAct"}
PaperMetric = Literal["success", "score"]
PAPER_SOURCE = "arXiv 2510.01375"


@dataclass(frozen=True)
class PaperCell:
    value: float
    tokens_per_episode: float | None = None


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's table: a model × environment × agent, one cell per method."""

    model: str
    env: str
    agent: str
    metric: PaperMetric
    cells: dict[str, PaperCell]

    @property
    def metric_label(self) -> str:
        return "success %" if self.metric == "success" else "score"


def _row(
    model: str, env: str, agent: str, values: tuple[float, ...], tokens: tuple[float, ...] | None = None
) -> PaperRow:
    metric: PaperMetric = "success" if env == "alfworld" else "score"
    token_values = tokens or (None,) * len(METHODS)
    cells = {
        method: PaperCell(value, token_count)
        for method, value, token_count in zip(METHODS, values, token_values, strict=True)
    }
    return PaperRow(model=model, env=env, agent=agent, metric=metric, cells=cells)


QWEN_14B = "Qwen2.5-14B-Instruct"
QWEN_7B = "Qwen2.5-7B-Instruct"

PAPER_ROWS: tuple[PaperRow, ...] = (
    _row(QWEN_14B, "alfworld", "react", (77.61, 79.10, 86.57, 92.54), (47_700, 54_800, 55_000, 38_100)),
    _row(QWEN_14B, "alfworld", "stateact", (82.09, 85.07, 84.33, 89.55), (52_500, 53_100, 45_700, 51_500)),
    _row(QWEN_14B, "webshop", "act", (61.51, 66.97, 71.40, 72.32), (5_500, 9_300, 3_600, 3_500)),
    _row(QWEN_14B, "webshop", "stateact", (60.12, 67.18, 72.78, 72.49), (10_500, 12_800, 5_000, 5_000)),
    _row(QWEN_7B, "alfworld", "react", (11.19, 73.13, 11.19, 68.66)),
    _row(QWEN_7B, "alfworld", "stateact", (41.79, 69.40, 75.37, 79.10)),
    _row(QWEN_7B, "webshop", "act", (44.05, 28.80, 44.25, 57.11)),
    _row(QWEN_7B, "webshop", "stateact", (12.18, 8.12, 64.51, 64.97)),
)


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def agent_label(agent: str) -> str:
    return AGENT_LABELS.get(agent, agent)


def in_paper_order(values: Iterable[str], order: Sequence[str]) -> list[str]:
    """Distinct values, the known ones in ``order`` first, any others after them alphabetically."""
    present = list(dict.fromkeys(values))
    return [value for value in order if value in present] + sorted(v for v in present if v not in order)


_CONFIG_NAME = re.compile(r"^paper-(?P<env>[a-z]+)-(?P<agent>[a-z]+)(?:-(?P<size>7b|14b))?$")
_SIZES = {"7b": QWEN_7B, "14b": QWEN_14B}


def paper_rows(env: str, agent: str | None = None) -> list[PaperRow]:
    """The paper's rows for an environment (and agent format), 14B first."""
    return [row for row in PAPER_ROWS if row.env == env and (agent is None or row.agent == agent)]


def paper_rows_for_config(config_name: str) -> list[PaperRow]:
    """Rows for a config named ``paper-<env>-<agent>`` (e.g. ``paper-alfworld-react``: both models' rows,
    14B first) or ``paper-<env>-<agent>-7b`` (that model's row only); [] for any other name, such as a
    demo config, which has no published numbers to compare with."""
    match = _CONFIG_NAME.match(config_name.strip().lower())
    if match is None:
        return []
    rows = paper_rows(match["env"], match["agent"])
    return [row for row in rows if row.model == _SIZES[match["size"]]] if match["size"] else rows
