"""Prefect's server on PostgreSQL, the database of the Compose deployment (docker-compose.yml).

The other server tests use Prefect's default SQLite. Here a real ``prefect server start`` stores
everything in a real PostgreSQL (Debian's ``postgresql`` package: the ``postgres_url`` fixture starts a
throwaway cluster, or uses ``$RAGDISTILL_TEST_POSTGRES_URL``), and the ``index`` deployment is run through
the API by a real process worker, as in tests/test_deployments.py, whose helpers this reuses.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from test_deployments import REPO, index_runs_by_a_worker, mined_config_to_deploy, task_states
from test_prefect_server import fresh_prefect_home  # noqa: F401  (fixture)

DATABASE_URL_ENV = "PREFECT_API_DATABASE_CONNECTION_URL"


async def stored_flow_run(postgres_url: str, flow_run_id: uuid.UUID) -> tuple[str, str] | None:
    """The flow run's (state type, deployment name) as the server stored them in PostgreSQL."""
    import asyncpg

    connection = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        row = await connection.fetchrow(
            "SELECT flow_run.state_type, deployment.name FROM flow_run"
            " JOIN deployment ON deployment.id = flow_run.deployment_id WHERE flow_run.id = $1",
            flow_run_id,
        )
    finally:
        await connection.close()
    return None if row is None else (str(row[0]), str(row[1]))


@pytest.mark.slow
def test_a_deployment_run_by_a_process_worker_completes_on_a_postgresql_server(
    fresh_prefect_home: Path,  # noqa: F811
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ragdistill.deployments.register import register_deployments
    from ragdistill.deployments.specs import DEPLOYMENT_NAME, DeploymentPlan
    from ragdistill.orchestration.server import prefect_api
    from ragdistill.store import ArtifactStore, read_manifest

    monkeypatch.setenv(DATABASE_URL_ENV, postgres_url)
    config, config_path, parameters = mined_config_to_deploy(tmp_path)
    worker_log = tmp_path / "worker.log"
    with prefect_api(timeout_s=600) as api_url:
        register_deployments(DeploymentPlan(str(config_path)), working_dir=REPO)
        (run,) = index_runs_by_a_worker(api_url, parameters, worker_log, count=1)
        states = task_states(run.id)
    log_tail = worker_log.read_text(errors="replace")[-4000:]

    assert run.state is not None and run.state.is_completed(), f"{run.state}\n{log_tail}"
    assert states == {f"index-{config.env.name}-{config.run.name}": "Completed"}, log_tail
    assert asyncio.run(stored_flow_run(postgres_url, run.id)) == ("COMPLETED", DEPLOYMENT_NAME)
    assert not list(fresh_prefect_home.glob("*.db")), "the server must not have used SQLite"
    assert read_manifest(ArtifactStore(config.run.run_root), "index").counts["hints"] >= 1
