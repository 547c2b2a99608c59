"""Episode progress of a rollout stage as a Prefect progress artifact (shared by the stage tasks and the
shard task, so neither imports the other for it)."""

from __future__ import annotations

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from ragdistill.episodes import EpisodeRecord
from ragdistill.layout import rollout_prefix
from ragdistill.rollout.collaborators import ProgressCallback
from ragdistill.tasks.common import send_progress


def progress_reporter(stage: str, part: str = "") -> ProgressCallback:
    """A progress artifact in the Prefect UI, moved after every finished episode (best effort:
    :func:`~ragdistill.tasks.common.send_progress`); ``part`` names a part of the stage (a shard)."""
    folder = f"{rollout_prefix(stage)}{f' ({part})' if part else ''}"
    progress_id = create_progress_artifact(progress=0.0, description=f"episodes finished in {folder}")

    def on_episode(_: EpisodeRecord, finished: int, total: int) -> None:
        percent = 100.0 * finished / max(total, 1)
        send_progress(folder, lambda: update_progress_artifact(progress_id, progress=percent))

    return on_episode
