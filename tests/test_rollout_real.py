"""Real rollouts: SmolLM2-135M on the vllm and hf backends, ReAct and StateAct, four ALFWorld games each.

Checks the episode-record contract on real output: every field present, and every call's token counts
equal to re-tokenising the recorded prompt and output with the model's tokenizer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.config.stages import PipelineSettings
from ragdistill.environments.alfworld.hints import ALFWORLD_HINT_STYLE
from ragdistill.episodes import EpisodeRecord, Step, call_segments
from ragdistill.inference import make_backend
from ragdistill.messages import render_messages
from ragdistill.retrieval.bank import HintBank
from ragdistill.retrieval.hints import validate_hint
from ragdistill.stages.lifecycle import upstream_inputs
from ragdistill.stages.mining import run_mining
from ragdistill.stages.rollout import run_rollout
from ragdistill.store import ArtifactStore, read_records

REPO = Path(__file__).resolve().parents[1]
RECORD_FIELDS = {field.name for field in dataclasses.fields(EpisodeRecord)}
STEP_FIELDS = {field.name for field in dataclasses.fields(Step)}
OPTIONAL_STEP_FIELDS = {"info"}
"""Stored only when the environment reported something (ALFWorld never does)."""


def config_for(tmp_path: Path, backend_kind: str, agent_format: str) -> ExperimentConfig:
    return with_overrides(
        ExperimentConfig(),
        {
            "run.run_root": f"file://{tmp_path}/{backend_kind}-{agent_format}",
            "env.limit": 4,
            "env.workers": 2,
            "env.data_dir": str(REPO / "data"),
            "agent.format": agent_format,
            "agent.fewshot_source": "react" if agent_format == "react" else "expert",
            "agent.fewshot_count": 1,
            "agent.max_calls": 2,
            "models.agent.model.dtype": "float32",
            "models.agent.model.max_model_len": 4096,
            "models.agent.backend.kind": backend_kind,
            "models.agent.backend.kv_cache_gib": 1,
            "models.agent.backend.batch_size": 4,
            "models.agent.backend.torch_threads": 2,
            "models.agent.sampling.max_tokens": 64 if agent_format == "stateact" else 32,
            "rollout.batch_size": 4,
        },
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend_kind", ["vllm", "hf"])
def test_real_rollouts_write_complete_records_with_exact_token_counts(
    tmp_path: Path, backend_kind: str
) -> None:
    backend = make_backend(config_for(tmp_path, backend_kind, "react").models.agent)
    try:
        for agent_format in ("react", "stateact"):
            config = config_for(tmp_path, backend_kind, agent_format)
            settings = PipelineSettings.from_experiment(config)
            manifest = run_rollout(settings.ctx, settings.rollout(), backend=backend)
            assert manifest.counts["episodes"] == 4 and manifest.counts["errors"] == 0
            raw_records = list(read_records(ArtifactStore(config.run.run_root), "rollouts/base"))
            assert len({raw["task_id"] for raw in raw_records}) == 4
            for raw in raw_records:
                assert set(raw) == RECORD_FIELDS
                assert all(set(step) == STEP_FIELDS - OPTIONAL_STEP_FIELDS for step in raw["steps"])
                record = EpisodeRecord.from_dict(raw)
                assert record.agent == agent_format and record.source == "agent"
                assert 1 <= record.model_calls <= 2 and record.stop_reason in (
                    "done",
                    "max_calls",
                    "repeated_output",
                )
                assert [s.kind for s in record.prompt] == ["system", "fewshot", "task"]
                for index, step in enumerate(record.steps):
                    messages = render_messages(call_segments(record, index))
                    assert backend.count_tokens(messages, step.output) == (
                        step.prompt_tokens,
                        step.completion_tokens,
                    )
                assert record.policy_prompt_tokens == sum(s.prompt_tokens for s in record.steps)
                assert record.policy_completion_tokens == sum(s.completion_tokens for s in record.steps)
        if backend_kind == "vllm":
            mine_real_failures(config_for(tmp_path, "vllm", "react"), backend)
    finally:
        backend.close()


def mine_real_failures(config: ExperimentConfig, backend: object) -> None:
    """Stage B on the real failures above, with the same tiny model under constrained decoding."""
    config = with_overrides(
        config, {"mining.constrain_hint_text": True, "models.extractor.sampling.max_tokens": 256}
    )
    settings = PipelineSettings.from_experiment(config)
    store = ArtifactStore(config.run.run_root)
    inputs = upstream_inputs(store, settings.mining)
    manifest = run_mining(settings.ctx, settings.mining, inputs, backend=backend)
    assert manifest.counts["failures"] >= 1
    bank = HintBank.load(store)
    assert len(bank) >= 1, manifest.counts
    for hint in bank:
        assert validate_hint(hint.text, ALFWORLD_HINT_STYLE)[1] is None and len(hint.text) <= 120
