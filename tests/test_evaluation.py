"""Stage E: Wilson intervals, metrics on real episode records, the markdown report and the figure."""

from __future__ import annotations

import itertools
import json
import math
import struct
from pathlib import Path

import pytest

from ragdistill.episodes import EpisodeRecord, Step
from ragdistill.evaluation import (
    MethodMetrics,
    MethodResult,
    ReportInputs,
    TrainingSummary,
    compute_metrics,
    metrics_frame,
    paper_rows_for_config,
    render_report,
    wilson_interval,
)
from ragdistill.evaluation.figure import FigurePoint, accuracy_tokens_figure, figure_points
from ragdistill.evaluation.report import format_tokens
from ragdistill.messages import Segment

INVALID = "Nothing happens."
"""What the environment of these records answers to an action it cannot carry out."""


def step(observation: str, *, think: bool = False, parse_error: str | None = None) -> Step:
    return Step(
        output="think: plan" if think else "go to desk 1",
        action=None if think or parse_error else "go to desk 1",
        is_think=think,
        observation=observation,
        reward=0.0,
        done=False,
        prompt_tokens=10,
        completion_tokens=2,
        parse_error=parse_error,
    )


def record(
    task_type: str,
    steps: list[Step],
    *,
    success: bool,
    prompt_tokens: int,
    completion_tokens: int,
    retrieval_tokens: int = 0,
    stop_reason: str = "done",
    agent: str = "react",
    source: str = "agent",
) -> EpisodeRecord:
    return EpisodeRecord(
        run_id="run-1",
        env="alfworld",
        split="valid_unseen",
        task_id=f"{task_type}-{len(steps)}-{success}",
        task_type=task_type,
        instruction="Your task is to: put a mug in the desk.",
        agent=agent,
        source=source,  # type: ignore[arg-type]
        model="test-model",
        adapter=None,
        seed=42,
        prompt=[Segment("system", "system", "Act in a household."), Segment("task", "user", "Put a mug.")],
        steps=steps,
        success=success,
        score=1.0 if success else 0.25,
        env_steps=sum(1 for s in steps if not s.is_think),
        model_calls=len(steps),
        policy_prompt_tokens=prompt_tokens,
        policy_completion_tokens=completion_tokens,
        retrieval_tokens=retrieval_tokens,
        stop_reason=stop_reason,  # type: ignore[arg-type]
    )


def mixed_records() -> list[EpisodeRecord]:
    return [
        record(
            "put",
            [
                step("OK.", think=True),
                step("You arrive at desk 1."),
                step("Nothing happens."),
                step("You win."),
            ],
            success=True,
            prompt_tokens=1000,
            completion_tokens=100,
            retrieval_tokens=50,
        ),
        record(
            "put",
            [step("Nothing happens. "), step("Nothing happens.", parse_error="no action line")],
            success=False,
            prompt_tokens=2000,
            completion_tokens=200,
            retrieval_tokens=50,
            stop_reason="max_calls",
        ),
        record(
            "clean",
            [step("Nothing happens.", think=True), step("You clean the mug."), step("You win.")],
            success=True,
            prompt_tokens=600,
            completion_tokens=60,
        ),
        record("clean", [], success=False, prompt_tokens=0, completion_tokens=0, stop_reason="error"),
    ]


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (0, 12, 0.0, 0.2425),
        (6, 12, 0.2538, 0.7462),
        (12, 12, 0.7575, 1.0),
        # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (Wilson score).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (29, 29, 0.8830, 1.0),
    ],
)
def test_wilson_interval_matches_published_values(
    successes: int, trials: int, low: float, high: float
) -> None:
    interval = wilson_interval(successes, trials)
    assert interval is not None
    assert interval[0] == pytest.approx(low, abs=5e-5)
    assert interval[1] == pytest.approx(high, abs=5e-5)


def test_wilson_interval_edge_cases() -> None:
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)


