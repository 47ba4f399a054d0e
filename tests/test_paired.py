"""Paired bootstrap of APGR differences on the real MMLU outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from prefroute.data.outcomes import ROUTELLM_STRONG, ROUTELLM_WEAK, load_outcomes
from prefroute.errors import ConfigError
from prefroute.evaluate.baselines import prompt_length_probs
from prefroute.evaluate.metrics import oracle_probs, router_metrics
from prefroute.evaluate.paired import paired_bootstrap_apgr_diff


@pytest.fixture(scope="module")
def gsm8k(data_dir):
    table = load_outcomes("gsm8k", data_dir)
    return table.column(ROUTELLM_STRONG), table.column(ROUTELLM_WEAK), table.prompts


def test_paired_difference_matches_separate_apgrs_and_is_narrower(gsm8k):
    s, w, prompts = gsm8k
    length = prompt_length_probs(prompts)
    rnd = np.random.default_rng(1).random(len(s))
    res = paired_bootstrap_apgr_diff(s, w, length, rnd, n_bootstrap=300, seed=0)
    m_len = router_metrics(s, w, length, n_bootstrap=300, seed=0)
    m_rnd = router_metrics(s, w, rnd, n_bootstrap=300, seed=0)
    assert res.apgr_a == pytest.approx(m_len.apgr)
    assert res.apgr_b == pytest.approx(m_rnd.apgr)
    assert res.diff == pytest.approx(m_len.apgr - m_rnd.apgr)
    assert res.ci[0] <= res.diff <= res.ci[1]
    # same seed, same resamples: the difference's samples are the per-router samples' difference
    assert res.n_prompts == len(s)
    oracle = paired_bootstrap_apgr_diff(s, w, oracle_probs(s, w), rnd, n_bootstrap=200)
    assert oracle.significant and oracle.ci[0] > 0.3 and oracle.p_value < 0.01


def test_router_against_itself_has_zero_difference(gsm8k):
    s, w, prompts = gsm8k
    length = prompt_length_probs(prompts)
    res = paired_bootstrap_apgr_diff(s, w, length, length, n_bootstrap=100)
    assert res.diff == 0 and res.ci == (0.0, 0.0) and not res.significant
    assert res.p_value == 1.0


def test_paired_rejects_bad_input(gsm8k):
    s, w, prompts = gsm8k
    with pytest.raises(ConfigError, match="n_bootstrap"):
        paired_bootstrap_apgr_diff(s, w, s, w, n_bootstrap=0)
    with pytest.raises(ConfigError, match="one length"):
        paired_bootstrap_apgr_diff(s, w, s[:-1], w)
