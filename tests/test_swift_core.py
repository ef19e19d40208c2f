"""SWIFT's layer-set search (``plugins/swift/core.py``, no engine) against naive references: the GP posterior by
explicit inversion, the search on a known objective against exhaustive scoring, the sets it proposes (size, range,
first and last layers kept), its stop rules; and the sublayer bookkeeping of ``integrations/sdk/layer_skip.py``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declab.integrations.sdk.layer_skip import Sublayers
from declab.plugins.swift.core import (
    LayerSetSearch,
    eligible_sublayers,
    gp_posterior,
    gp_posterior_naive,
    matchness,
    skip_count,
    uniform_skip_set,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_eligible_sublayers_keep_the_first_and_last_layer():
    assert eligible_sublayers(4) == [2, 3, 4, 5]
    assert eligible_sublayers(2) == []
    assert skip_count(8, 0.45) == 7  # round(0.45 * 16)
    assert skip_count(4, 0.9) == 4  # capped at the eligible sublayers
    with pytest.raises(ValueError, match="skip_ratio"):
        skip_count(8, 1.0)


@SETTINGS
@given(st.integers(3, 40), st.data())
def test_uniform_set_has_the_size_asked_and_only_eligible_sublayers(layers, data):
    eligible = eligible_sublayers(layers)
    count = data.draw(st.integers(1, len(eligible)))
    chosen = uniform_skip_set(layers, count)
    assert len(chosen) == count and chosen <= set(eligible)


def test_matchness_is_the_share_of_equal_positions():
    assert matchness(np.array([1, 2, 3, 4]), np.array([1, 0, 3, 0])) == 0.5
    with pytest.raises(ValueError):
        matchness(np.array([1]), np.array([1, 2]))


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_gp_posterior_matches_explicit_inversion(n, q, seed):
    rng = np.random.default_rng(seed)
    observed = rng.integers(0, 2, size=(n, 6))
    scores = rng.random(n)
    query = rng.integers(0, 2, size=(q, 6))
    mean, std = gp_posterior(observed, scores, query)
    ref_mean, ref_std = gp_posterior_naive(observed, scores, query)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(std, ref_std, rtol=1e-5, atol=1e-6)


def test_gp_posterior_interpolates_what_it_saw():
    observed = np.array([[0, 0, 1], [1, 1, 0], [0, 1, 1]])
    scores = np.array([0.2, 0.9, 0.5])
    mean, std = gp_posterior(observed, scores, observed, noise=1e-8)
    np.testing.assert_allclose(mean, scores, atol=1e-5)
    assert (std < 1e-3).all()


def _objective(weights: dict[int, float]):
    """A known matchness: each skipped sublayer costs its weight (some sublayers matter, some do not)."""
    return lambda skipped: 1.0 - sum(weights[s] for s in skipped)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_finds_the_exhaustive_optimum_of_a_known_objective(seed):
    layers, count = 6, 3
    rng = np.random.default_rng(100 + seed)
    weights = {s: float(w) for s, w in zip(eligible_sublayers(layers), rng.random(2 * (layers - 2)) * 0.1)}
    score = _objective(weights)
    best = max((frozenset(c) for c in itertools.combinations(eligible_sublayers(layers), count)), key=score)
    search = LayerSetSearch(layers, count, seed=seed, bayes_interval=5, max_iters=300, patience=300,
                            target_score=1.1)
    while not search.done:
        candidate = search.propose()
        assert len(candidate) == count and candidate <= set(eligible_sublayers(layers))
        search.observe(candidate, score(candidate), score(search.best))
    assert search.best == best  # 70 sets, 300 paired comparisons: the optimum is found
    assert search.state.bayes_proposals > 0


def test_search_keeps_the_best_in_a_paired_comparison_and_stops_by_its_rules():
    search = LayerSetSearch(8, 4, patience=3, max_iters=100, target_score=0.9)
    start = search.best
    for _ in range(3):
        assert not search.observe(search.propose(), 0.1, 0.5)  # worse than the best on the same window
    assert search.best == start and search.done  # patience reached
    search = LayerSetSearch(8, 4, max_iters=100, target_score=0.9)
    candidate = search.propose()
    assert search.observe(candidate, 0.95, 0.5, frozenset({"a"})) and search.best == candidate
    assert not search.done  # one window only
    for _ in range(LayerSetSearch.MIN_SCORED - 1):  # enough windows, all from one request (a loop, say)
        search.observe(search.propose(), 0.1, 0.95, frozenset({"a"}))
    assert search.best == candidate and not search.done
    search.observe(search.propose(), 0.1, 0.95, frozenset({"b", "c", "d"}))
    assert search.best == candidate and search.done  # MIN_SCORED windows from MIN_SOURCES requests
    # The target is the best set's mean over its windows: one easy window after a hard one does not end the search.
    search = LayerSetSearch(8, 4, max_iters=100, target_score=0.9)
    candidate = search.propose()
    search.observe(candidate, 0.6, 0.5)
    search.observe(search.propose(), 0.1, 1.0)  # the best (candidate) scores 1.0 on an easy window
    assert search.best == candidate and search.state.best_score == pytest.approx(0.8) and not search.done
    search = LayerSetSearch(8, 4, max_iters=2, patience=100, target_score=1.0)
    search.observe(search.propose(), 0.1, 0.2)
    search.observe(search.propose(), 0.1, 0.2)
    assert search.done  # max_iters


def test_bayes_proposals_avoid_scored_sets_and_follow_the_gp():
    """With one sublayer that alone decides the score, the UCB pick (kappa 0: the mean) keeps it."""
    layers, count = 6, 2
    search = LayerSetSearch(layers, count, seed=3, bayes_interval=1, kappa=0.0)
    good, bad = frozenset({2, 3}), frozenset({4, 5})
    search.observe(good, 0.9, 0.1)
    search.observe(bad, 0.1, 0.9)
    pick = search.propose()
    assert pick not in (good, bad) and (2 in pick or 3 in pick)


def test_sublayers_bookkeeping():
    s = Sublayers(4, frozenset({2, 5}))
    assert not s.attention_kept(1) and s.mlp_kept(1) and s.attention_kept(2) and not s.mlp_kept(2)
    assert s.kept_fraction == 0.75 and s.describe() == {"attention": [1], "mlp": [2]}
    with pytest.raises(ValueError, match="out of range"):
        Sublayers(4, frozenset({8}))
