"""The feature-augmented embedder on real prompts."""

from __future__ import annotations

import numpy as np
import pytest

from prefroute.data import load_outcomes
from prefroute.embed import FeatureAugmentedEmbedder, build_embedder, surface_features
from prefroute.embed.features import FEATURE_NAMES
from prefroute.errors import ConfigError


@pytest.fixture(scope="module")
def gsm8k_prompts(data_dir):
    return load_outcomes("gsm8k", data_dir).prompts[:300]


def test_surface_features_measure_what_they_say(gsm8k_prompts):
    raw = surface_features(["What is 2 + 2?", "A. yes\nB. no\nAnswer:", "def f(x): return x"])
    names = list(FEATURE_NAMES)
    assert raw[0, names.index("log_numbers")] == pytest.approx(np.log1p(2))
    assert raw[1, names.index("option_lines")] == pytest.approx(0.2)
    assert raw[2, names.index("log_code_tokens")] > 0
    lengths = np.array([len(p) for p in gsm8k_prompts])
    chars = surface_features(gsm8k_prompts)[:, names.index("log_chars")]
    assert np.corrcoef(lengths, chars)[0, 1] > 0.9


def test_encode_save_load_and_weight(gsm8k_prompts, tmp_path):
    spec = {"name": "features", "params": {"inner": "wordllama", "feature_weight": 0.5}}
    embedder = build_embedder(spec)
    assert isinstance(embedder, FeatureAugmentedEmbedder) and embedder.needs_fit
    with pytest.raises(ConfigError, match="not fitted"):
        embedder.encode(gsm8k_prompts[:2])
    embedder.fit(gsm8k_prompts)
    vectors = embedder.encode(gsm8k_prompts)
    assert vectors.shape == (300, 256 + len(FEATURE_NAMES)) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    embedder.save_state(tmp_path)
    again = build_embedder(embedder.spec())
    again.load_state(tmp_path)
    np.testing.assert_array_equal(again.encode(gsm8k_prompts), vectors)
    # weight 0 leaves the topical embedding alone
    plain = build_embedder({"name": "features", "params": {"feature_weight": 0.0}}).fit(
        gsm8k_prompts
    )
    np.testing.assert_allclose(
        plain.encode(gsm8k_prompts)[:, :256],
        build_embedder("wordllama").encode(gsm8k_prompts),
        atol=1e-6,
    )
    # with features, prompts of similar length are closer than with topic alone
    short, long_ = np.argsort([len(p) for p in gsm8k_prompts])[[0, -1]]
    topical = plain.encode(gsm8k_prompts)
    assert vectors[short] @ vectors[long_] < topical[short] @ topical[long_]


def test_bad_weight_is_rejected():
    with pytest.raises(ConfigError, match="feature_weight"):
        FeatureAugmentedEmbedder(feature_weight=-1)


def test_inner_embedder_instance_is_used_and_recorded(gsm8k_prompts, tmp_path):
    from prefroute.embed import CachedEmbedder

    cached = CachedEmbedder(build_embedder("wordllama"), tmp_path / "cache")
    embedder = FeatureAugmentedEmbedder(inner=cached, feature_weight=1.0).fit(gsm8k_prompts[:50])
    assert embedder.spec()["params"]["inner"] == build_embedder("wordllama").spec()
    vectors = embedder.encode(gsm8k_prompts[:50])
    assert cached.misses > 0 and vectors.shape[1] == 256 + len(FEATURE_NAMES)
