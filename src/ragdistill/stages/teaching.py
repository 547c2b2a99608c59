"""Stage C (teach): the RAG teacher, a rollout whose prompts carry hints retrieved once per episode.

Its identity is a rollout's (``stages.rollout``) under :class:`~ragdistill.config.stages.TeacherSettings`,
whole: the rollout settings plus the retrieval settings (``group_examples`` only for the embedding group
classifier) and the re-ranker role when the retriever is ``llm-rerank`` or the group classifier is
``llm`` (and its backend's library versions); its inputs add the content digests of the hint bank and
(for ``faiss``) the index.
"""

from __future__ import annotations

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import Inputs, RetrievalSettings, RoleSettings, TeacherSettings
from ragdistill.environments.base import TaskInfo
from ragdistill.environments.registry import get_profile, list_tasks
from ragdistill.inference.base import Backend
from ragdistill.layout import HINTS_DIR, INDEX_DIR
from ragdistill.retrieval.bank import load_nonempty_bank
from ragdistill.retrieval.engines import RetrievalEngines
from ragdistill.retrieval.index import HintIndex
from ragdistill.retrieval.teacher import build_hint_source
from ragdistill.rollout.collaborators import HintSource, ProgressCallback
from ragdistill.stages.engines import SharedEngines
from ragdistill.stages.lifecycle import StageError, StageIdentity, handed, rerun_remedy, verified_input
from ragdistill.stages.rollout import play_settings, rollout_identity
from ragdistill.store import ArtifactStore, Manifest


def teacher_identity(ctx: RunContext, settings: TeacherSettings, inputs: Inputs) -> StageIdentity:
    return rollout_identity(ctx, settings, inputs)


def run_teacher(
    ctx: RunContext,
    settings: TeacherSettings,
    inputs: Inputs,
    *,
    engines: RetrievalEngines | None = None,
    backend: Backend | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Stage C (teach); see the module docstring. ``engines``: the models retrieval runs on (default:
    loaded as ``ctx`` says and shared in the process); ``backend``: the agent's."""

    def hints() -> HintSource:
        return teacher_hint_source(
            ctx, settings.retrieval, settings.reranker, settings.env.name, inputs, engines
        )

    return play_settings(ctx, settings, inputs, hint_source=hints, backend=backend, progress=progress)


def teacher_hint_source(
    ctx: RunContext,
    retrieval: RetrievalSettings,
    reranker: RoleSettings | None,
    env_name: str,
    inputs: Inputs,
    engines: RetrievalEngines | None = None,
) -> HintSource:
    """The retriever over the hint bank (and index) handed in ``inputs``, each verified against its
    digest first, as the engine's hint source; the RAG evaluation and the expert teacher retrieve with
    it too."""
    store = ArtifactStore(ctx.run_root)
    given = handed(inputs, *retrieval.input_dirs())
    verified_input(store, HINTS_DIR, given[HINTS_DIR])
    bank = load_nonempty_bank(store)
    index = None
    if INDEX_DIR in given:
        verified_input(store, INDEX_DIR, given[INDEX_DIR])
        index = HintIndex.load(store, INDEX_DIR)
        check_index_model(store, index, retrieval.embedding_model)

    def training_tasks(limit: int | None) -> list[TaskInfo]:
        return list_tasks(env_name, data_dir=ctx.data_dir, split="train", limit=limit, balanced=True)

    return build_hint_source(
        retrieval,
        reranker,
        bank=bank,
        index=index,
        engines=engines or SharedEngines(ctx),
        profile=get_profile(env_name),
        training_tasks=training_tasks,
    )


def check_index_model(store: ArtifactStore, index: HintIndex, embedding_model: str) -> None:
    """Refuse an index built with another embedding model than the settings name (another config's)."""
    if index.model_name != embedding_model:
        raise StageError(
            f"{store.uri(INDEX_DIR)} was built with the embedding model {index.model_name!r} (another "
            f"config's), but retrieval.embedding_model is {embedding_model!r}: "
            f"{rerun_remedy(INDEX_DIR)} to rebuild it with this config"
        )