def test_metrics_on_hand_built_records() -> None:
    metrics = compute_metrics(mixed_records(), INVALID)

    assert (metrics.episodes, metrics.successes) == (4, 2)
    assert metrics.success_percent == pytest.approx(50.0)
    interval = wilson_interval(2, 4)
    assert interval is not None
    assert metrics.success_ci_low == pytest.approx(100 * interval[0])
    assert metrics.success_ci_high == pytest.approx(100 * interval[1])
    assert metrics.mean_score == pytest.approx((1 + 0.25 + 1 + 0.25) / 4)
    assert metrics.score_percent == pytest.approx(62.5)
    assert metrics.mean_env_steps == pytest.approx((3 + 2 + 2 + 0) / 4)
    assert metrics.mean_model_calls == pytest.approx((4 + 2 + 3 + 0) / 4)
    # Think calls never reach the environment: the think answered "Nothing happens." is not invalid.
    assert (metrics.think_calls, metrics.non_think_calls) == (2, 7)
    assert metrics.invalid_actions == 3
    assert metrics.invalid_action_percent == pytest.approx(100 * 3 / 7)
    assert metrics.episodes_with_invalid_action == 2
    assert metrics.episodes_with_invalid_action_percent == pytest.approx(50.0)
    assert metrics.parse_error_calls == 1
    assert metrics.error_episodes == 1
    assert metrics.stop_reasons == {"done": 2, "error": 1, "max_calls": 1}
    policy = 1100 + 2200 + 660
    assert metrics.policy_tokens_per_episode == pytest.approx(policy / 4)
    assert metrics.retrieval_tokens_per_episode == pytest.approx(100 / 4)
    assert metrics.total_tokens_per_episode == pytest.approx((policy + 100) / 4)
    assert metrics.tokens_per_success == pytest.approx((policy + 100) / 2)
    assert metrics.agents == {"react": 4} and metrics.sources == {"agent": 4}

    assert set(metrics.by_task_type) == {"clean", "put"}
    put, clean = metrics.by_task_type["put"], metrics.by_task_type["clean"]
    assert (put.episodes, put.successes, put.invalid_actions, put.non_think_calls) == (2, 1, 3, 5)
    assert put.invalid_action_percent == pytest.approx(60.0)
    assert (clean.episodes, clean.successes, clean.invalid_actions) == (2, 1, 0)
    assert clean.invalid_action_percent == pytest.approx(0.0)
    assert clean.error_episodes == 1
    assert put.by_task_type == {}


def test_invalid_observation_is_a_parameter() -> None:
    records = [
        record(
            "beauty",
            [step("Invalid action!"), step("Nothing happens."), step("Results: ...")],
            success=False,
            prompt_tokens=10,
            completion_tokens=1,
        )
    ]
    webshop = compute_metrics(records, invalid_observation="Invalid action!")
    assert webshop.invalid_actions == 1 and webshop.invalid_observation == "Invalid action!"
    assert compute_metrics(records, INVALID).invalid_actions == 1
    assert compute_metrics(records, invalid_observation="  Results: ...\n").invalid_actions == 1


def test_metrics_json_round_trip_has_no_nan() -> None:
    metrics = compute_metrics(mixed_records(), INVALID)
    text = json.dumps(metrics.to_dict(), allow_nan=False)
    restored = MethodMetrics.from_dict(json.loads(text))
    assert restored == metrics
    assert json.loads(text)["by_task_type"]["put"]["successes"] == 1


def test_empty_method_is_a_marked_result() -> None:
    metrics = compute_metrics([], INVALID)
    assert metrics.empty and metrics.episodes == 0
    data = metrics.to_dict()
    assert data["empty"] is True
    for key in ("success_percent", "success_ci_low", "mean_score", "total_tokens_per_episode"):
        assert data[key] is None
    assert data["invalid_action_percent"] is None and data["by_task_type"] == {}
    json.dumps(data, allow_nan=False)


def test_no_success_gives_no_tokens_per_success() -> None:
    failed = [record("put", [step("Nothing happens.")], success=False, prompt_tokens=5, completion_tokens=5)]
    metrics = compute_metrics(failed, INVALID)
    assert metrics.tokens_per_success is None
    assert metrics.success_percent == 0.0 and metrics.success_ci_low == 0.0  # exactly, not 1e-15
    assert metrics.success_ci_high is not None and metrics.success_ci_high > 0


