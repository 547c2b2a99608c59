"""Evaluation seeds (``evaluation.seeds``): each seed is an evaluation of its own, cached on its own; one
seed is the evaluation a run always had; the report shows mean ± sd across seeds beside each run's
Wilson interval, and the promotion gate compares mean headlines.

The evaluations run through the real stage functions on the ``counter-double`` environment, with an
agent double whose play depends on the request's sampling seed.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
from pydantic import ValidationError

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.config.stages import PipelineSettings, pipeline_stage_settings
from ragdistill.evaluation import read_metrics, wilson_interval
from ragdistill.inference.base import ChatMessage, Generation, GenerationRequest
from ragdistill.layout import rerun_command
from ragdistill.stages.evaluation import run_evaluation
from ragdistill.stages.lifecycle import stage_identity, upstream_inputs
from ragdistill.stages.report import run_report, write_run_file
from ragdistill.store import ArtifactStore, Manifest, read_manifest, read_records
from test_stages import counter_config


class SeededPolicy:
    """Plays the counter game by the request's seed: under ``winning_seed`` it always counts up (every
    task won); under any other seed only on tasks t0 and t1 (half of four tasks won)."""

    name = "seeded-policy"

    def __init__(self, winning_seed: int = 42) -> None:
        self.winning_seed = winning_seed
        self.requests: list[GenerationRequest] = []

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        return sum(len(m.content.split()) + 1 for m in messages), len(completion.split())

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.requests.extend(requests)
        out = []
        for request in requests:
            text = " ".join(message.content for message in request.messages)
            wins = request.seed == self.winning_seed or "start t0 " in text or "start t1 " in text
            action = "inc" if wins else "wait"
            prompt, completion = self.count_tokens(request.messages, action)
            out.append(Generation(action, "stop", prompt, completion))
        return out

    def close(self) -> None:
        pass


def seeds_config(tmp_path: Path, seeds: list[int] | None) -> ExperimentConfig:
    return counter_config(
        tmp_path,
        **{
            "run.name": "seeds",
            "evaluation.split": "test",
            "evaluation.limit": 4,
            "evaluation.methods": ["base"],
            "evaluation.seeds": seeds,
        },
    )


def evaluate(config: ExperimentConfig, seed: int, backend: SeededPolicy) -> Manifest:
    stages = PipelineSettings.from_experiment(config)
    settings = stages.evaluation("base", seed)
    manifest = run_evaluation(
        stages.ctx, settings, upstream_inputs(ArtifactStore(stages.ctx.run_root), settings), backend=backend
    )
    assert isinstance(manifest, Manifest)
    return manifest


@pytest.mark.parametrize(
    ("seeds", "problem"),
    [
        ([42, 7, 42], "Value error, repeats seed(s) 42: list each sampling seed once"),
        ([2**32], "Value error, seed 4294967296 is not a sampling seed: give seeds from 0 to 2**32 - 1"),
        ([-1], "Value error, seed -1 is not a sampling seed"),
        ([], "List should have at least 1 item"),
        (list(range(21)), "List should have at most 20 items"),
    ],
)
def test_evaluation_seeds_are_distinct_sampling_seeds(seeds: list[int], problem: str) -> None:
    with pytest.raises((ValidationError, ValueError), match=re.escape(f"evaluation.seeds: {problem}")):
        with_overrides(ExperimentConfig(), {"evaluation.seeds": seeds})


def test_one_seed_is_the_evaluation_a_run_always_had(tmp_path: Path) -> None:
    """No seeds, or only the agent's own: the same settings, identity and folder as before seeds."""
    unset = PipelineSettings.from_experiment(seeds_config(tmp_path, None))
    own = PipelineSettings.from_experiment(seeds_config(tmp_path, [42]))
    assert unset.evaluation_seeds.seeds == [42] and unset.config.models.agent.sampling.seed == 42
    for method in ("base", "rag", "sft", "distill"):
        (evaluation,) = unset.evaluations(method)
        assert evaluation == unset.evaluation(method) == own.evaluation(method)
        assert evaluation.stage_dir() == f"rollouts/eval-{method}" and evaluation.label == method
        assert evaluation.role == unset.rollout().role, "the agent samples under its own settings"
        assert stage_identity(evaluation, {}).key == stage_identity(own.evaluation(method), {}).key
    assert pipeline_stage_settings(unset.config).keys() == pipeline_stage_settings(own.config).keys()
    rollouts = [folder for folder in unset.report().input_dirs() if folder.startswith("rollouts/")]
    assert rollouts == [f"rollouts/eval-{method}" for method in unset.config.evaluation.methods]


