"""A Prefect process worker for the project's work pools, run as a subprocess of ``ragdistill serve``, and
the pools' base job template.

The worker polls the server for the pool's scheduled runs and starts each as a subprocess of its own, in
the pool's working folder. It leads its own process group, so stopping it also stops the flow runs it
started, and a Ctrl-C in the terminal reaches ``ragdistill serve`` alone, which stops it in order.

The pools' template (:func:`project_job_template`) is Prefect's process template with the command, the
working folder and the environment fixed by the operator: a flow run created through the API can set
none of them (with them, a run would choose what the worker executes, e.g. ``PYTHONWARNINGS`` plus
``BROWSER`` in ``env`` runs any command).

The worker's flow runs send heartbeats at the period the crash automation was sized for
(``orchestration.heartbeats``): a run whose worker died with it is marked Crashed, not left Running.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from ragdistill.orchestration.heartbeats import HeartbeatSettings
from ragdistill.orchestration.server import API_URL_ENV, configure_prefect_home

WORK_POOL = "ragdistill-process"
"""The project's CPU work pool, which ``ragdistill deploy`` creates: every deployment runs on it unless
its flow does work the deployed config puts on GPUs (``ragdistill.deployments.specs.gpu_work``)."""
GPU_WORK_POOL = "ragdistill-gpu"
"""The pool of deployments whose flow runs models or trains on GPUs; its workers run on GPU machines."""
WORK_POOL_TYPE = "process"
"""A process worker runs each flow run as a subprocess, in the deployment's working folder."""
STOP_GRACE_S = 30.0
"""How long a stopping worker may take to mark its runs and exit before it is killed."""
OPERATOR_JOB_VARIABLES = ("command", "working_dir", "env")
"""The process template's variables that only the pool's template sets, never a deployment or a run."""


def project_job_template(working_dir: Path) -> dict[str, Any]:
    """Prefect's base job template for process pools, with :data:`OPERATOR_JOB_VARIABLES` removed from its
    variables (which accept no other keys, so the server refuses a deployment or a flow run that sets
    one) and from its job configuration: every flow run starts as Prefect's own engine command, in
    ``working_dir`` (the project folder, where config names, ``data/`` and relative run roots resolve),
    with the worker's environment."""
    from prefect.workers.process import ProcessWorker

    template = copy.deepcopy(ProcessWorker.get_default_base_job_template())
    variables = template["variables"]
    for name in OPERATOR_JOB_VARIABLES:
        variables["properties"].pop(name, None)
        template["job_configuration"].pop(name, None)
    variables["required"] = [
        name for name in variables.get("required", []) if name in variables["properties"]
    ]
    variables["additionalProperties"] = False
    template["job_configuration"]["working_dir"] = str(working_dir.absolute())
    return template


def start_worker(
    api_url: str,
    work_pool: str = WORK_POOL,
    limit: int | None = None,
    output: IO[bytes] | int | None = None,
    environment: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``prefect worker start`` for ``work_pool`` against ``api_url``, with the project's Prefect home;
    at most ``limit`` flow runs at once (None: no limit). Its flow runs send heartbeats at the period of
    :meth:`HeartbeatSettings.from_environment`. Its output goes to ``output`` (default: this process's),
    ``environment`` adds variables (e.g. ``PREFECT_WORKER_QUERY_SECONDS``)."""
    env = {
        **os.environ,
        **HeartbeatSettings.from_environment().worker_environment(),
        API_URL_ENV: api_url,
        "PREFECT_HOME": str(configure_prefect_home()),
    }
    env.update(environment or {})
    command = [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        work_pool,
        "--type",
        WORK_POOL_TYPE,
    ]
    if limit is not None:
        command += ["--limit", str(limit)]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def stop_worker(worker: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM to the worker's process group (it and its flow runs), SIGKILL to what is left after
    ``grace_s``; the worker's exit code."""
    for signal_number, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(worker.pid, signal_number)
        except ProcessLookupError:
            break
        try:
            worker.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)  # flow runs that outlived the worker
    return worker.wait()
