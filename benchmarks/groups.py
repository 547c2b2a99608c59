"""Category classifiers for WebShop retrieval, measured in one run on the same test goals.

    .venv/bin/python benchmarks/groups.py [--limit 100] [--train 500] [--no-model] [--config configs/demo-webshop.yaml]

The teacher retrieves hints of one category per episode, and a WebShop instruction does not name its
category. Two classifiers (``retrieval.group``): ``embedding`` (nearest centroid of the all-MiniLM-L6-v2
embeddings of ``--train`` labelled training goals) and ``llm`` (the config's agent model, or ``--role reranker``, answers one
category as schema-constrained JSON; the paper used an LLM). Printed: each one's accuracy against the
goals' true categories, their agreement with each other, the LLM's tokens per goal and both wall times.
The goals are the first ``--limit`` test goals in the upstream order (the paper's evaluation goals).
"""

from __future__ import annotations

import argparse
import json
import time

from ragdistill.config import load_config
from ragdistill.environments.registry import get_profile, list_tasks
from ragdistill.retrieval.embed import get_embedder
from ragdistill.retrieval.groups import EmbeddingGroupClassifier, LLMGroupClassifier, agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo-webshop.yaml")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--no-model", action="store_true", help="skip the LLM classifier")
    parser.add_argument(
        "--role",
        choices=("reranker", "agent"),
        default="agent",
        help="the config's role that classifies (paper configs: reranker, the paper's 7B retriever LLM)",
    )
    args = parser.parse_args()

    config = load_config(args.config)
    env, data_dir = config.env.name, config.env.data_dir
    profile = get_profile(env)
    goals = list_tasks(env, data_dir=data_dir, split="test", limit=args.limit)
    truth = [goal.task_type for goal in goals]
    instructions = [goal.instruction for goal in goals]
    labelled = list_tasks(env, data_dir=data_dir, split="train", limit=args.train, balanced=True)
    out: dict[str, object] = {"goals": len(goals), "train_examples": len(labelled)}

    started = time.perf_counter()
    embedding = EmbeddingGroupClassifier(
        get_embedder(config.retrieval.embedding_model), [(t.instruction, t.task_type) for t in labelled]
    )
    by_embedding = [p.group for p in embedding.classify(instructions)]
    out["embedding_accuracy"] = round(agreement(by_embedding, truth), 3)
    out["embedding_seconds"] = round(time.perf_counter() - started, 2)

    if not args.no_model:
        from ragdistill.inference.factory import make_backend

        role = getattr(config.models, args.role)
        backend = make_backend(role)
        try:
            llm = LLMGroupClassifier(
                backend, profile.task_groups, profile.group_label, profile.hints.description
            )
            started = time.perf_counter()
            predictions = llm.classify(instructions)
            out["llm_seconds"] = round(time.perf_counter() - started, 2)
        finally:
            backend.close()
        by_llm = [p.group for p in predictions]
        out["llm_model"] = role.model.name
        out["llm_accuracy"] = round(agreement(by_llm, truth), 3)
        out["llm_tokens_per_goal"] = round(sum(p.tokens for p in predictions) / max(len(predictions), 1), 1)
        out["llm_fallbacks"] = sum(p.note is not None for p in predictions)
        out["agreement_embedding_llm"] = round(agreement(by_embedding, by_llm), 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