def test_each_seed_is_an_evaluation_of_its_own_named_by_its_seed(tmp_path: Path) -> None:
    stages = PipelineSettings.from_experiment(seeds_config(tmp_path, [7, 42, 1234]))
    evaluations = stages.evaluations("distill")
    assert [e.stage for e in evaluations] == ["eval-distill-seed7", "eval-distill", "eval-distill-seed1234"]
    assert [e.role.sampling.seed for e in evaluations] == [7, 42, 1234]
    assert stages.evaluation("distill") == evaluations[0], "the default is the first seed listed"
    keys = {stage_identity(e, {}).key for e in evaluations}
    assert len(keys) == 3, "each seed is cached on its own"
    own = evaluations[1].model_dump()
    for other in (evaluations[0], evaluations[2]):
        differing = {key for key, value in other.model_dump().items() if own[key] != value}
        assert differing == {"stage", "role"}
        assert other.role.model_dump(exclude={"sampling"}) == evaluations[1].role.model_dump(
            exclude={"sampling"}
        )
    folders = stages.report().input_dirs()
    assert {"rollouts/eval-base-seed7", "rollouts/eval-base", "rollouts/eval-base-seed1234"} <= set(folders)
    promotion = set(stages.promotion().input_dirs())
    assert {
        "rollouts/eval-distill-seed7",
        "rollouts/eval-sft-seed1234",
        "rollouts/eval-base-seed7",
    } <= promotion
    assert (
        rerun_command("rollouts/eval-distill-seed7")
        == "ragdistill evaluate -c CONFIG --method distill --seed 7"
    )
    assert rerun_command("rollouts/eval-distill") == "ragdistill evaluate -c CONFIG --method distill"
    with pytest.raises(
        ValueError, match=r"seed 5 is not an evaluation seed of this config \(evaluation.seeds: 7"
    ):
        stages.evaluation("base", 5)


def test_seeds_without_the_agents_own_use_no_unseeded_folder(tmp_path: Path) -> None:
    stages = PipelineSettings.from_experiment(seeds_config(tmp_path, [1, 2]))
    assert [e.stage for e in stages.evaluations("base")] == ["eval-base-seed1", "eval-base-seed2"]
    assert "rollouts/eval-base" not in stages.promotion().input_dirs()


def test_two_seeds_are_two_cached_evaluations_and_the_report_shows_their_mean_and_sd(tmp_path: Path) -> None:
    config = seeds_config(tmp_path, [42, 43])
    store = ArtifactStore(config.run.run_root)
    policy = SeededPolicy(winning_seed=42)
    own, other = evaluate(config, 42, policy), evaluate(config, 43, policy)
    assert (own.counts["episodes"], own.counts["won"]) == (4, 4)
    assert (other.counts["episodes"], other.counts["won"]) == (4, 2)
    assert read_manifest(store, "rollouts/eval-base").digest == own.digest
    assert read_manifest(store, "rollouts/eval-base-seed43").digest == other.digest
    records = read_records(store, "rollouts/eval-base-seed43", other)
    assert {record["seed"] for record in records} == {43}, "the episodes record the seed they sampled under"
    assert {request.seed for request in policy.requests} == {42, 43}

    played = len(policy.requests)
    assert evaluate(config, 43, policy).identity == other.identity
    assert evaluate(config, 42, policy).identity == own.identity
    assert len(policy.requests) == played, "both seeds are cached: nothing is played again"

    stages = PipelineSettings.from_experiment(config)
    write_run_file(store, "seeds", config.model_dump(mode="json"))
    report_settings = stages.report("seeds")
    manifest = run_report(stages.ctx, report_settings, upstream_inputs(store, report_settings))
    assert manifest.counts == {"methods": 1, "evaluations": 2, "figure": 1}

    text = store.read_text("reports/report.md")
    sd = statistics.stdev([100.0, 50.0])
    (cell,) = [line for line in text.splitlines() if line.startswith("| ReAct |") and "±" in line]
    assert cell.startswith(f"| ReAct | 75.00 ± {sd:.2f} (")
    full, half = wilson_interval(4, 4), wilson_interval(2, 4)
    assert full is not None and half is not None
    per_run = f"42: 100.0 [{100 * full[0]:.1f}, 100.0]; 43: 50.0 [{100 * half[0]:.1f}, {100 * half[1]:.1f}]"
    assert f"| Base | ReAct | 2 of 2 | 75.0 ± {sd:.1f} | {per_run} |" in text
    assert "| Base | ReAct | 43 | 4 | 50.0 [" in text, "every run keeps its own row with its interval"
    assert "Seeds: every method was evaluated with the agent sampling under seeds 42, 43" in text
    assert "Decoding is greedy (temperature 0)" in text

    metrics = json.loads(store.read_text("reports/metrics.json"))
    assert [(r["method"], r["seed"], r["metrics"]["successes"]) for r in metrics["results"]] == [
        ("base", 42, 4),
        ("base", 43, 2),
    ]
    (across,) = metrics["across_seeds"]
    assert across["seeds"] == [42, 43] and across["runs"] == 2
    assert across["success_percent_mean"] == 75.0 and across["success_percent_sd"] == pytest.approx(sd)
    frame = read_metrics(store.local_path("reports/metrics.parquet"))
    whole = frame[frame.task_type == "all"]
    assert whole.seed.tolist() == [42, 43] and whole.success_percent.tolist() == [100.0, 50.0]


