from pathlib import Path

import pytest

from ragdistill.config import (
    ConfigError,
    ExperimentConfig,
    config_hash,
    engine_key,
    load_config,
    validate_config,
    with_overrides,
)
from ragdistill.preflight import check_runnable

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


def test_defaults_follow_the_paper() -> None:
    config = ExperimentConfig()
    assert config.agent.max_calls == 100
    assert config.agent.repeat_stop == 5
    assert config.retrieval.k == 3
    assert config.mining.fuzzy_threshold == 0.85
    assert config.models.agent.sampling.temperature == 0.0
    assert config.models.extractor.sampling.max_tokens == 600
    assert config.training.learning_rate == 2e-4


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "agent:\n  formt: react\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert str(path) in message
    assert "agent.formt" in message
    assert "unknown key" in message


def test_wrong_type_names_the_nested_key_and_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  agent:\n    sampling:\n      max_tokens: lots\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert "models.agent.sampling.max_tokens" in message
    assert "'lots'" in message and str(path) in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "env:\n  workers: 0\nretrieval:\n  retriever: magic\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert "env.workers" in str(raised.value) and "retrieval.retriever" in str(raised.value)


def test_invalid_yaml_and_missing_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "env: [unclosed\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_stateact_cannot_use_react_transcripts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="StateAct"):
        load_config(write(tmp_path, "agent:\n  format: stateact\n  fewshot_source: react\n"))


def test_overrides_are_validated_and_change_the_hash(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "env:\n  split: train\n"), {"env.limit": 4})
    assert config.env.limit == 4
    changed = with_overrides(config, {"env.split": "valid_unseen"})
    assert changed.env.split == "valid_unseen"
    assert config_hash(changed) != config_hash(config)
    assert config_hash(config) == config_hash(config.model_copy(deep=True))
    with pytest.raises(ConfigError, match=r"env\.limit"):
        with_overrides(config, {"env.limit": -1})


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_shipped_configs_validate_and_name_what_a_machine_with_the_packages_has(path: Path) -> None:
    check_runnable(load_config(path), path)


def test_a_stored_config_loads_on_a_machine_without_what_it_names_and_preflight_names_each_lack() -> None:
    """Validation never looks at the machine (``ragdistill report`` reads any run's config); the check
    before a run names every setting at fault."""
    stored = {
        "models": {"agent": {"model": {"name": "/no/such/checkpoint"}}},
        "env": {"name": "webshop"},
        "agent": {"fewshot_source": "react"},
        "training": {"accelerate_config": "/no/such/accelerate.yaml"},
    }
    config = validate_config(stored, source="runs/x/run.json")
    assert config.training.accelerate_config == "/no/such/accelerate.yaml"
    with pytest.raises(ConfigError) as raised:
        check_runnable(config, "runs/x/run.json")
    message = str(raised.value)
    assert message.startswith("runs/x/run.json: 3 setting(s) name what this machine lacks")
    assert "models.agent.model.name: '/no/such/checkpoint' looks like a local folder" in message
    assert "agent.fewshot_source: environment 'webshop' offers no 'react' few-shot examples" in message
    assert "training.accelerate_config: accelerate config '/no/such/accelerate.yaml' is neither" in message


def test_configs_are_shipped() -> None:
    names = {path.name for path in CONFIGS}
    assert {"demo-alfworld.yaml", "paper-alfworld-react.yaml", "paper-alfworld-stateact.yaml"} <= names


def test_in_process_engines_that_ask_for_more_than_one_gpu_are_rejected_with_what_to_change() -> None:
    overrides = {
        "models.agent.backend.gpu_memory_utilization": 0.85,
        "models.extractor.model.name": "other-model",
        "models.extractor.backend.gpu_memory_utilization": 0.3,
    }
    with pytest.raises(
        ConfigError, match=r"ask for 1\.15 of one GPU's memory \(agent 0\.85 \+ extractor 0\.3\)"
    ):
        with_overrides(ExperimentConfig(), overrides)
    served = with_overrides(ExperimentConfig(), {**overrides, "models.extractor.backend.kind": "openai",
                                                 "models.extractor.backend.base_url": "http://127.0.0.1:1/v1"})  # fmt: skip
    assert served.models.agent.backend.gpu_share() == 0.85


def test_engines_without_a_gpu_share_split_what_is_left_and_shared_engines_count_once() -> None:
    config = ExperimentConfig()
    assert config.models.agent.backend.gpu_share() == config.models.extractor.backend.gpu_share() == 0.9
    two = with_overrides(config, {"models.extractor.model.max_model_len": 4096})
    assert two.models.agent.backend.gpu_share() == two.models.extractor.backend.gpu_share() == 0.45
    mixed = with_overrides(
        config,
        {"models.extractor.model.max_model_len": 4096, "models.agent.backend.gpu_memory_utilization": 0.5},
    )
    assert mixed.models.extractor.backend.gpu_share() == pytest.approx(0.4)
    assert "gpu_memory_utilization" in mixed.model_dump()["models"]["extractor"]["backend"]
    assert mixed.model_dump()["models"]["extractor"]["backend"]["gpu_memory_utilization"] is None


@pytest.mark.parametrize("name", ["paper-alfworld-react", "paper-alfworld-stateact", "demo-alfworld"])
def test_shipped_configs_fit_one_gpu(name: str) -> None:
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    engines = {
        engine_key(role): role.backend.gpu_share()
        for role in config.engine_roles().values()
        if role.backend.kind == "vllm"
    }
    assert sum(engines.values()) <= 1.0
