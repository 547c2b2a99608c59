"""Stage C (teach): the RAG teacher, a rollout whose prompts carry hints retrieved once per episode.

Its identity is a rollout's plus the ``retrieval`` section (``group_examples`` only for the embedding
group classifier), the re-ranker role when the retriever is ``llm-rerank`` or the group classifier is
``llm``, and the content digests of the hint bank and (for ``faiss``) the index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ragdistill.config import ExperimentConfig
from ragdistill.identity import code_fingerprint
from ragdistill.inference.base import Backend
from ragdistill.rollout import HintSource, ProgressCallback
from ragdistill.stages.layout import HINTS_DIR, INDEX_DIR, TEACHER_STAGE
from ragdistill.stages.lifecycle import StageError, recorded_input_digest, rerun_remedy, verified_input
from ragdistill.stages.roles import ResolvedAdapter, role_settings
from ragdistill.stages.rollout import RolloutPlan, run_rollout_plan
from ragdistill.store import ArtifactStore, Manifest

if TYPE_CHECKING:
    from ragdistill.retrieval.groups import GroupClassifier


def retrieval_settings(config: ExperimentConfig) -> dict[str, Any]:
    """What changes which hints an episode gets."""
    retrieval = config.retrieval
    exclude = set() if retrieval.group == "embedding" else {"group_examples"}
    settings: dict[str, Any] = {"retrieval": retrieval.model_dump(mode="json", exclude=exclude)}
    if retrieval.retriever == "llm-rerank" or retrieval.group == "llm":
        settings["reranker"] = role_settings(config.models.reranker, ResolvedAdapter())
    return settings


def retrieval_inputs(config: ExperimentConfig, store: ArtifactStore) -> dict[str, str]:
    inputs = {HINTS_DIR: recorded_input_digest(store, HINTS_DIR)}
    if config.retrieval.retriever == "faiss":
        inputs[INDEX_DIR] = recorded_input_digest(store, INDEX_DIR)
    return inputs


def hint_source_factory(config: ExperimentConfig) -> HintSource:
    """The retriever over the verified bank (and index), as the engine's hint source."""
    from ragdistill.environments.registry import get_profile
    from ragdistill.inference.shared import shared_backend
    from ragdistill.retrieval.bank import load_nonempty_bank
    from ragdistill.retrieval.embed import get_embedder
    from ragdistill.retrieval.index import HintIndex
    from ragdistill.retrieval.retrievers import make_retriever
    from ragdistill.retrieval.teacher import RetrieverHintSource

    profile = get_profile(config.env.name)
    store = ArtifactStore(config.run.run_root)
    verified_input(store, HINTS_DIR)
    bank = load_nonempty_bank(store)
    index = None
    if config.retrieval.retriever == "faiss":
        verified_input(store, INDEX_DIR)
        index = HintIndex.load(store, INDEX_DIR)
        if index.model_name != config.retrieval.embedding_model:
            raise StageError(
                f"{store.uri(INDEX_DIR)} was built with the embedding model {index.model_name!r} (another "
                f"config's), but retrieval.embedding_model is {config.retrieval.embedding_model!r}: "
                f"{rerun_remedy(INDEX_DIR)} to rebuild it with this config"
            )
    reranker = shared_backend(config.models.reranker) if config.retrieval.retriever == "llm-rerank" else None
    retriever = make_retriever(
        config.retrieval,
        bank,
        reranker,
        embedder=get_embedder(config.retrieval.embedding_model) if index is not None else None,
        index=index,
        sampling=config.models.reranker.sampling,
        group_label=profile.group_label,
    )
    classifier = group_classifier(config)
    return RetrieverHintSource(retriever, config.retrieval.k, config.retrieval.query, classifier)


def group_classifier(config: ExperimentConfig) -> GroupClassifier | None:
    """The classifier ``retrieval.group`` asks for (None: each task's own group). The embedding one
    learns from the training split only, never from the tasks it will classify."""
    from ragdistill.environments.registry import get_profile, list_tasks
    from ragdistill.inference.shared import shared_backend
    from ragdistill.retrieval.embed import get_embedder
    from ragdistill.retrieval.groups import EmbeddingGroupClassifier, LLMGroupClassifier

    retrieval, profile = config.retrieval, get_profile(config.env.name)
    if retrieval.group == "task":
        return None
    if retrieval.group == "llm":
        return LLMGroupClassifier(
            shared_backend(config.models.reranker),
            profile.task_groups,
            profile.group_label,
            profile.hints.description,
        )
    labelled = list_tasks(
        config.env.name,
        data_dir=config.env.data_dir,
        split="train",
        limit=retrieval.group_examples,
        balanced=True,
    )
    return EmbeddingGroupClassifier(
        get_embedder(retrieval.embedding_model), [(task.instruction, task.task_type) for task in labelled]
    )


def teacher_plan(config: ExperimentConfig, stage: str = TEACHER_STAGE, **overrides: Any) -> RolloutPlan:
    """The RAG teacher on the config's tasks (``overrides``: another env or role, e.g. for evaluation)."""
    store = ArtifactStore(config.run.run_root)
    plan = RolloutPlan(
        stage=stage,
        env=config.env,
        role=config.models.agent,
        source="teacher",
        settings=retrieval_settings(config),
        inputs=retrieval_inputs(config, store),
        hint_source=lambda: hint_source_factory(config),
        code=code_fingerprint("ragdistill.stages.teaching"),
    )
    for name, value in overrides.items():
        setattr(plan, name, value)
    return plan


def run_teacher(
    config: ExperimentConfig, *, backend: Backend | None = None, progress: ProgressCallback | None = None
) -> Manifest:
    """Stage C (teach); see the module docstring."""
    return run_rollout_plan(config, teacher_plan(config), backend=backend, progress=progress)
