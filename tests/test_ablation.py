"""The retrieval ablation: its grid, a point's run root, the comparison table, and the flow on the demo
config with a tiny grid (real ALFWorld games, a real FAISS index and BM25, a real Prefect server; the
models replaced by a test double, as in test_pipeline_flow.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragdistill.config import ConfigError, load_config, with_overrides
from ragdistill.config.ablation import AblationPoint, ablation_points
from ragdistill.config.run_context import RunContext
from ragdistill.config.stages import PipelineSettings
from ragdistill.episodes import EpisodeRecord, Step
from ragdistill.evaluation.ablation import AblationRow, MethodCell, render_ablation_table
from ragdistill.evaluation.metrics import compute_metrics
from ragdistill.inference import shared
from ragdistill.messages import Segment
from ragdistill.stages.ablation import point_root, prepare_point
from ragdistill.store import ArtifactError, ArtifactStore, read_manifest, read_records, write_manifest
from test_pipeline_flow import AgentAndExtractorDouble

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo-alfworld.yaml"


def grid(**ablation: Any) -> list[tuple[str, int, str]]:
    config = with_overrides(load_config(DEMO), {f"ablation.{key}": value for key, value in ablation.items()})
    return [(point.retriever, point.k, point.root) for point in ablation_points(config)]


def test_axes_vary_one_setting_at_a_time_and_the_configs_own_point_is_the_pipeline() -> None:
    """The demo's own setting is faiss with k=3: it runs in the run root itself (root "")."""
    assert grid(k=[1, 3, 6], retrievers=["faiss", "bm25"], design="axes") == [
        ("faiss", 1, "ablation/k1-faiss"),
        ("faiss", 3, ""),
        ("faiss", 6, "ablation/k6-faiss"),
        ("bm25", 3, "ablation/k3-bm25"),
    ]


