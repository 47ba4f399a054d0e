"""N-way routing: send each prompt to one of N LLMs (Srivatsa, Maurya & Kochmar, NAACL 2024 SRW).

Routers score the confidence that each model solves a prompt (``MultiRouter.predict_scores``);
policies (``prefroute.multi.policies``) pick one model from those scores; metrics compare
the picks with the oracle, random routing and every single model on accuracy, cost, latency
and RouterBench's AIQ. Importing this package fills the multi-router registry.
"""

from typing import Any

from prefroute.errors import check_choice
from prefroute.multi.base import (
    MULTI_ROUTERS,
    EmbeddingRouter,
    MultiRouter,
    NotFittedError,
    load_multi_router,
    multi_router_class,
    register_multi_router,
)
from prefroute.multi.classifiers import MLCRouter, SCRouter
from prefroute.multi.clustering import KMeansRouter
from prefroute.multi.encoder_mlc import EncoderMLCRouter
from prefroute.multi.knn import KNNRouter
from prefroute.multi.labels import (
    MultiLabels,
    labels_from_generation_records,
    labels_from_generations,
    labels_from_outcomes,
    maj_at_k,
)
from prefroute.multi.mf_multi import MultiMFRouter

# CLI names -> (class, preset parameters). "kmeans-tfidf" clusters TF-IDF (+ SVD) features,
# "kmeans-embed" clusters the default sentence embeddings.
ROUTER_PRESETS: dict[str, tuple[type[MultiRouter], dict[str, Any]]] = {
    "mlc": (MLCRouter, {}),
    "sc": (SCRouter, {}),
    "kmeans-tfidf": (KMeansRouter, {"embedder": "tfidf"}),
    "kmeans-embed": (KMeansRouter, {"embedder": "wordllama"}),
    "knn": (KNNRouter, {}),
    "mf": (MultiMFRouter, {}),
    "mf-pairwise": (MultiMFRouter, {"objective": "pairwise"}),
    "mlc-encoder": (EncoderMLCRouter, {}),
}


def make_multi_router(name: str, **params: Any) -> MultiRouter:
    """A router by CLI name (``mlc``, ``knn``...); ``params`` override the preset."""
    check_choice("router", "make_multi_router", name, tuple(ROUTER_PRESETS))
    cls, preset = ROUTER_PRESETS[name]
    return cls(**{**preset, **params})


__all__ = [
    "MULTI_ROUTERS",
    "ROUTER_PRESETS",
    "EmbeddingRouter",
    "EncoderMLCRouter",
    "KMeansRouter",
    "KNNRouter",
    "MLCRouter",
    "MultiLabels",
    "MultiMFRouter",
    "MultiRouter",
    "NotFittedError",
    "SCRouter",
    "labels_from_generation_records",
    "labels_from_generations",
    "labels_from_outcomes",
    "load_multi_router",
    "maj_at_k",
    "make_multi_router",
    "multi_router_class",
    "register_multi_router",
]
