"""Stage 0, the warm start (``stages.warm_start``): its settings and their bad values, its tasks kept
apart from every other stage's, the agent role playing on its checkpoint with the checkpoint's digest in
every later identity, and (slow) the real thing on three WebShop goals with SmolLM2-135M."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.cli import app
from ragdistill.config import ConfigError, ExperimentConfig, load_config, with_overrides
from ragdistill.config.stage_models import TaskSelection
from ragdistill.config.stages import PipelineSettings
from ragdistill.environments.base import TaskInfo
from ragdistill.layout import WARM_START_DIR
from ragdistill.stages.identities import identify
from ragdistill.stages.lifecycle import StageError
from ragdistill.stages.rollout import agent_model, agent_role, warm_start_store
from ragdistill.stages.warm_start import (
    ExampleHints,
    check_own_tasks,
    example_hints,
    run_warm_start,
    warm_start_tasks,
)
from ragdistill.store import ArtifactError, ArtifactStore, write_manifest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"
WEBSHOP_DATA = pytest.mark.requires(
    (DATA_DIR / "webshop" / "products_1000.json.xz").is_file(),
    f"no WebShop data in {DATA_DIR}: run `ragdistill data setup`",
)


def nothing_written(tmp_path: Path) -> bool:
    return not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*"))


def demo(name: str = "demo-alfworld", **overrides: Any) -> ExperimentConfig:
    return load_config(REPO / "configs" / f"{name}.yaml", overrides)


def counter_warm_config(tmp_path: Path, **overrides: Any) -> ExperimentConfig:
    """The counter double with the warm start on: cheap task lists for identities (it renders no
    demonstrations, so the stage itself refuses it)."""
    settings = {
        "run.run_root": f"file://{tmp_path}/run",
        "env.name": "counter-double",
        "env.split": "test",
        "env.limit": 2,
        "agent.fewshot_source": "none",
        "warm_start.enabled": True,
        "warm_start.split": "test",
        "warm_start.limit": 2,
        "collect.split": "test",
        "evaluation.split": "valid",
    }
    return with_overrides(ExperimentConfig(), {**settings, **overrides})


# --- settings ------------------------------------------------------------------------------------------


def test_the_warm_start_is_off_by_default_and_in_the_paper_configs_and_on_in_both_demos() -> None:
    assert not ExperimentConfig().warm_start.enabled
    for name in (
        "paper-alfworld-react",
        "paper-alfworld-stateact",
        "paper-webshop-act",
        "paper-webshop-stateact",
    ):
        assert not demo(name).warm_start.enabled, name
    for name, games in (("demo-alfworld", 42), ("demo-webshop", 40)):
        config = demo(name)
        warm = PipelineSettings.from_experiment(config).warm_start
        assert config.warm_start.enabled and config.distill.teacher == "rag"
        assert (warm.tasks.start, warm.tasks.limit - warm.tasks.start) == (config.env.limit, games)
        assert (warm.training.epochs, warm.training.learning_rate, warm.training.max_steps) == (2, 1e-3, None)
        assert warm.removed == ["fewshot"] and warm.base_model == config.models.agent.model


def test_unset_length_and_start_follow_the_training_section_and_the_rollout() -> None:
    config = demo(**{"warm_start.epochs": None, "warm_start.learning_rate": None, "warm_start.start": None})
    warm = PipelineSettings.from_experiment(with_overrides(config, {"training.max_steps": 7})).warm_start
    assert (warm.training.epochs, warm.training.learning_rate) == (
        config.training.epochs,
        config.training.learning_rate,
    )
    assert warm.training.max_steps is None, "training.max_steps is the students' length, not the warm start's"
    assert warm.tasks.start == config.env.limit == config.warm_start_first()
    elsewhere = with_overrides(config, {"warm_start.split": "valid_unseen"})
    assert elsewhere.warm_start_first() == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"warm_start.start": 4},
            r"the warm start demonstrates positions 4–45 of split 'train'.*It overlaps the base rollout \(and "
            r"the RAG teacher\) \(positions 0–7 of split 'train'\) at positions 4–7: set warm_start\.start "
            r"to 8 or more",
        ),
        (
            {"env.limit": None},
            r"the base rollout \(and the RAG teacher\) \(positions 0 to the end of split 'train'\).*set "
            r"env\.limit \(the base rollout plays every task of its split\)",
        ),
        (
            {"collect.start": 20},
            r"It overlaps the collect batches \(positions 20 to the end of split 'train'\) at positions "
            r"20–49: set collect\.start to 50 or more \(or leave it empty",
        ),
        (
            {"warm_start.split": "valid_seen", "warm_start.start": 0},
            r"the evaluation \(positions 0–5 of split 'valid_seen'\) at positions 0–5: set "
            r"warm_start\.split to a training split",
        ),
        (
            {"models.agent.backend.kind": "openai", "models.agent.backend.base_url": "http://127.0.0.1:1/v1"},
            r"warm_start\.enabled needs the agent's weights loaded here",
        ),
        ({"warm_start.limit": 0}, r"warm_start\.limit.*greater than 0"),
        ({"warm_start.epochs": -1}, r"warm_start\.epochs.*greater than 0"),
        ({"warm_start.games": 3}, r"warm_start\.games: unknown key"),
    ],
    ids=[
        "rollout",
        "whole split",
        "collect",
        "evaluation",
        "openai agent",
        "no tasks",
        "epochs",
        "unknown key",
    ],
)
def test_a_bad_warm_start_is_refused_when_the_config_loads_naming_the_overlap_and_the_fix(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        demo(**overrides)
    assert re.search(message, " ".join(str(raised.value).split())), str(raised.value)


def test_collect_batches_start_after_the_warm_start_and_never_play_its_tasks(tmp_path: Path) -> None:
    config = demo(**{"run.run_root": f"file://{tmp_path}/run"})
    stages = PipelineSettings.from_experiment(config)
    assert config.collect_first() == 50 and stages.collect(0).tasks.start == 50
    assert stages.reserved_tasks()[WARM_START_DIR] == stages.warm_start.tasks
    off = with_overrides(config, {"warm_start.enabled": False})
    assert (
        off.collect_first() == 8
        and WARM_START_DIR not in PipelineSettings.from_experiment(off).reserved_tasks()
    )

    from ragdistill.stages.collect import check_fresh_tasks

    inside = stages.collect(0).model_copy(
        update={"tasks": stages.warm_start.tasks.model_copy(update={"limit": 12})}
    )
    with pytest.raises(StageError, match=r"would play 4 task\(s\) that warm-start plays too"):
        check_fresh_tasks(stages.ctx, inside, stages.reserved_tasks())


def test_the_cli_refuses_an_overlapping_warm_start_and_one_that_is_off_before_any_work(
    tmp_path: Path,
) -> None:
    data = yaml.safe_load((REPO / "configs" / "demo-alfworld.yaml").read_text())
    data["run"]["run_root"] = f"file://{tmp_path}/run"
    data["warm_start"]["start"] = 2
    overlapping = tmp_path / "overlap.yaml"
    overlapping.write_text(yaml.safe_dump(data))
    refused = CliRunner().invoke(app, ["warm-start", "-c", str(overlapping)])
    assert refused.exit_code == 2 and str(overlapping) in refused.output
    assert "set warm_start.start to 8 or more" in " ".join(refused.output.split())

    data["warm_start"] = {"enabled": False}
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump(data))
    refused = CliRunner().invoke(app, ["warm-start", "-c", str(off)])
    assert refused.exit_code == 2 and "warm_start.enabled is false" in " ".join(refused.output.split())
    assert nothing_written(tmp_path)


# --- the stage's own checks --------------------------------------------------------------------------------


def test_an_environment_without_an_expert_stops_the_warm_start_before_it_writes(tmp_path: Path) -> None:
    stages = PipelineSettings.from_experiment(counter_warm_config(tmp_path))
    with pytest.raises(
        StageError, match=r"environment 'counter-double' cannot render .*warm_start\.enabled: false"
    ):
        run_warm_start(stages.ctx, stages.warm_start, {}, reserved=stages.warm_start_reserved())
    assert nothing_written(tmp_path)

    from ragdistill.preflight import runnable_problems

    webshop_double = with_overrides(demo(), {"env.name": "counter-double", "agent.fewshot_source": "none"})
    assert any(problem.startswith("warm_start.enabled:") for problem in runnable_problems(webshop_double))


@WEBSHOP_DATA
def test_the_stage_checks_its_task_ids_against_every_reserved_selection(tmp_path: Path) -> None:
    config = demo("demo-webshop", **{"run.run_root": f"file://{tmp_path}/run", "env.data_dir": str(DATA_DIR)})
    stages = PipelineSettings.from_experiment(config)
    ctx, warm = stages.ctx, stages.warm_start
    tasks = warm_start_tasks(ctx, warm)
    assert [task.task_id for task in tasks][:2] == ["webshop-train-1524", "webshop-train-1525"]
    check_own_tasks(ctx, warm, tasks, stages.warm_start_reserved())  # the shipped config's are disjoint

    sharing = {"rollouts/base": TaskSelection(split="train", start=0, limit=26)}
    with pytest.raises(StageError) as raised:
        check_own_tasks(ctx, warm, tasks, sharing)
    message = " ".join(str(raised.value).split())
    assert "would learn from 2 task(s) that rollouts/base plays (positions 0–25 of split 'train')" in message
    assert "webshop-train-1524, webshop-train-1525" in message and "set warm_start.start past them" in message

    beyond = warm.model_copy(update={"tasks": warm.tasks.model_copy(update={"start": 9000, "limit": 9040})})
    with pytest.raises(StageError, match=r"positions 9000–9039 of split 'train', which holds no task"):
        warm_start_tasks(ctx, beyond)


# --- identity: the warm start's digest in every stage that plays or trains the agent -----------------------


def test_every_stage_that_plays_or_trains_the_agent_reads_the_warm_start_and_no_other(tmp_path: Path) -> None:
    stages = PipelineSettings.from_experiment(counter_warm_config(tmp_path))
    readers = {
        "rollout": stages.rollout(),
        "teacher": stages.teacher,
        "collect": stages.collect(0),
        **{f"evaluation-{method}": stages.evaluation(method) for method in ("base", "rag", "sft", "distill")},
        **{f"training-{name}": stages.training(name) for name in ("sft", "distill")},
    }
    for name, settings in readers.items():
        assert WARM_START_DIR in settings.input_dirs(), name
    others = [stages.mining, stages.indexing, stages.expert, stages.dataset("sft"), stages.dataset("distill")]
    for settings in others:
        assert WARM_START_DIR not in settings.input_dirs(), type(settings).__name__
    assert stages.mining.extractor.warm_start is False, "the extractor stays on its configured model"
    assert stages.teacher.role.warm_start and not (
        stages.teacher.reranker and stages.teacher.reranker.warm_start
    )
    off = PipelineSettings.from_experiment(counter_warm_config(tmp_path, **{"warm_start.enabled": False}))
    assert WARM_START_DIR not in off.rollout().input_dirs() + off.training("sft").input_dirs()


def test_a_changed_warm_start_changes_every_later_identity_and_an_unrelated_setting_none(
    tmp_path: Path,
) -> None:
    config = counter_warm_config(tmp_path)
    stages = PipelineSettings.from_experiment(config)
    ctx = stages.ctx
    rollout, training = stages.rollout(), stages.training("sft")
    first = {WARM_START_DIR: "a" * 64, "datasets/sft": "d" * 64}
    second = {**first, WARM_START_DIR: "b" * 64}
    for settings in (rollout, training):
        assert identify(ctx, settings, first).key != identify(ctx, settings, second).key
        assert identify(ctx, settings, second).inputs[WARM_START_DIR] == "b" * 64
    with pytest.raises(StageError, match=r"this stage reads warm-start, which has no finished manifest"):
        identify(ctx, rollout, {})

    longer = PipelineSettings.from_experiment(with_overrides(config, {"warm_start.epochs": 3}))
    assert identify(ctx, longer.warm_start, {}).key != identify(ctx, stages.warm_start, {}).key
    assert longer.rollout() == rollout, "later stages see a new warm start through its digest alone"
    unrelated = PipelineSettings.from_experiment(with_overrides(config, {"mining.max_hints_per_failure": 1}))
    assert identify(ctx, unrelated.warm_start, {}).key == identify(ctx, stages.warm_start, {}).key
    assert identify(ctx, stages.warm_start, {}).stage == WARM_START_DIR
    few_shot = {"agent.fewshot_source": "expert", "agent.fewshot_count": 3}
    more_examples = PipelineSettings.from_experiment(with_overrides(config, few_shot))
    key = identify(ctx, stages.warm_start, {}).key
    assert identify(ctx, more_examples.warm_start, {}).key == key, "its demonstrations carry no few-shot"
    kept = PipelineSettings.from_experiment(with_overrides(config, {**few_shot, "warm_start.fewshot": True}))
    assert identify(ctx, kept.warm_start, {}).key != key


def test_example_hints_go_to_the_share_of_tasks_the_seed_picks_the_same_on_every_run() -> None:
    tasks = [(TaskInfo(env="e", split="train", task_id=f"t{i}", task_type="x"), "obs") for i in range(400)]
    examples = ["Check {a}.", "Verify {b}.", "Open {c}."]
    source = ExampleHints(examples, share=0.25, count=2, seed=7)
    first = source.hints_for(tasks)
    assert [hints.texts for hints in first] == [
        hints.texts for hints in ExampleHints(examples, 0.25, 2, 7).hints_for(tasks)
    ]
    with_block = [hints for hints in first if hints.texts]
    assert 70 <= len(with_block) <= 130, "about a quarter"
    assert all(len(hints.texts) == 2 and set(hints.texts) <= set(examples) for hints in with_block)
    assert len({tuple(hints.texts) for hints in with_block}) > 1, "the hints vary by task"
    other_seed = [bool(hints.texts) for hints in ExampleHints(examples, 0.25, 2, 8).hints_for(tasks)]
    assert other_seed != [bool(hints.texts) for hints in first]


def test_the_hint_share_is_off_by_default_on_in_both_demos_and_sized_by_retrieval_k() -> None:
    assert ExperimentConfig().warm_start.hint_share == 0
    for name in ("demo-alfworld", "demo-webshop"):
        config = demo(name)
        warm = PipelineSettings.from_experiment(config).warm_start
        assert warm.hint_share == config.warm_start.hint_share > 0
        assert warm.hints_per_episode == config.retrieval.k
        assert example_hints(warm) is not None
    off = PipelineSettings.from_experiment(demo(**{"warm_start.hint_share": 0})).warm_start
    assert (off.hints_per_episode, example_hints(off)) == (0, None)


def fake_warm_start(store: ArtifactStore, weights: bytes = b"weights") -> str:
    """A finished ``warm-start/`` with a stand-in checkpoint; its content digest."""
    store.write_text(f"{WARM_START_DIR}/model/config.json", json.dumps({"model_type": "llama"}))
    store.write_bytes(f"{WARM_START_DIR}/model/model.safetensors", weights)
    files = ["model/config.json", "model/model.safetensors"]
    extra = {"description": "smollm2-135m + warm start on 3 expert games"}
    return write_manifest(
        store, WARM_START_DIR, WARM_START_DIR, "i", files, counts={"examples": 3}, extra=extra
    ).digest


def test_the_agent_role_plays_on_the_checkpoint_of_the_digest_it_was_handed(tmp_path: Path) -> None:
    stages = PipelineSettings.from_experiment(counter_warm_config(tmp_path))
    ctx, role = stages.ctx, stages.rollout().role
    store = ArtifactStore(ctx.run_root)
    digest = fake_warm_start(store)

    loaded = agent_role(ctx, role, {WARM_START_DIR: digest})
    assert loaded.model.name == store.local_path(f"{WARM_START_DIR}/model")
    assert loaded.model.model_copy(update={"name": role.model.name}) == role.model, "only the weights change"
    mined = agent_role(ctx, stages.mining.extractor, {WARM_START_DIR: digest})
    assert mined.model == stages.mining.extractor.model

    base = agent_model(ctx, stages.training("sft").base_model, True, {WARM_START_DIR: digest})
    assert base.lineage["description"] == "smollm2-135m + warm start on 3 expert games"
    assert base.lineage["warm_start"] == {
        "folder": WARM_START_DIR, "run_root": store.root_url, "digest": digest, "games": 3,
    }  # fmt: skip

    with pytest.raises(StageError, match=r"warm-start changed after this stage was given its content digest"):
        agent_role(ctx, role, {WARM_START_DIR: "0" * 64})
    store.write_bytes(f"{WARM_START_DIR}/model/model.safetensors", b"altered")
    with pytest.raises(ArtifactError, match=r"corrupted: .*warm-start/model/model\.safetensors"):
        agent_role(ctx, role, {WARM_START_DIR: digest})


def test_a_retrain_generation_plays_on_its_parents_warm_start(tmp_path: Path) -> None:
    config = counter_warm_config(tmp_path)
    parent = ArtifactStore(config.run.run_root)
    digest = fake_warm_start(parent)
    generation = with_overrides(config, {"run.run_root": parent.uri("generations/1")})
    ctx = PipelineSettings.from_experiment(generation, warm_start_root=parent.root_url).ctx
    assert warm_start_store(ctx).root_url == parent.root_url
    role = agent_role(
        ctx, PipelineSettings.from_experiment(generation).rollout().role, {WARM_START_DIR: digest}
    )
    assert role.model.name == parent.local_path(f"{WARM_START_DIR}/model")


@pytest.mark.s3
def test_on_s3_the_checkpoint_is_fetched_once_per_content_digest(
    s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGDISTILL_CACHE", str(tmp_path / "cache"))
    stages = PipelineSettings.from_experiment(counter_warm_config(tmp_path, **{"run.run_root": s3_root}))
    store = ArtifactStore(s3_root)
    digest = fake_warm_start(store)
    first = Path(agent_role(stages.ctx, stages.rollout().role, {WARM_START_DIR: digest}).model.name)
    assert first.is_relative_to(tmp_path / "cache" / "inputs")
    assert (first / "model.safetensors").read_bytes() == b"weights"
    assert {path.name for path in first.iterdir()} >= {"config.json", "model.safetensors"}
    os.utime(first / "model.safetensors", (1, 1))
    again = Path(agent_role(stages.ctx, stages.rollout().role, {WARM_START_DIR: digest}).model.name)
    assert again == first and (first / "model.safetensors").stat().st_mtime == 1, "not fetched again"
    changed = fake_warm_start(store, b"other weights")
    other = Path(agent_role(stages.ctx, stages.rollout().role, {WARM_START_DIR: changed}).model.name)
    assert other != first and (other / "model.safetensors").read_bytes() == b"other weights"


def test_the_report_names_the_warm_started_base(tmp_path: Path) -> None:
    from ragdistill.stages.report import _model_label, _warm_start_note

    config = counter_warm_config(tmp_path).model_dump(mode="json")
    store = ArtifactStore(f"file://{tmp_path}/run")
    assert "has no finished manifest" in str(_warm_start_note(store, config))
    fake_warm_start(store)
    note = _warm_start_note(store, config)
    assert note is not None and note.startswith("base = smollm2-135m + warm start on 3 expert games")
    assert _model_label(config) == "smollm2-135m + warm start"
    config["warm_start"]["enabled"] = False
    assert _warm_start_note(store, config) is None and _model_label(config) == "smollm2-135m"


# --- slow: the real warm start on WebShop ----------------------------------------------------------------


@pytest.mark.slow
@WEBSHOP_DATA
def test_a_real_warm_start_writes_a_safetensors_checkpoint_the_agent_then_plays_and_a_rerun_is_cached(
    tmp_path: Path,
) -> None:
    """Three WebShop training goals demonstrated, one epoch of LoRA on SmolLM2-135M, merged under the run
    root; the base rollout then plays on that checkpoint, and the warm start run again is current."""
    from safetensors import safe_open

    from ragdistill.inference.shared import close_shared_backends
    from ragdistill.models import resolve_model
    from ragdistill.stages.lifecycle import upstream_inputs
    from ragdistill.stages.rollout import run_rollout
    from ragdistill.store import read_manifest, read_records

    config = demo(
        "demo-webshop",
        **{
            "run.run_root": f"file://{tmp_path}/run",
            "env.limit": 1,
            "env.workers": 1,
            "env.data_dir": str(DATA_DIR),
            "warm_start.limit": 3,
            "warm_start.start": 8,
            "warm_start.epochs": 1,
            "warm_start.hint_share": 1.0,
            "models.agent.backend.kind": "hf",
            "models.agent.backend.torch_threads": 1,
            "models.agent.sampling.max_tokens": 12,
            "training.max_seq_len": 1024,
            "training.gradient_accumulation_steps": 1,  # two steps, both at a learning rate above 0
            "training.warmup_ratio": 0.0,
            "training.tensorboard": False,
        },
    )
    stages = PipelineSettings.from_experiment(config)
    ctx, store = stages.ctx, ArtifactStore(config.run.run_root)
    warm = run_warm_start(ctx, stages.warm_start, {}, reserved=stages.warm_start_reserved())

    root = Path(store.local_path(WARM_START_DIR))
    assert (root / "model" / "model.safetensors").is_file() and not list((root / "model").glob("*.bin"))
    assert {"model/model.safetensors", "model/config.json", "adapter/adapter_model.safetensors"} <= set(
        warm.files
    )
    assert any(name.startswith("model/tokenizer") for name in warm.files)
    assert warm.counts["episodes"] == 3 and 1 <= warm.counts["examples"] <= 3 and warm.counts["steps"] >= 1
    assert warm.extra["description"] == f"smollm2-135m + warm start on {warm.counts['examples']} expert games"
    assert warm.extra["tasks"]["task_ids"] == [
        "webshop-train-1508",
        "webshop-train-1509",
        "webshop-train-1510",
    ]
    assert set(warm.extra["disjoint_from"]) == {"rollouts/base", "rollouts/collect-*", "rollouts/eval-*"}
    import pandas

    texts = pandas.read_parquet(root / "data.parquet")["text"]
    assert len(texts) and all("- Check that the price is below {price}" in text for text in texts), (
        "with hint_share 1 every training prompt keeps its hint block"
    )
    base_weights = Path(resolve_model(config.models.agent.model)) / "model.safetensors"
    name = "model.layers.0.self_attn.q_proj.weight"
    with (
        safe_open(str(base_weights), "pt") as before,
        safe_open(str(root / "model/model.safetensors"), "pt") as after,
    ):
        assert not before.get_tensor(name).equal(after.get_tensor(name)), (
            "the LoRA is merged into the weights"
        )

    try:  # two model calls show what the agent plays on (the warm start's length is not under test)
        settings = PipelineSettings.from_experiment(with_overrides(config, {"agent.max_calls": 2})).rollout()
        inputs = upstream_inputs(store, settings)
        assert inputs == {WARM_START_DIR: warm.digest}
        played = run_rollout(ctx, settings, inputs)
    finally:
        close_shared_backends()
    assert played.inputs[WARM_START_DIR] == warm.digest
    (record,) = read_records(store, "rollouts/base", read_manifest(store, "rollouts/base"))
    assert record["model"] == str(root / "model"), "the agent played on the warm start's checkpoint"

    stamp = (root / "model" / "model.safetensors").stat().st_mtime_ns
    again = run_warm_start(ctx, stages.warm_start, {}, reserved=stages.warm_start_reserved())
    assert (again.identity, again.created_at) == (warm.identity, warm.created_at), (
        "the finished stage is current"
    )
    assert (root / "model" / "model.safetensors").stat().st_mtime_ns == stamp
