"""What one LoRA training run needs, as one JSON-able value: ``training.launch`` writes it to a file
for the process that ``accelerate launch`` starts, which reads it back and calls ``training.lora``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragdistill.config import TrainingConfig, TrainingRecipe


@dataclass(frozen=True)
class TrainSpec:
    """Everything one training run needs; JSON-able, so a launched process can read it."""

    dataset: str
    """A parquet file, or a folder of them, with the columns ``training.lora``'s docstring lists."""
    base_model: str
    """A local Hugging Face checkpoint folder (``models.resolve_model``) or a hub id."""
    output_dir: str
    training: TrainingRecipe = field(default_factory=TrainingRecipe)
    """What is trained; a full ``TrainingConfig`` given here keeps only its recipe (``launch`` is where the
    processes run, which the launcher decides)."""
    seed: int = 42
    trust_remote_code: bool = False
    """Whether the base model's own Python code may run (``models.agent.model.trust_remote_code``)."""

    def __post_init__(self) -> None:
        if isinstance(self.training, TrainingConfig):
            object.__setattr__(self, "training", self.training.recipe())

    @classmethod
    def from_config(
        cls,
        training: TrainingRecipe,
        *,
        dataset: str,
        base_model: str,
        output_dir: str,
        seed: int = 42,
        trust_remote_code: bool = False,
    ) -> TrainSpec:
        return cls(str(dataset), str(base_model), str(output_dir), training, seed, trust_remote_code)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "base_model": self.base_model,
            "output_dir": self.output_dir,
            "training": self.training.model_dump(mode="json"),
            "seed": self.seed,
            "trust_remote_code": self.trust_remote_code,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        trust_remote_code = data.get("trust_remote_code") is True
        return cls(
            dataset=data["dataset"],
            base_model=data["base_model"],
            output_dir=data["output_dir"],
            training=TrainingRecipe.model_validate(data.get("training", {})),
            seed=int(data.get("seed", 42)),
            trust_remote_code=trust_remote_code,
        )

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def read(cls, path: Path) -> TrainSpec:
        return cls.from_dict(json.loads(path.read_text()))
