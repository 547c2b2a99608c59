"""`make demo` then `make loop` at test size, with the real model and environment: the two commands a user
runs, `ragdistill pipeline` and `ragdistill loop run`, as processes on the WebShop demo's config, scaled
down. SmolLM2-135M plays through vLLM on the real WebShop catalogue, its failures are mined by the real
extractor into a FAISS bank, the served collect deployment runs twice on a real Prefect server with a
process worker, the retrain deployment's own trigger answers the second collect's event, and generation 2
is trained, evaluated and gated.

At this size (no warm start: it needs ~13 min) the base wins nothing, so the students' sets would be
empty: the test distils the RAG teacher *and* the expert (``distill.teacher: both``), whose
demonstrations carry the hints the RAG teacher retrieves from the bank the real failures grew. The RAG
teacher's own successes carrying the set is measured on the full demo (README, "What the demo shows").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragdistill.stages.retrain import LAST_DECISION_FILE, generation_root, read_watermark
from ragdistill.store import ArtifactStore, read_records
from test_prefect_server import fresh_prefect_home  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT_S = 1200


def loop_config(tmp_path: Path) -> Path:
    """configs/demo-webshop.yaml at test size: 2 pipeline goals, collect batches of 2 goals with a retrain
    due at 3 failures, episodes of at most 6 actions, 2 evaluation goals, 2 optimizer steps per student."""
    data = yaml.safe_load((REPO / "configs" / "demo-webshop.yaml").read_text())
    data["run"] = {"name": "loop-real", "run_root": f"file://{tmp_path}/run"}
    data["env"].update(limit=2, workers=1, data_dir=str(REPO / "data"))
    data["agent"].update(max_calls=6)
    data["warm_start"] = {"enabled": False}
    data["distill"].update(teacher="both", expert_limit=2)
    data["training"].update(epochs=1, max_steps=2)
    data["evaluation"].update(limit=2, methods=["base", "distill"])
    data["collect"] = {"batch_size": 2}
    data["retrain"] = {"min_failures": 3}
    path = tmp_path / "loop-real.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def ragdistill(*arguments: str) -> dict[str, Any]:
    """``ragdistill ARGUMENTS`` as a user runs it; the JSON line it ends with."""
    done = subprocess.run(
        [sys.executable, "-m", "ragdistill.cli", *arguments],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-6000:])
    last_line = done.stdout.strip().splitlines()[-1]
    return json.loads(last_line)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_collect_triggers_a_retrain_that_trains_generation_2_on_real_episodes_and_gates_it(
    fresh_prefect_home: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = str(loop_config(tmp_path))
    ragdistill("pipeline", "-c", config)
    store = ArtifactStore(f"file://{tmp_path}/run")
    base = list(read_records(store, "rollouts/base"))
    assert len(base) == 2 and all(record["steps"] for record in base)
    assert all(step["prompt_tokens"] > 0 for record in base for step in record["steps"]), "the real model"

    summary = ragdistill("loop", "run", "-c", config)

    collects = [(c["batch"], c["state"], c["started_by"]) for c in summary["collects"]]
    assert collects == [
        ("collect-0000", "COMPLETED", "the round"),
        ("collect-0001", "COMPLETED", "the round"),
    ]
    assert sum(c["failures"] for c in summary["collects"]) >= 3
    assert [(run["state"], run["started_by"]) for run in summary["retrains"]] == [
        ("COMPLETED", "trigger retrain-due")
    ], "the retrain deployment's own trigger started it, on the second collect's event"
    decision = store.read_json(LAST_DECISION_FILE)
    assert decision["skipped"] is None and decision["generation"] == 1
    assert decision["new_failures"] == sum(c["failures"] for c in summary["collects"])
    counts = decision["counts"]
    assert counts["hints"]["bank_size"] >= 1, "the collected failures were mined by the real extractor"
    assert counts["dataset_distill"]["examples"] > 0 and counts["train_distill"]["trained"] == 1
    assert counts["eval_distill"]["episodes"] == 2
    generation = ArtifactStore(generation_root(store.root_url, 1))
    card = generation.read_text("datasets/distill/README.md")
    assert "expert:" in card and generation.exists("datasets/distill/data.parquet")

    gate = summary["gate"]
    assert gate is not None and gate["reason"], "the gate's decision is recorded"
    assert generation.exists("promotion/decision.json")
    assert read_watermark(store).generation == 1 and summary["student_generation"] == 2