def test_paper_rows_lookup() -> None:
    react = paper_rows_for_config("paper-alfworld-react")
    assert [row.model for row in react] == ["Qwen2.5-14B-Instruct", "Qwen2.5-7B-Instruct"]
    assert react[0].cells["distill"].value == 92.54 and react[0].cells["distill"].tokens_per_episode == 38_100
    assert react[1].cells["base"].value == 11.19 and react[1].cells["base"].tokens_per_episode is None
    stateact = paper_rows_for_config("paper-alfworld-stateact")
    assert stateact[0].cells["base"].value == 82.09
    webshop = paper_rows_for_config("paper-webshop-act")
    assert webshop[0].metric == "score" and webshop[0].cells["rag"].value == 66.97
    assert webshop[1].cells["distill"].value == 57.11
    assert paper_rows_for_config("demo-alfworld") == []


def metrics_with(successes: int, episodes: int, tokens: int, task_type: str = "put") -> MethodMetrics:
    records = [
        record(task_type, [step("ok")], success=i < successes, prompt_tokens=tokens, completion_tokens=0)
        for i in range(episodes)
    ]
    return compute_metrics(records, INVALID)


def report_inputs(config_name: str = "paper-alfworld-react") -> ReportInputs:
    return ReportInputs(
        run_name="laptop-check",
        config_name=config_name,
        env="alfworld",
        eval_split="valid_unseen",
        eval_task_count=4,
        model="SmolLM2-135M-Instruct",
        metrics=metrics_frame(
            [
                MethodResult("base", "react", metrics_with(1, 4, 1200)),
                MethodResult("rag", "react", metrics_with(2, 4, 1500)),
                MethodResult("sft", "react", None, "no successful base episodes to train on"),
                MethodResult("distill", "react", metrics_with(3, 4, 900)),
                MethodResult("base", "stateact", metrics_with(0, 3, 2000, task_type="clean")),
            ]
        ),
        datasets={
            "distill": {
                "examples": 3,
                "episodes": 5,
                "per_source": {"teacher": 3},
                "per_task_type": {"put": 2, "clean": 1},
                "skipped": {"failed": 2},
            }
        },
        training=[
            TrainingSummary(
                "distill", examples=3, steps=1, epochs=1.0, first_loss=2.5, final_loss=1.25, seconds=42
            ),
            TrainingSummary("sft", skipped_reason="empty dataset"),
        ],
        notes=["teacher source on the laptop: expert walkthroughs"],
        figure_path="accuracy_tokens.png",
    )


def test_report_has_the_paper_table_with_right_cells() -> None:
    text = render_report(report_inputs())
    lines = text.splitlines()
    assert "| Agent | Base | RAG teacher | SFT | Distilled |" in lines
    react_row = next(line for line in lines if line.startswith("| ReAct |"))
    assert react_row == "| ReAct | 25.00 (1.2k) | 50.00 (1.5k) | — [1] | 75.00 (900) |"
    stateact_row = next(line for line in lines if line.startswith("| StateAct |"))
    assert stateact_row == "| StateAct | 0.00 (2.0k) | — [2] | — [2] | — [2] |"
    assert "- [1] SFT · ReAct: no successful base episodes to train on" in lines
    assert "- [2] RAG teacher · StateAct, SFT · StateAct, Distilled · StateAct: not evaluated" in text
    assert "![Success rate against tokens per episode](accuracy_tokens.png)" in text
    assert "Base · StateAct: 3 episodes for 4 pinned tasks." in text


def test_report_shows_the_papers_numbers_for_a_paper_config() -> None:
    text = render_report(report_inputs("paper-alfworld-react"))
    assert "## The paper's numbers beside ours (alfworld, ReAct)" in text
    header = (
        "| Method | paper Qwen2.5-14B-Instruct | paper Qwen2.5-7B-Instruct | ours (SmolLM2-135M-Instruct) |"
    )
    assert header in text
    assert "| Base | 77.61 (47.7k) | 11.19 | 25.00 (1.2k) |" in text
    assert "| Distilled | 92.54 (38.1k) | 68.66 | 75.00 (900) |" in text
    assert "paper's numbers" not in render_report(report_inputs("demo-alfworld"))


