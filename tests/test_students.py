"""Stages D and E through their real stage functions: datasets, training, evaluation and the report.

The fast tests play the ``counter-double`` environment with a named backend double; an empty training
set must flow through training, evaluation and the report as a recorded outcome. The slow test runs
the real thing on ALFWorld: expert demonstrations, datasets, a LoRA training through accelerate,
students evaluated with vLLM, and the report with its figure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import StageSettings
from ragdistill.config.stages import PipelineSettings
from ragdistill.rollout.plan import select_tasks
from ragdistill.stages.datasets import run_dataset
from ragdistill.stages.evaluation import SkippedMethod, run_evaluation
from ragdistill.stages.lifecycle import upstream_inputs
from ragdistill.stages.mining import run_mining
from ragdistill.stages.report import run_report, write_run_file
from ragdistill.stages.rollout import run_rollout
from ragdistill.stages.training import run_training
from ragdistill.store import ArtifactStore, read_manifest
from test_stages import PolicyDouble, counter_config

Result = TypeVar("Result")

REPO = Path(__file__).resolve().parents[1]


def on_upstream(
    stage: Callable[..., Result], ctx: RunContext, settings: StageSettings, **options: Any
) -> Result:
    """Run ``stage`` handed the digests of its upstream folders as the run root holds them now (as the
    CLI does)."""
    return stage(ctx, settings, upstream_inputs(ArtifactStore(ctx.run_root), settings), **options)


def test_an_empty_training_set_is_recorded_and_flows_through_training_evaluation_and_report(
    tmp_path: Path,
) -> None:
    config = counter_config(tmp_path, **{"env.limit": 4, "evaluation.split": "test", "evaluation.limit": 2,
                                         "evaluation.methods": ["base", "sft"]})  # fmt: skip
    stages = PipelineSettings.from_experiment(config)
    ctx, store = stages.ctx, ArtifactStore(config.run.run_root)
    run_rollout(ctx, stages.rollout(), {}, backend=PolicyDouble("wait"))  # no success: nothing to learn from
    datasets = on_upstream(run_dataset, ctx, stages.dataset("sft"))
    assert datasets.counts["examples"] == 0 and datasets.counts["skipped_not_successful"] == 4
    card = store.read_text("datasets/sft/README.md")
    assert "This set is empty: none of the 4 episodes of the base agent qualified (4 not successful)" in card

    trained = on_upstream(run_training, ctx, stages.training("sft"))
    assert trained.counts == {"trained": 0} and "training set is empty" in trained.extra["skipped"]
    again = on_upstream(run_training, ctx, stages.training("sft"))
    assert again.identity == trained.identity, "a recorded skip is current"

    skipped = on_upstream(run_evaluation, ctx, stages.evaluation("sft"))
    assert isinstance(skipped, SkippedMethod) and "training set is empty" in skipped.reason
    base_settings = stages.evaluation("base")
    base = on_upstream(run_evaluation, ctx, base_settings, backend=PolicyDouble("inc"))
    assert not isinstance(base, SkippedMethod) and base.counts["episodes"] == 2 and base.counts["won"] == 2
    pinned = select_tasks(ctx, base_settings.env, base_settings.tasks)
    assert [task.task_id for task in pinned] == ["t0", "t1"]

    write_run_file(store, "counter", config.model_dump(mode="json"))
    report = on_upstream(run_report, ctx, stages.report("counter"))
    text = store.read_text("reports/report.md")
    assert report.counts["methods"] == 1 and store.exists("reports/accuracy_tokens.png")
    assert "training set is empty" in text and "100.0" in text
    metrics = json.loads(store.read_text("reports/metrics.json"))
    assert {result["method"] for result in metrics["results"]} == {"base", "sft"}


@pytest.mark.slow
def test_students_are_distilled_from_expert_demonstrations_and_evaluated_on_alfworld(tmp_path: Path) -> None:
    """The real stages D and E on a few ALFWorld games: a LoRA student that needs no retrieval."""
    from alfworld_data import alfworld_data_dir

    data_dir = alfworld_data_dir()
    config = with_overrides(
        ExperimentConfig(),
        {
            "run.run_root": f"file://{tmp_path}/run",
            "run.name": "students-test",
            "env.data_dir": str(data_dir),
            "env.limit": 2,
            "env.workers": 2,
            "agent.fewshot_count": 1,
            "agent.max_calls": 30,
            "models.agent.model.dtype": "float32",
            "models.agent.model.max_model_len": 4096,
            "models.agent.backend.kv_cache_gib": 1,
            "models.agent.sampling.max_tokens": 24,
            "mining.constrain_hint_text": True,
            "distill.teacher": "expert",
            "distill.expert_limit": 6,
            "training.lora_r": 4,
            "training.lora_alpha": 8,
            "training.max_steps": 3,
            "training.learning_rate": 5e-3,  # a few steps must move greedy outputs
            "training.warmup_ratio": 0.0,
            "training.per_device_batch_size": 2,
            "training.max_seq_len": 1024,
            "training.tensorboard": False,
            "evaluation.limit": 2,
            "evaluation.methods": ["base", "distill"],
            "evaluation.student_weights": "merged",
        },
    )
    store = ArtifactStore(config.run.run_root)
    stages = PipelineSettings.from_experiment(config)
    ctx = stages.ctx
    # failures to mine: the model is not under test here
    run_rollout(ctx, stages.rollout(), {}, backend=PolicyDouble("look"))
    on_upstream(run_mining, ctx, stages.mining, backend=PolicyDouble())
    from ragdistill.stages.expert import run_expert_teacher
    from ragdistill.stages.indexing import run_indexing

    on_upstream(run_indexing, ctx, stages.indexing)
    expert = on_upstream(run_expert_teacher, ctx, stages.expert)
    assert expert.counts["episodes"] == 6 and expert.counts["won"] == 6
    datasets = {name: on_upstream(run_dataset, ctx, stages.dataset(name)) for name in ("sft", "distill")}
    assert datasets["distill"].counts["examples"] == 6 and datasets["sft"].counts["examples"] == 0
    trained = on_upstream(run_training, ctx, stages.training("distill"))
    result = trained.extra["result"]
    assert result["steps"] == 3 and store.exists("adapters/distill/adapter/adapter_model.safetensors")
    assert {"loss.csv", "loss.png"} <= {name.split("/")[-1] for name in trained.files}

    adapter = store.local_path("adapters/distill/adapter")
    assert_adapter_changes_greedy_outputs(config, adapter)

    evaluated = on_upstream(run_evaluation, ctx, stages.evaluation("distill"))
    assert not isinstance(evaluated, SkippedMethod) and evaluated.counts["episodes"] == 2
    manifest = read_manifest(store, "rollouts/eval-distill")
    from ragdistill.episodes import EpisodeRecord
    from ragdistill.store import read_records

    records = [
        EpisodeRecord.from_dict(item) for item in read_records(store, "rollouts/eval-distill", manifest)
    ]
    assert all(record.adapter and record.adapter.startswith("sha256:") for record in records)
    assert all("hints" not in {segment.kind for segment in record.prompt} for record in records)
    assert all(record.retrieval_tokens == 0 and not record.hint_ids for record in records)


def assert_adapter_changes_greedy_outputs(config: ExperimentConfig, adapter: str) -> None:
    """The trained adapter loads on hf (peft) and on vLLM (LoRA request) and changes greedy text."""
    from ragdistill.episodes import EpisodeRecord
    from ragdistill.inference.base import GenerationRequest
    from ragdistill.inference.hf_backend import HFBackend
    from ragdistill.inference.vllm_backend import VLLMBackend
    from ragdistill.messages import render_messages
    from ragdistill.store import read_records

    store = ArtifactStore(config.run.run_root)
    record = EpisodeRecord.from_dict(next(iter(read_records(store, "rollouts/expert"))))
    messages = render_messages([segment for segment in record.prompt if segment.kind in ("system", "task")])
    role = config.models.agent.model_copy(
        update={"backend": config.models.agent.backend.model_copy(update={"enable_lora": True})}
    )
    for backend_class in (HFBackend, VLLMBackend):
        backend = backend_class(role)
        try:
            plain, tuned = backend.generate(
                [
                    GenerationRequest(messages, max_tokens=24, stop=["\n"]),
                    GenerationRequest(messages, max_tokens=24, stop=["\n"], adapter=adapter),
                ]
            )
        finally:
            backend.close()
        assert not plain.failed and not tuned.failed
        assert plain.text != tuned.text, f"{backend_class.__name__}: the adapter changed nothing"
