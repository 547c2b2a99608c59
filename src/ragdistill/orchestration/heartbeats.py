"""Flow-run heartbeats: how often a deployment run tells the server it is alive, and how long a silence
means that its process is gone.

Prefect's flow engine emits a ``prefect.flow-run.heartbeat`` event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
seconds while a flow run runs (Prefect's setting: 180 s by default since Prefect 3.6.22, at least 30 s;
``PREFECT_RUNNER_HEARTBEAT_FREQUENCY`` is its old name). A worker that dies together with its runs (SIGKILL,
a lost machine, an evicted container) reports nothing more, so without heartbeats the server shows those
runs Running forever. The project's crash automation (``deployments.crashes``) marks a run Crashed once
``RAGDISTILL_CRASH_AFTER_S`` seconds passed after one of its heartbeats without another event of that run
(default: three heartbeat periods, the margin Prefect's guide and Prefect Cloud use).

Both values are read from the environment (:meth:`HeartbeatSettings.from_environment`), not from a Prefect
profile: ``ragdistill deploy``/``serve`` size the automation with them, and the worker that ``serve``
starts passes the frequency to its flow runs explicitly (:meth:`HeartbeatSettings.worker_environment`), so
heartbeats and automation agree. Workers started elsewhere (``prefect worker start``) need the same
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` as the ``deploy`` that sized the automation, or none (both 180 s).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ragdistill.errors import UserFacingError

HEARTBEAT_FREQUENCY_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
LEGACY_HEARTBEAT_FREQUENCY_ENV = "PREFECT_RUNNER_HEARTBEAT_FREQUENCY"
DEFAULT_HEARTBEAT_FREQUENCY_S = 180
"""Prefect's own default (3.6.22 and later)."""
MINIMUM_HEARTBEAT_FREQUENCY_S = 30
"""Prefect refuses a shorter period."""
CRASH_AFTER_ENV = "RAGDISTILL_CRASH_AFTER_S"
MISSED_HEARTBEATS = 3
"""The default silence before a run is marked Crashed, in heartbeat periods."""
MINIMUM_MISSED_HEARTBEATS = 2
"""The shortest silence allowed, in periods. A heartbeat can come late on a loaded machine: with one and a
half periods a live retrain was once marked Crashed and scheduled again while its process still ran."""


class HeartbeatSettingError(UserFacingError, ValueError):
    """A heartbeat setting in the environment is not a usable number of seconds; the message names it."""


def _whole_seconds(name: str, raw: str, minimum: int, default: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise HeartbeatSettingError(
            f"{name} must be a whole number of seconds, at least {minimum}, not {raw!r}: set one, or unset "
            f"it for the default ({default})"
        )
    return value


@dataclass(frozen=True)
class HeartbeatSettings:
    """How often flow runs send heartbeats, and after how long a silence the server marks a run Crashed."""

    frequency_s: int = DEFAULT_HEARTBEAT_FREQUENCY_S
    crash_after_s: int = DEFAULT_HEARTBEAT_FREQUENCY_S * MISSED_HEARTBEATS

    def __post_init__(self) -> None:
        if self.frequency_s < MINIMUM_HEARTBEAT_FREQUENCY_S:
            raise HeartbeatSettingError(
                f"{HEARTBEAT_FREQUENCY_ENV} is {self.frequency_s} s, but Prefect sends heartbeats at most every "
                f"{MINIMUM_HEARTBEAT_FREQUENCY_S} s: set it to {MINIMUM_HEARTBEAT_FREQUENCY_S} or more"
            )
        if self.crash_after_s < MINIMUM_MISSED_HEARTBEATS * self.frequency_s:
            raise HeartbeatSettingError(
                f"{CRASH_AFTER_ENV} ({self.crash_after_s} s) must be at least {MINIMUM_MISSED_HEARTBEATS} "
                f"heartbeat periods of {HEARTBEAT_FREQUENCY_ENV} ({self.frequency_s} s), or a live run whose "
                f"heartbeat comes late is marked Crashed and retried while it still runs: raise it (default "
                f"{MISSED_HEARTBEATS} periods, {MISSED_HEARTBEATS * self.frequency_s} s) or unset it"
            )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> HeartbeatSettings:
        """``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (or its old name), else 180 s; ``RAGDISTILL_CRASH_AFTER_S``,
        else three periods."""
        environ = os.environ if environ is None else environ
        frequency_s = DEFAULT_HEARTBEAT_FREQUENCY_S
        for name in (HEARTBEAT_FREQUENCY_ENV, LEGACY_HEARTBEAT_FREQUENCY_ENV):
            raw = environ.get(name, "")
            if raw.strip():
                frequency_s = _whole_seconds(
                    name, raw, MINIMUM_HEARTBEAT_FREQUENCY_S, f"{DEFAULT_HEARTBEAT_FREQUENCY_S} s"
                )
                break
        raw_crash_after = environ.get(CRASH_AFTER_ENV, "")
        crash_after_s = (
            _whole_seconds(CRASH_AFTER_ENV, raw_crash_after, 1, f"{MISSED_HEARTBEATS} heartbeat periods")
            if raw_crash_after.strip()
            else MISSED_HEARTBEATS * frequency_s
        )
        return cls(frequency_s, crash_after_s)

    def worker_environment(self) -> dict[str, str]:
        """What a worker's flow runs need in their environment to send heartbeats at this period."""
        return {HEARTBEAT_FREQUENCY_ENV: str(self.frequency_s)}
