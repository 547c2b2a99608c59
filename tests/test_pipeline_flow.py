"""The end-to-end Prefect flow on real ALFWorld games, a real FAISS index and a real Prefect server.

The models are replaced by one named test double (the slow real-model runs live in
test_rollout_real.py): it plays "look"/"inventory" as the agent and answers hint-extraction requests
with fixed JSON, so the flow's wiring, artifacts and cache are what is under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ragdistill.config import load_config
from ragdistill.episodes import EpisodeRecord
from ragdistill.inference import shared
from ragdistill.inference.base import ChatMessage, Generation, GenerationRequest
from ragdistill.store import ArtifactStore, read_manifest, read_records

REPO = Path(__file__).resolve().parents[1]
HINTS = {"hints": [{"text": "Open {container} before looking for {object} inside it."}]}


class AgentAndExtractorDouble:
    """Answers policy calls with alternating actions and extraction calls (they carry a JSON schema) with
    ``hints`` (one fixed hint unless given). Token counts are word counts, the same in generate and
    count_tokens."""

    name = "agent-and-extractor-double"

    def __init__(self, hints: list[str] | None = None) -> None:
        self.calls = 0
        self.hints = {"hints": [{"text": text} for text in hints]} if hints else HINTS

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        return sum(len(m.content.split()) for m in messages), len(completion.split())

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.calls += 1
        out = []
        for request in requests:
            if request.json_schema is not None:
                text = json.dumps(self.hints)
            else:
                text = "look" if len(request.messages) % 4 < 2 else "inventory"
            prompt, completion = self.count_tokens(request.messages, text)
            out.append(Generation(text, "stop", prompt, completion))
        return out

    def close(self) -> None:
        pass


@pytest.fixture
def flow_config(tmp_path: Path) -> Path:
    data = yaml.safe_load((REPO / "configs" / "demo-alfworld.yaml").read_text())
    data["run"]["run_root"] = f"file://{tmp_path}/run"
    data["env"].update(limit=2, workers=1, data_dir=str(REPO / "data"))
    data["agent"]["max_calls"] = 3
    data["distill"] = {"teacher": "rag"}  # the double wins nothing: both training sets are empty
    data["warm_start"] = {"enabled": False}  # the double plays no checkpoint (tests/test_warm_start.py)
    data["agent"]["fewshot_count"] = 2  # without the warm start, the agent learns the format from examples
    data["evaluation"].update(limit=2, methods=["base", "rag", "distill"])
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def edited_config(path: Path, name: str, change: dict) -> Path:
    """A copy of the config file with ``change`` merged in (one level deep), as a user would edit it."""
    data = yaml.safe_load(path.read_text())
    for section, values in change.items():
        data.setdefault(section, {}).update(values)
    edited = path.with_name(name)
    edited.write_text(yaml.safe_dump(data))
    return edited


def run_pipeline(config_path: Path, double: AgentAndExtractorDouble) -> tuple[dict, dict[str, str]]:
    """Run the flow on the test server; its summary and each task's final state name, by the task run's
    name without the environment and run it names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from ragdistill.flows.pipeline import pipeline_flow

    config = load_config(config_path)
    shared._BACKENDS[shared._key(config.models.agent)] = double
    state = pipeline_flow(str(config_path), return_state=True)
    summary = state.result()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    suffix = f"-{config.env.name}-{config.run.name}"
    assert all(run.name.endswith(suffix) for run in runs), "every task run names its environment and run"
    return summary, {run.name.removesuffix(suffix): run.state_name for run in runs}


