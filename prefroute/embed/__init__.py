"""Text embedders: turn prompts into unit-length float32 vectors for the routers.

Importing this package is cheap: model libraries (torch, sentence-transformers, openai,
scikit-learn, wordllama) are imported when an embedder first encodes.
"""

from prefroute.embed.base import EMBEDDERS, Embedder, build_embedder, register_embedder
from prefroute.embed.cache import CachedEmbedder
from prefroute.embed.features import FeatureAugmentedEmbedder, surface_features
from prefroute.embed.minilm import SentenceTransformerEmbedder
from prefroute.embed.openai_embedder import OpenAIEmbedder
from prefroute.embed.tfidf import TfidfEmbedder
from prefroute.embed.wordllama_embedder import WordLlamaEmbedder

DEFAULT_EMBEDDER = "wordllama"

__all__ = [
    "DEFAULT_EMBEDDER",
    "EMBEDDERS",
    "CachedEmbedder",
    "Embedder",
    "FeatureAugmentedEmbedder",
    "OpenAIEmbedder",
    "SentenceTransformerEmbedder",
    "TfidfEmbedder",
    "WordLlamaEmbedder",
    "build_embedder",
    "register_embedder",
    "surface_features",
]