def test_cross_takes_every_pair_once() -> None:
    points = grid(k=[1, 3], retrievers=["faiss", "bm25", "llm-rerank"], design="cross")
    assert [(retriever, k) for retriever, k, _ in points] == [
        ("faiss", 1),
        ("faiss", 3),
        ("bm25", 1),
        ("bm25", 3),
        ("llm-rerank", 1),
        ("llm-rerank", 3),
    ]
    assert [root for *_, root in points].count("") == 1


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("ablation.k", [1, 3, 1], "lists 1 more than once"),
        ("ablation.k", [0, 3], "ablation.k.0"),
        ("ablation.retrievers", ["faiss", "tfidf"], "ablation.retrievers.1"),
        ("ablation.methods", [], "ablation.methods"),
    ],
)
def test_a_grid_that_cannot_run_is_refused_naming_the_setting(setting: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        with_overrides(load_config(DEMO), {setting: value})


def test_the_ablate_command_names_a_grid_it_cannot_run_and_writes_nothing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ragdistill.cli import app

    root = tmp_path / "run"
    for flags, setting in (
        (["--retriever", "tfidf"], "ablation.retrievers"),
        (["--k", "2", "--k", "2"], "ablation.k"),
    ):
        result = CliRunner().invoke(app, ["ablate", "-c", str(DEMO), "--run-root", str(root), *flags])
        assert result.exit_code == 2, result.output
        assert setting in result.output
    assert not root.exists(), "nothing is written"


def test_the_table_settings_read_each_points_own_folders() -> None:
    config = with_overrides(
        load_config(DEMO),
        {"ablation.k": [1, 3], "ablation.retrievers": ["faiss"], "distill.teacher": "rag"},
    )
    table = PipelineSettings.from_experiment(config).ablation_table()
    assert table.input_dirs() == [
        "rollouts/eval-base",
        "ablation/k1-faiss/rollouts/teacher",
        "ablation/k1-faiss/adapters/distill",
        "ablation/k1-faiss/rollouts/eval-rag",
        "ablation/k1-faiss/rollouts/eval-distill",
        "rollouts/teacher",
        "adapters/distill",
        "rollouts/eval-rag",
        "rollouts/eval-distill",
    ]


def test_a_point_plays_on_the_run_roots_warm_start() -> None:
    from ragdistill.flows.ablation import point_settings

    config = with_overrides(load_config(DEMO), {"ablation.k": [1], "ablation.retrievers": ["bm25"]})
    assert config.warm_start.enabled, "the demo config warm-starts its agent"
    stages = PipelineSettings.from_experiment(config)
    point = next(point for point in stages.ablation_table().points if not point.is_pipeline)
    at_point = point_settings(stages, point, DEMO)
    assert at_point.ctx.run_root != stages.ctx.run_root
    assert at_point.ctx.warm_start_root == stages.ctx.run_root
    assert at_point.teacher.role == stages.teacher.role and at_point.teacher.role.warm_start


def context(root: str) -> RunContext:
    return RunContext(run_root=root, run_name="ablation-test")


def finished_folder(store: ArtifactStore, folder: str, files: dict[str, str]) -> str:
    for name, text in files.items():
        store.write_text(f"{folder}/{name}", text)
    return write_manifest(store, folder, folder, "identity-1", list(files), counts={"hints": 2}).digest


def test_a_point_takes_the_run_roots_hint_bank_file_for_file_and_keeps_a_current_copy(tmp_path: Path) -> None:
    parent = ArtifactStore(f"file://{tmp_path}/run")
    digest = finished_folder(parent, "hints", {"bank.jsonl": '{"id": "a"}\n', "rejected.jsonl": ""})
    point = AblationPoint(retriever="bm25", k=1, root="ablation/k1-bm25")
    root = point_root(parent.root_url, point)
    assert root == parent.uri("ablation/k1-bm25")
    copied = prepare_point(context(parent.root_url), context(root), ["hints"])
    child = ArtifactStore(root)
    assert copied["hints"].digest == digest == read_manifest(child, "hints").digest
    assert child.read_text("hints/bank.jsonl") == '{"id": "a"}\n'
    assert copied["hints"].counts == {"hints": 2}
    written = child.path("hints/manifest.json")
    before = Path(written).stat().st_mtime_ns
    again = prepare_point(context(parent.root_url), context(root), ["hints"])
    assert again["hints"].identity == copied["hints"].identity
    assert Path(written).stat().st_mtime_ns == before, "a current copy is not written again"

    finished_folder(parent, "hints", {"bank.jsonl": '{"id": "b"}\n', "rejected.jsonl": ""})
    changed = prepare_point(context(parent.root_url), context(root), ["hints"])
    assert changed["hints"].digest != digest and child.read_text("hints/bank.jsonl") == '{"id": "b"}\n'


def test_a_point_refuses_an_unfinished_folder_and_its_own_run_root(tmp_path: Path) -> None:
    parent = f"file://{tmp_path}/run"
    child = f"file://{tmp_path}/run/ablation/k1-faiss"
    with pytest.raises(ArtifactError, match=r"hints/manifest\.json is missing.*ragdistill mine"):
        prepare_point(context(parent), context(child), ["hints"])
    with pytest.raises(ValueError, match="copies nothing"):
        prepare_point(context(parent), context(parent), ["hints"])
    with pytest.raises(ValueError, match="copies only"):
        prepare_point(context(parent), context(child), ["rollouts/base"])


def episode(success: bool, tokens: int, retrieval: int) -> EpisodeRecord:
    step = Step(
        output="go to desk 1",
        action="go to desk 1",
        is_think=False,
        observation="Nothing happens.",
        reward=0.0,
        done=success,
        prompt_tokens=tokens,
        completion_tokens=0,
    )
    return EpisodeRecord(
        run_id="run-1",
        env="alfworld",
        split="valid_unseen",
        task_id=f"put-{success}-{tokens}",
        task_type="put",
        instruction="put a mug in desk.",
        agent="react",
        source="teacher",
        model="m",
        adapter=None,
        seed=42,
        prompt=[Segment("task", "user", "put a mug in desk.")],
        steps=[step],
        success=success,
        score=float(success),
        env_steps=1,
        model_calls=1,
        policy_prompt_tokens=tokens,
        retrieval_tokens=retrieval,
    )


def test_the_table_shows_each_points_headline_tokens_and_why_a_method_did_not_run() -> None:
    rag = compute_metrics([episode(True, 2000, 500), episode(False, 4000, 500)], "Nothing happens.")
    rows = [
        AblationRow(
            "faiss", 1, False, {"rag": MethodCell(rag), "distill": MethodCell(None, "empty set")}, (3, 8)
        ),
        AblationRow("faiss", 3, True, {"rag": MethodCell(rag)}),
    ]
    base = MethodCell(compute_metrics([episode(False, 1000, 0)], "Nothing happens."))
    text = render_ablation_table(
        rows,
        ["rag", "distill"],
        run_name="demo",
        env="alfworld",
        eval_split="valid_unseen",
        headline="success",
        base=base,
        grid="k 1, 3 × faiss",
    )
    lines = text.splitlines()
    assert "Grid: k 1, 3 × faiss." in lines
    header = next(line for line in lines if line.startswith("| retriever"))
    assert header == (
        "| retriever | k | RAG teacher success % [95% CI] | RAG teacher tokens/episode (retrieval) "
        "| Distilled success % [95% CI] | Distilled tokens/episode (retrieval) | teacher wins on training tasks |"
    )
    first, second = (line for line in lines if line.startswith("| faiss"))
    assert first.startswith("| faiss | 1 | 50.0 [9.5, 90.5] | 3.5k (0.5k) | — (empty set) | — | 3/8 |")
    assert second.startswith("| faiss * | 3 |") and second.endswith("| — (not asked for) | — | — |")
    assert lines[-1] == "Base agent (no hints), same tasks: 0.0 [0.0, 79.3], 1.0k (0.0k) tokens/episode."
    score = render_ablation_table(
        rows[1:], ["rag"], run_name="d", env="webshop", eval_split="test", headline="score", base=MethodCell()
    )
    assert "| faiss * | 3 | 50.0 (success 50.0) | 3.5k (0.5k) |" in score
    assert score.splitlines()[-1] == "Base agent (no hints): — (not run)."


HINTS = [
    "Open {container} before looking for {object} inside it.",
    "Go to the {location} named in the task before searching elsewhere.",
    "Take {object} only after you have seen it in a room.",
    "Check your inventory before you put {object} anywhere.",
]


def agent_and_extractor_double() -> AgentAndExtractorDouble:
    """test_pipeline_flow's double with four distinct hints, so k decides how many an episode is given."""
    return AgentAndExtractorDouble(HINTS)


@pytest.fixture
def ablation_config(tmp_path: Path) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    data["run"]["run_root"] = f"file://{tmp_path}/run"
    data["env"].update(limit=2, workers=1, data_dir=str(REPO / "data"))
    data["agent"]["max_calls"] = 3
    data["distill"] = {"teacher": "rag"}  # the double wins nothing: every distill set is empty
    data["warm_start"] = {"enabled": False}  # the double plays no checkpoint (tests/test_warm_start.py)
    data["evaluation"].update(limit=2)
    data["ablation"] = {
        "k": [1, 3],
        "retrievers": ["faiss", "bm25"],
        "design": "cross",
        "methods": ["rag", "distill"],
    }
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_ablation(config_path: Path, double: AgentAndExtractorDouble) -> tuple[dict, dict[str, list[str]]]:
    """The flow on the test server: its summary and the final state names of its task runs, by the task
    run's name without the environment and run it names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from ragdistill.flows.ablation import ablation_flow

    config = load_config(config_path)
    shared._BACKENDS[shared._key(config.models.agent)] = double
    state = ablation_flow(str(config_path), return_state=True)
    summary = state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    states: dict[str, list[str]] = {}
    for run in runs:
        name = run.name.removesuffix(f"-{config.env.name}-{config.run.name}")
        states.setdefault(name.split(f"-{config.env.name}-")[0], []).append(run.state_name or "")
    return summary, states


@pytest.mark.slow
def test_the_ablation_flow_reruns_only_the_teacher_and_what_follows_per_point_and_writes_one_table(
    prefect_server: None, ablation_config: Path
) -> None:
    double = agent_and_extractor_double()
    summary, states = run_ablation(ablation_config, double)
    assert {
        name: len(found) for name, found in states.items() if name in ("rollout-base", "mine", "index")
    } == {
        "rollout-base": 1,
        "mine": 1,
        "index": 1,
    }, "the stages before the teacher run once, for every point"
    assert len(states["teach"]) == 4 and len(states["evaluate-rag"]) == 4, (
        "the teacher and its evaluation per point"
    )
    assert len(states["evaluate-base"]) == 1
    assert set(summary) >= {"k1-faiss", "k3-faiss", "k1-bm25", "k3-bm25", "table"}
    assert summary["table"] == {"points": 4, "evaluated": 4}, (
        "rag at every point; no distill set is non-empty"
    )

    config = load_config(ablation_config)
    store = ArtifactStore(config.run.run_root)
    bank = read_manifest(store, "hints").digest
    for label, k in (("k1-faiss", 1), ("k1-bm25", 1), ("k3-bm25", 3)):
        point = store.child(f"ablation/{label}")
        assert read_manifest(point, "hints").digest == bank, "every point retrieves from the pipeline's bank"
        assert point.exists("index/manifest.json") == label.endswith("faiss")
        for record in read_records(point, "rollouts/eval-rag"):
            assert len(record["hint_ids"]) == k
    for record in read_records(store, "rollouts/eval-rag"):
        assert len(record["hint_ids"]) == 3, "the config's own point is the run root's own evaluation"
    table = store.read_text("ablation/table/ablation.md")
    rows = [line for line in table.splitlines() if line.startswith(("| faiss", "| bm25"))]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| faiss", "1"],
        ["| faiss *", "3"],
        ["| bm25", "1"],
        ["| bm25", "3"],
    ]
    assert all("the distill training set is empty" in row or "empty" in row for row in rows)
    data = json.loads(store.read_text("ablation/table/ablation.json"))
    assert [point["label"] for point in data["points"]] == ["k1-faiss", "k3-faiss", "k1-bm25", "k3-bm25"]
    assert all(point["methods"]["rag"]["metrics"]["episodes"] == 2 for point in data["points"])
    assert data["base"]["metrics"]["episodes"] == 2
    calls = double.calls

    again, states = run_ablation(ablation_config, double)
    assert double.calls == calls, "a second run makes no model call"
    cached = {
        name: set(found)
        for name, found in states.items()
        if not name.startswith(("prepare-", "evaluate-distill"))
    }
    assert all(found == {"Cached"} for found in cached.values()), cached
    assert again["table"] == summary["table"]