def test_the_promotion_gate_compares_the_mean_over_seeds(tmp_path: Path) -> None:
    from test_adapter_registry import promote, train, write_upstream

    config = with_overrides(
        ExperimentConfig(),
        {
            "run.run_root": f"file://{tmp_path}/run",
            "run.name": "gate-seeds",
            "evaluation.seeds": [42, 43, 44],
        },
    )
    store = ArtifactStore(config.run.run_root)
    write_upstream(store)
    trained = train(store, "distill", b"weights")
    stages = PipelineSettings.from_experiment(config)
    base_wins, student_wins = {42: 3, 43: 5, 44: 4}, {42: 6, 43: 4, 44: 5}
    for wins, method in ((base_wins, "base"), (student_wins, "distill")):
        for evaluation in stages.evaluations(method):
            inputs = {"adapters/distill": trained.digest} if method == "distill" else {}
            write_evaluation(store, evaluation.stage_dir(), wins[evaluation.role.sampling.seed], inputs)

    decision = promote(config).extra["decision"]
    assert decision["promoted"] is True and decision["reference"] == "base"
    assert (
        "success 50.0% ± 10.0 (mean ± sd of 3 seeds) on 10 valid_unseen episodes each" in decision["reason"]
    )
    assert "against the base agent's 40.0: +10.0 points" in decision["reason"]

    store.delete("rollouts/eval-distill-seed44")
    store.delete("promotion")
    undecided = promote(config).extra["decision"]
    assert undecided["promoted"] is False
    assert "the distill evaluation under seed 44 has not finished" in undecided["reason"]
    assert "ragdistill evaluate -c CONFIG --method distill --seed 44" in undecided["reason"]


def write_evaluation(store: ArtifactStore, folder: str, wins: int, inputs: dict[str, str]) -> None:
    """A finished evaluation folder: ten tasks, the first ``wins`` won (as ``test_adapter_registry``)."""
    from ragdistill.environments.base import TaskInfo
    from ragdistill.episodes import EpisodeRecord
    from ragdistill.messages import Segment
    from test_adapter_registry import EVAL_TASKS, write_stage

    lines = []
    for index, task_id in enumerate(EVAL_TASKS):
        record = EpisodeRecord.for_task(
            TaskInfo("alfworld", "valid_unseen", task_id, "pick"), run_id="r", agent="react", source="agent",
            model="smollm2-135m", prompt=[Segment("task", "user", "do it")], success=index < wins,
            score=float(index < wins), policy_prompt_tokens=100, policy_completion_tokens=10,
        )  # fmt: skip
        lines.append(json.dumps(record.to_dict()) + "\n")
    tasks = {
        "env": "alfworld",
        "split": "valid_unseen",
        "environment_version": {"games": "1"},
        "task_ids": EVAL_TASKS,
    }
    files = {"shard-00000.jsonl": "".join(lines).encode(), "tasks.json": json.dumps(tasks).encode()}
    write_stage(store, folder, files, counts={"episodes": len(EVAL_TASKS), "won": wins}, inputs=inputs)


def test_the_evaluate_flow_runs_one_cached_task_per_seed(prefect_server: None, tmp_path: Path) -> None:
    """Through Prefect: a task run per seed, named by it, each served from the cache when run again."""
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from ragdistill.flows.standalone import evaluate_flow
    from ragdistill.inference import shared

    config = seeds_config(tmp_path, [42, 43])
    config = with_overrides(config, {"env.workers": 1, "run.name": "seeds-flow"})
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    policy = SeededPolicy(winning_seed=42)
    shared._BACKENDS[shared._key(config.models.agent)] = policy

    def run() -> tuple[dict, dict[str, str]]:
        state = evaluate_flow(str(path), return_state=True)
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
        return state.result(), {run.name: run.state_name for run in runs}

    counts, states = run()
    assert {name: counts[name]["won"] for name in counts} == {"base": 4, "base-seed43": 2}
    suffix = "-counter-double-seeds-flow"
    assert states == {f"evaluate-base{suffix}": "Completed", f"evaluate-base-seed43{suffix}": "Completed"}
    played = len(policy.requests)
    again, states = run()
    assert again == counts and set(states.values()) == {"Cached"} and len(policy.requests) == played