def test_report_full_metrics_task_types_datasets_training_notes() -> None:
    text = render_report(report_inputs())
    assert "| Base | ReAct | 4 | 25.0 [4.6, 69.9] |" in text
    assert "| put | 25% (1/4) | 50% (2/4) | 75% (3/4) | — |" in text
    assert "| clean | — | — | — | 0% (0/3) |" in text
    assert "| distill | 3 | 5 | teacher: 3 | put: 2, clean: 1 | failed: 2 |" in text
    assert "| distill | 3 | 1 | 1 | 2.5000 | 1.2500 | 42 s |  |" in text
    assert "| sft | — | — | — | — | — | — | skipped: empty dataset |" in text
    assert "- teacher source on the laptop: expert walkthroughs" in text


def test_report_webshop_headline_is_the_score() -> None:
    inputs = report_inputs("paper-webshop-act")
    inputs.headline = "score"
    inputs.metrics = metrics_frame(
        [MethodResult("base", "act", metrics_with(1, 2, 5500, task_type="beauty"))]
    )
    text = render_report(inputs)
    assert "| Act | 62.50 (5.5k) |" in text
    assert "| Base | 61.51 (5.5k) | 44.05 | 62.50 (5.5k) |" in text


def test_format_tokens() -> None:
    assert [format_tokens(v) for v in (None, 0, 999, 1000, 47_700)] == ["—", "0", "999", "1.0k", "47.7k"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def boxes_overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_figure_for_sixteen_crowded_points(tmp_path: Path) -> None:
    methods, agents = ("base", "rag", "sft", "distill"), ("react", "act", "stateact", "other")
    points = [
        FigurePoint(method, agent, 4000 + 150 * (i % 3), 60 + (i % 2), 45, 75)
        for i, (method, agent) in enumerate(itertools.product(methods, agents))
    ]
    layout = accuracy_tokens_figure(points, tmp_path / "figure.png", "Crowded")
    assert png_size(layout.path) == (layout.width_px, layout.height_px) == (1350, 840)
    assert layout.path.stat().st_size > 20_000
    assert len(layout.label_boxes) == 16
    for a, b in itertools.combinations(layout.label_boxes, 2):
        assert not boxes_overlap(a, b)
    for box in layout.label_boxes:
        for x, y in layout.point_positions:
            assert not boxes_overlap(box, (x - 3, y - 3, x + 3, y + 3))
    # Identical positions cannot all be labelled next to the point: some labels sit away, on leaders.
    gaps = [
        math.hypot(x - min(max(x, box[0]), box[2]), y - min(max(y, box[1]), box[3]))
        for box, (x, y) in zip(layout.label_boxes, layout.point_positions, strict=True)
    ]
    assert min(gaps) < 20 and max(gaps) > 40


@pytest.mark.parametrize("count", [1, 8])
def test_figure_with_all_zero_success(tmp_path: Path, count: int) -> None:
    zero = metrics_with(0, 12, 800)
    cells = list(itertools.product(("react", "stateact"), ("base", "rag", "sft", "distill")))[:count]
    results = [MethodResult(method, agent, zero) for agent, method in cells]
    results.append(MethodResult("distill", "act", None, "not trained"))
    points = figure_points(metrics_frame(results))
    assert len(points) == count
    assert all(p.success_percent == 0 and p.ci_high == pytest.approx(24.25, abs=0.01) for p in points)
    layout = accuracy_tokens_figure(points, tmp_path / "nested" / "zero.png", "All zero")
    assert png_size(layout.path) == (1350, 840)
    for a, b in itertools.combinations(layout.label_boxes, 2):
        assert not boxes_overlap(a, b)


def test_figure_needs_a_point(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        accuracy_tokens_figure([], tmp_path / "none.png", "Nothing")
    assert figure_points(metrics_frame([MethodResult("base", "react", compute_metrics([], INVALID))])) == []