def ui_artifacts() -> dict:
    """The latest artifact of each key on the test server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    keys = ["report", "metrics", "run-root"]
    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=keys))
        )
    return {artifact.key: artifact for artifact in found}


STAGES_A_TO_C = ("rollout-base", "mine", "index", "teach")
STUDENT_TASKS = ("dataset-sft", "dataset-distill", "train-sft", "train-distill")
EVALUATIONS = ("evaluate-base", "evaluate-rag", "evaluate-distill")
EVERY_TASK = (*STAGES_A_TO_C, *STUDENT_TASKS, *EVALUATIONS, "promote", "report")


def only(states: dict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {name: states[name] for name in names}


@pytest.mark.slow
def test_pipeline_flow_runs_every_stage_and_its_cache_never_lies(
    prefect_server: None, flow_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    double = AgentAndExtractorDouble()
    summary, states = run_pipeline(flow_config, double)
    assert states == dict.fromkeys(EVERY_TASK, "Completed")
    assert summary["base"]["episodes"] == 2 and summary["teacher"]["episodes"] == 2
    assert summary["dataset_distill"]["examples"] == 0 and summary["train_distill"] == {"trained": 0}
    assert summary["eval_base"]["episodes"] == 2 and summary["eval_rag"]["episodes"] == 2
    assert summary["eval_distill"] == {} and summary["report"]["methods"] == 2
    assert summary["hints"]["bank_size"] >= 1
    assert summary["promotion"] == {"registered": 0, "candidate": 0, "promoted": 0}, "no student was trained"
    artifacts = ui_artifacts()
    assert {"report", "metrics", "run-root"} <= set(artifacts), "the run is readable in the UI"
    methods = {(row["method"], row["not run"] is None) for row in json.loads(artifacts["metrics"].data)}
    assert methods == {("base", True), ("rag", True), ("distill", False)}
    assert (
        "](data:image/png;base64,iVBORw0KGgo" in artifacts["report"].data
        and "](accuracy_tokens.png)" not in artifacts["report"].data
    ), "the figure travels inside the report artifact (a page served over http cannot load a file:// link)"
    config = load_config(flow_config)
    store = ArtifactStore(config.run.run_root)
    for data in read_records(store, "rollouts/teacher"):
        record = EpisodeRecord.from_dict(data)
        kinds = [segment.kind for segment in record.prompt]
        assert kinds == ["system", "hints", "fewshot", "task"], "the hint block once, before the examples"
        assert len(record.hint_ids) == 1 and record.source == "teacher"
        (block,) = [segment.text for segment in record.prompt if segment.kind == "hints"]
        assert HINTS["hints"][0]["text"] in block
    calls = double.calls

    # Nothing changed: every stage is a cache hit, no model call is made.
    again, states = run_pipeline(flow_config, double)
    cached = {**dict.fromkeys(EVERY_TASK, "Cached"), "evaluate-distill": "Completed"}  # a skip is not cached
    assert states == cached
    assert again == summary and double.calls == calls
    report = store.read_text("reports/report.md")
    assert "training set is empty" in report and store.exists("reports/accuracy_tokens.png")

    # A setting that only training reads re-runs none of the stages before it, nor the evaluations that
    # play no student.
    unrelated = edited_config(flow_config, "unrelated.yaml", {"training": {"learning_rate": 1e-4}})
    _, states = run_pipeline(unrelated, double)
    assert only(states, STAGES_A_TO_C + EVALUATIONS[:2]) == dict.fromkeys(
        STAGES_A_TO_C + EVALUATIONS[:2], "Cached"
    )
    assert double.calls == calls

    # A deleted index is rebuilt. The teacher reads the index by content: a bit-identical rebuild leaves
    # its episodes current; any other content re-runs it.
    index_digest = read_manifest(store, "index").digest
    store.delete("index")
    _, states = run_pipeline(flow_config, double)
    assert states["rollout-base"] == states["mine"] == "Cached" and states["index"] == "Completed"
    assert store.exists("index/manifest.json") and store.exists("index/meta.json")
    rebuilt_same = read_manifest(store, "index").digest == index_digest
    assert states["teach"] == ("Cached" if rebuilt_same else "Completed")

    # A deleted teacher shard is rebuilt.
    (shard,) = [p for p in store.list("rollouts/teacher") if p.endswith(".jsonl")]
    store.delete(shard)
    _, states = run_pipeline(flow_config, double)
    assert only(states, STAGES_A_TO_C) == {
        "rollout-base": "Cached",
        "mine": "Cached",
        "index": "Cached",
        "teach": "Completed",
    }
    assert double.calls > calls and store.exists(shard)

    # A changed retrieval k re-runs the teacher only.
    calls = double.calls
    more_hints = edited_config(flow_config, "k.yaml", {"retrieval": {"k": 5}})
    _, states = run_pipeline(more_hints, double)
    assert only(states, STAGES_A_TO_C) == {
        "rollout-base": "Cached",
        "mine": "Cached",
        "index": "Cached",
        "teach": "Completed",
    }
    assert states["evaluate-base"] == "Cached" and states["evaluate-rag"] == "Completed"
    assert double.calls > calls

    # An edit of the rollout engine re-runs the rollout and everything after it, with no error.
    from ragdistill import identity

    source = Path(identity.PACKAGE_DIR) / "rollout" / "engine.py"
    edited = flow_config.parent / "rollout_edited.py"
    edited.write_text(source.read_text() + "\nEDITED_IN_A_TEST = True\n")
    real_module_file = identity._module_file
    monkeypatch.setattr(
        identity,
        "_module_file",
        lambda name: edited if name == "ragdistill.rollout.engine" else real_module_file(name),
    )
    identity._module_summary.cache_clear()
    identity.code_fingerprint.cache_clear()
    try:
        _, states = run_pipeline(more_hints, double)
    finally:
        identity._module_summary.cache_clear()
        identity.code_fingerprint.cache_clear()
    assert only(states, STAGES_A_TO_C) == dict.fromkeys(STAGES_A_TO_C, "Completed")
    assert states["evaluate-base"] == "Completed", "the base agent's code changed"


def test_flow_and_task_runs_are_named_after_the_stage_environment_and_run(
    prefect_server: None, tmp_path: Path
) -> None:
    """Read back through the Prefect API: a run says what it plays, not a random adjective-animal name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    import env_doubles  # noqa: F401  (registers the counter-double environment)
    from ragdistill.flows.standalone import rollout_flow
    from test_stages import PolicyDouble, counter_config

    config = counter_config(tmp_path, **{"env.limit": 1, "env.workers": 1, "run.name": "naming-test"})
    config_path = tmp_path / "naming.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    shared._BACKENDS[shared._key(config.models.agent)] = PolicyDouble("wait")
    state = rollout_flow(str(config_path), stage="probe", return_state=True)
    assert state.is_completed(), state
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        )
    assert flow_run.name == "rollout-probe-counter-double-naming-test"
    assert [run.name for run in task_runs] == ["rollout-probe-counter-double-naming-test"]


def test_a_flow_run_is_named_after_the_config_it_will_run_with_or_its_file_when_unreadable(
    tmp_path: Path,
) -> None:
    from ragdistill.flows.naming import flow_run_label

    assert flow_run_label("pipeline", {"config_name": "demo-webshop"}) == "pipeline-webshop-demo-webshop"
    overridden = {"config_name": "demo-alfworld", "overrides": {"run": {"name": "nightly"}}, "stage": "b2"}
    assert flow_run_label("rollout", overridden, "base") == "rollout-b2-alfworld-nightly"
    assert flow_run_label("rollout", {"config_name": "demo-alfworld"}, "base").startswith("rollout-base-")
    assert flow_run_label("mine", {"config_name": str(tmp_path / "gone.yaml")}) == "mine-gone"
    bad = {"config_name": "demo-alfworld", "overrides": {"env": {"limit": -1}}}
    assert flow_run_label("mine", bad) == "mine-demo-alfworld"
