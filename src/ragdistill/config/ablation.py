"""The retrieval ablation's grid (``ablation.*``) and the settings of its comparison table.

A grid point is one retriever and one k. The config's own setting (``retrieval.retriever``,
``retrieval.k``) is the pipeline itself: its folders are the pipeline's. Every other point runs in a run
root of its own, ``ablation/k<k>-<retriever>/`` under the run root (``stages.ablation``).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from ragdistill.config.experiment import ExperimentConfig
from ragdistill.config.retrieval import AblatedMethod, AblationConfig, Retriever
from ragdistill.config.stage_models import StageName, StageSettings
from ragdistill.layout import ABLATION_DIR, ABLATION_TABLE_DIR, adapter_dir, eval_stage, rollout_prefix


class AblationPoint(BaseModel):
    """One grid point: a retriever and a number of hints per episode, run under ``root`` (a folder under
    the run root; empty for the config's own setting, whose stages are the pipeline's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    retriever: Retriever
    k: int = Field(gt=0)
    root: str = ""

    @property
    def label(self) -> str:
        return f"k{self.k}-{self.retriever}"

    @property
    def is_pipeline(self) -> bool:
        return not self.root

    def folder(self, stage_dir: str) -> str:
        """``stage_dir`` of this point, as a folder under the run root."""
        return f"{self.root}/{stage_dir}" if self.root else stage_dir


def ablation_points(config: ExperimentConfig) -> list[AblationPoint]:
    """The grid ``config.ablation`` asks for, each point once, in the order it names them: with
    ``design: axes`` first every k with the config's retriever, then every retriever with the config's
    k; with ``cross`` every retriever with every k."""
    ablation, own = config.ablation, (config.retrieval.retriever, config.retrieval.k)
    if ablation.design == "cross":
        pairs = [(retriever, k) for retriever in ablation.retrievers for k in ablation.k]
    else:
        pairs = [(own[0], k) for k in ablation.k] + [(retriever, own[1]) for retriever in ablation.retrievers]
    points: list[AblationPoint] = []
    for retriever, k in dict.fromkeys(pairs):
        point = AblationPoint(retriever=retriever, k=k)
        root = "" if (retriever, k) == own else f"{ABLATION_DIR}/{point.label}"
        points.append(point.model_copy(update={"root": root}))
    return points


class AblationTableSettings(StageSettings):
    """The ablation's comparison table: each point's evaluations (and its teacher's training episodes)
    beside the base agent's, in ``ablation/table/``."""

    CODE: ClassVar[str] = "ragdistill.stages.ablation"
    OPTIONAL_INPUTS: ClassVar[bool] = True
    env: str
    eval_split: str
    grid: AblationConfig
    """The grid as configured (the table names it); ``points`` are the points it gives."""
    teacher_stages: list[StageName]
    """The rollout stages each point's distill set learns from (``distill.teacher``)."""
    points: list[AblationPoint]

    @property
    def methods(self) -> list[AblatedMethod]:
        return list(self.grid.methods)

    def stage_dir(self) -> str:
        return ABLATION_TABLE_DIR

    def base_dir(self) -> str:
        return rollout_prefix(eval_stage("base"))

    def point_dirs(self, point: AblationPoint) -> dict[str, str]:
        """The folders the table reads for ``point``, by what they are (``eval-rag``, ``teacher``, …)."""
        folders: dict[str, str] = {}
        if "distill" in self.methods:
            folders.update({stage: point.folder(rollout_prefix(stage)) for stage in self.teacher_stages})
            folders["adapter-distill"] = point.folder(adapter_dir("distill"))
        for method in self.methods:
            folders[eval_stage(method)] = point.folder(rollout_prefix(eval_stage(method)))
        return folders

    def input_dirs(self) -> list[str]:
        return [
            self.base_dir(),
            *(folder for point in self.points for folder in self.point_dirs(point).values()),
        ]
