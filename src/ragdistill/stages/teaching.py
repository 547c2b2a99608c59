"""Stage C (teach): the RAG teacher, a rollout whose prompts carry hints retrieved once per episode.

Its identity is a rollout's (``stages.rollout``) under :class:`~ragdistill.config.stages.TeacherSettings`,
whole: the rollout settings plus the retrieval settings (``group_examples`` only for the embedding group
classifier) and the re-ranker role when the retriever is ``llm-rerank`` or the group classifier is
``llm`` (and its backend's library versions); its inputs add the content digests of the hint bank and
(for ``faiss``) the index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragdistill.config.stages import Inputs, RetrievalSettings, RoleSettings, RunContext, TeacherSettings
from ragdistill.inference.base import Backend
from ragdistill.layout import HINTS_DIR, INDEX_DIR
from ragdistill.rollout.engine import HintSource, ProgressCallback
from ragdistill.stages.lifecycle import StageError, StageIdentity, handed, rerun_remedy, verified_input
from ragdistill.stages.rollout import play_settings, rollout_identity
from ragdistill.store import ArtifactStore, Manifest

if TYPE_CHECKING:
    from ragdistill.retrieval.groups import GroupClassifier


def teacher_identity(ctx: RunContext, settings: TeacherSettings, inputs: Inputs) -> StageIdentity:
    return rollout_identity(ctx, settings, inputs)


def run_teacher(
    ctx: RunContext,
    settings: TeacherSettings,
    inputs: Inputs,
    *,
    backend: Backend | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Stage C (teach); see the module docstring."""
    env_name = settings.env.name

    def hints() -> HintSource:
        return hint_source_factory(ctx, settings.retrieval, settings.reranker, env_name, inputs)

    return play_settings(ctx, settings, inputs, hint_source=hints, backend=backend, progress=progress)


def hint_source_factory(
    ctx: RunContext,
    retrieval: RetrievalSettings,
    reranker: RoleSettings | None,
    env_name: str,
    inputs: Inputs,
) -> HintSource:
    """The retriever over the hint bank (and index) handed in ``inputs``, verified first, as the
    engine's hint source."""
    from ragdistill.config import RetrievalConfig
    from ragdistill.environments.registry import get_profile
    from ragdistill.inference.shared import shared_backend
    from ragdistill.retrieval.bank import load_nonempty_bank
    from ragdistill.retrieval.embed import get_embedder
    from ragdistill.retrieval.index import HintIndex
    from ragdistill.retrieval.retrievers import make_retriever
    from ragdistill.retrieval.teacher import RetrieverHintSource

    profile = get_profile(env_name)
    store = ArtifactStore(ctx.run_root)
    given = handed(inputs, *retrieval.input_dirs())
    verified_input(store, HINTS_DIR, given[HINTS_DIR])
    bank = load_nonempty_bank(store)
    index = None
    if retrieval.retriever == "faiss":
        verified_input(store, INDEX_DIR, given[INDEX_DIR])
        index = HintIndex.load(store, INDEX_DIR)
        if index.model_name != retrieval.embedding_model:
            raise StageError(
                f"{store.uri(INDEX_DIR)} was built with the embedding model {index.model_name!r} (another "
                f"config's), but retrieval.embedding_model is {retrieval.embedding_model!r}: "
                f"{rerun_remedy(INDEX_DIR)} to rebuild it with this config"
            )
    reranker_role = ctx.role_config(reranker) if reranker is not None else None
    rerank = shared_backend(reranker_role) if reranker_role and retrieval.retriever == "llm-rerank" else None
    retriever = make_retriever(
        RetrievalConfig.model_validate(retrieval.model_dump(exclude_none=True)),
        bank,
        rerank,
        embedder=get_embedder(retrieval.embedding_model) if index is not None else None,
        index=index,
        sampling=reranker_role.sampling if reranker_role else None,
        group_label=profile.group_label,
    )
    classifier = group_classifier(ctx, retrieval, reranker, env_name)
    return RetrieverHintSource(retriever, retrieval.k, retrieval.query, classifier)


def group_classifier(
    ctx: RunContext, retrieval: RetrievalSettings, reranker: RoleSettings | None, env_name: str
) -> GroupClassifier | None:
    """The classifier ``retrieval.group`` asks for (None: each task's own group). The embedding one
    learns from the training split only, never from the tasks it will classify."""
    from ragdistill.environments.registry import get_profile, list_tasks
    from ragdistill.inference.shared import shared_backend
    from ragdistill.retrieval.embed import get_embedder
    from ragdistill.retrieval.groups import EmbeddingGroupClassifier, LLMGroupClassifier

    profile = get_profile(env_name)
    if retrieval.group == "task":
        return None
    if retrieval.group == "llm":
        if reranker is None:
            raise StageError("retrieval.group 'llm' needs the re-ranker role (models.reranker)")
        return LLMGroupClassifier(
            shared_backend(ctx.role_config(reranker)),
            profile.task_groups,
            profile.group_label,
            profile.hints.description,
        )
    labelled = list_tasks(
        env_name, data_dir=ctx.data_dir, split="train", limit=retrieval.group_examples, balanced=True
    )
    return EmbeddingGroupClassifier(
        get_embedder(retrieval.embedding_model), [(task.instruction, task.task_type) for task in labelled]
    )
