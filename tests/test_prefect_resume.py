"""A killed ``ragdistill pipeline`` resumes through Prefect without playing a finished episode again.

The run is the real CLI (``ragdistill.cli.main``, which runs the pipeline flow) in a subprocess reporting to
a real ``prefect server start`` (``orchestration.server``, on an empty Prefect home). Inside that
subprocess the environment is the ``counter-double`` (tests/env_doubles.py, played in real worker
processes) and the model a named test double, since a test double cannot be handed to a process any other
way; it writes one line per episode it starts and per hint-extraction request, so the test knows which
base episodes each run played. The first run is SIGKILLed, with its whole process group (the environment
workers too), once some base episodes are recorded; the second run, started the same way, must play only
the others and finish the pipeline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from ragdistill.config.stages import PipelineSettings
from ragdistill.episodes import EpisodeRecord
from ragdistill.orchestration.server import API_URL_ENV
from ragdistill.stages import run_rollout
from ragdistill.store import ArtifactStore, read_manifest, read_records
from test_prefect_server import fresh_prefect_home  # noqa: F401  (fixture)
from test_stages import PolicyDouble, counter_config

TESTS_DIR = Path(__file__).parent
REPO = TESTS_DIR.parent
TASKS = 6
BASE_PARTS = "rollouts/base/parts"

PIPELINE_SCRIPT = textwrap.dedent(
    """
    import re, sys
    sys.path.insert(0, {tests!r})
    import env_doubles  # registers the counter-double environment
    from test_stages import PolicyDouble
    from ragdistill.config import load_config
    from ragdistill.inference import shared
    from ragdistill import cli

    class LoggingPolicyDouble(PolicyDouble):
        name = "logging-policy-double"

        def generate(self, requests):
            with open({log!r}, "a") as log:
                for request in requests:
                    if request.json_schema is not None:
                        log.write("extract\\n")
                    elif not any(message.role == "assistant" for message in request.messages):
                        text = " ".join(message.content for message in request.messages)
                        log.write("episode " + re.search(r"start (t\\d+) in", text).group(1) + "\\n")
            return super().generate(requests)

    config = load_config({config!r})
    shared._BACKENDS[shared._key(config.models.agent)] = LoggingPolicyDouble("wait", delay_s={delay})
    sys.argv = ["ragdistill", "pipeline", "--config", {config!r}]
    cli.main()
    """
)


def start_pipeline(
    config_path: Path, log: Path, delay_s: float, api_url: str, output: Path
) -> subprocess.Popen:
    script = PIPELINE_SCRIPT.format(
        tests=str(TESTS_DIR), log=str(log), config=str(config_path), delay=delay_s
    )
    with output.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=REPO,
            env={**os.environ, API_URL_ENV: api_url},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill takes the environment workers too
        )


def base_episodes_started(log: Path) -> list[str]:
    """The task ids of the base episodes a run started: those before its first extraction request."""
    lines = log.read_text().splitlines() if log.exists() else []
    before_mining = lines[: lines.index("extract")] if "extract" in lines else lines
    return [line.split()[1] for line in before_mining if line.startswith("episode ")]


def recorded_parts(store: ArtifactStore) -> dict[str, str]:
    """task id -> the exact JSON line of each base episode appended so far."""
    found = {}
    for path in store.list(BASE_PARTS):
        if not Path(path).name.startswith("part-"):  # a part being written is a hidden temporary file
            continue
        text = store.read_text(path).strip()
        if text:
            found[EpisodeRecord.from_dict(json.loads(text)).task_id] = text
    return found


def final_task_run_states(task_run_name: str, timeout_s: float = 60) -> list[str]:
    """The state names of the task runs called ``task_run_name`` that reached a final state on the current
    API, once at least one has (the server records task runs from events, a moment after the run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[task_run_name]))
            )
        states = [run.state for run in runs if run.state is not None and run.state.is_final()]
        if states or time.monotonic() > deadline:
            return [state.name for state in states]
        time.sleep(1)


@pytest.mark.slow
def test_a_killed_pipeline_resumes_through_prefect_without_replaying_finished_episodes(
    fresh_prefect_home: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from ragdistill.orchestration.server import prefect_api

    settings = {
        "env.limit": TASKS,
        "env.workers": 1,
        "rollout.batch_size": 2,
        "retrieval.retriever": "bm25",
        "distill.teacher": "rag",
        "evaluation.limit": 2,
        "evaluation.methods": ["base"],
        "run.name": "resume-test",
    }
    config = counter_config(tmp_path, **settings)
    config_path = tmp_path / "resume.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    store = ArtifactStore(config.run.run_root)
    first_log, second_log = tmp_path / "first.calls", tmp_path / "second.calls"

    with prefect_api(timeout_s=600) as api_url:
        first = start_pipeline(config_path, first_log, 0.4, api_url, tmp_path / "first.out")
        deadline = time.monotonic() + 300
        while len(recorded_parts(store)) < 2:
            output = (tmp_path / "first.out").read_text(errors="replace")[-3000:]
            assert first.poll() is None and time.monotonic() < deadline, output
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        before_kill = recorded_parts(store)
        assert 2 <= len(before_kill) < TASKS and not store.exists("rollouts/base/manifest.json")

        second = start_pipeline(config_path, second_log, 0.0, api_url, tmp_path / "second.out")
        assert second.wait(timeout=900) == 0, (tmp_path / "second.out").read_text(errors="replace")[-4000:]
        rollout_states = final_task_run_states(f"rollout-base-{config.env.name}-{config.run.name}")
    assert rollout_states == ["Completed"], (
        f"the re-run's rollout-base ran (a cache hit is Cached): {rollout_states}"
    )

    replayed = base_episodes_started(second_log)
    assert sorted(replayed) == sorted(set(replayed)), "each pending episode was played once"
    assert not set(replayed) & set(before_kill), "no episode recorded before the kill was played again"
    manifest = read_manifest(store, "rollouts/base")
    final = {}
    for data in read_records(store, "rollouts/base", manifest):
        assert data["task_id"] not in final, f"{data['task_id']} is recorded twice"
        final[data["task_id"]] = data
    assert sorted(final) == sorted(f"t{index}" for index in range(TASKS))
    assert set(replayed) == set(final) - set(before_kill), "the rerun played exactly the missing episodes"
    for task_id, line in before_kill.items():
        assert final[task_id] == json.loads(line), f"{task_id} changed after the resume"
    assert store.exists("reports/report.md"), "the resumed run finished the whole pipeline"

    uninterrupted = PipelineSettings.from_experiment(counter_config(tmp_path / "uninterrupted", **settings))
    expected = run_rollout(uninterrupted.ctx, uninterrupted.rollout(), {}, backend=PolicyDouble("wait"))
    assert manifest.identity == expected.identity and manifest.counts == expected.counts
