"""Diverse Beam Search core (pure Python) on a toy deterministic bigram model (the HTTP adapter against a real server
is in ``test_diverse_beam_engine.py``)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declab.plugins.diverse_beam.core import (
    Beam,
    beam_score,
    check_params,
    distinct_n,
    diverse_beam_search,
    diverse_beam_search_batch,
)
from declab.plugins.diverse_beam.search import diverse_beam_search_http
from declab.plugins.diverse_beam.spec import SPEC


class Bigram:
    """Next-token log-probs depend on the last token only; top-n returned in rank order (ties by token id), like
    the engine returns the greedy token first and then the top-k. Counts calls and batch sizes."""

    def __init__(self, vocab: int, seed: int, n: int, quantize: float | None = None) -> None:
        rng = np.random.default_rng(seed)
        logits = rng.normal(size=(vocab, vocab)) * 2.0
        if quantize:  # coarse values -> many exact ties, to check the tie-breaking
            logits = np.round(logits / quantize) * quantize
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        self.table = [[float(x) for x in row] for row in logp]
        self.vocab, self.n = vocab, n
        self.calls: list[int] = []

    def top(self, last: int) -> dict[int, float]:
        row = self.table[last]
        order = sorted(range(self.vocab), key=lambda t: -row[t])[: self.n]
        return {t: row[t] for t in order}

    def __call__(self, sequences: list[list[int]]) -> list[dict[int, float]]:
        self.calls.append(len(sequences))
        return [self.top(s[-1]) for s in sequences]

    def path_logprob(self, prompt: list[int], gen: list[int]) -> float:
        cum, last = 0.0, prompt[-1]
        for t in gen:
            cum += self.top(last)[t]
            last = t
        return cum


def reference_beam_search(prompt, model, *, beam_width, max_tokens, eos, length_penalty=1.0, ignore_eos=False):
    """Plain beam search written after vLLM 0.32's LLM.beam_search (offline.py): returns (tokens, cum) pairs."""

    def key(item):
        tokens, cum = item
        n = len(tokens) - (1 if tokens[-1] == eos else 0)
        return cum / (max(n, 1) ** length_penalty)

    beams, completed = [(list(prompt), 0.0)], []
    for _ in range(max_tokens):
        if not beams:
            break
        outs = model([b[0] for b in beams])
        new = []
        for (tokens, cum), lps in zip(beams, outs, strict=True):
            for tok, lp in lps.items():
                cand = (tokens + [tok], cum + lp)
                if tok == eos and not ignore_eos:
                    completed.append(cand)
                else:
                    new.append(cand)
        beams = sorted(new, key=key, reverse=True)[:beam_width]
    best = sorted(completed + beams, key=key, reverse=True)[:beam_width]
    return [(t[len(prompt):], c, key((t, c))) for t, c in best]


def as_triples(beams: list[Beam]):
    return [(b.token_ids, b.cum_logprob, b.score) for b in beams]


# ------------------------------------------------------------------------------------------------ exact reference


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    vocab=st.integers(4, 14),
    beam_width=st.integers(1, 4),
    max_tokens=st.integers(1, 7),
    prompt=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    eos=st.sampled_from([None, 0, 1]),
    length_penalty=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    ignore_eos=st.booleans(),
    quantize=st.sampled_from([None, 0.5]),
)
def test_one_group_no_penalty_is_vllm_beam_search(
    seed, vocab, beam_width, max_tokens, prompt, eos, length_penalty, ignore_eos, quantize
):
    model = Bigram(vocab, seed, 2 * beam_width, quantize)
    ours = diverse_beam_search(prompt, model, beam_width=beam_width, num_groups=1, diversity_penalty=0.0,
                               max_tokens=max_tokens, length_penalty=length_penalty, eos_token_id=eos,
                               ignore_eos=ignore_eos)
    ref = reference_beam_search(prompt, model, beam_width=beam_width, max_tokens=max_tokens, eos=eos,
                                length_penalty=length_penalty, ignore_eos=ignore_eos)
    assert as_triples(ours) == ref  # exact: same floats, same order
    assert all(b.group == 0 for b in ours)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), groups=st.sampled_from([(2, 1), (4, 2), (4, 4), (6, 3)]),
       max_tokens=st.integers(1, 6), eos=st.sampled_from([None, 0]))
def test_zero_penalty_groups_are_independent_beam_searches(seed, groups, max_tokens, eos):
    beam_width, num_groups = groups
    size = beam_width // num_groups
    model = Bigram(10, seed, 2 * beam_width)
    ours = diverse_beam_search([1], model, beam_width=beam_width, num_groups=num_groups, diversity_penalty=0.0,
                               max_tokens=max_tokens, eos_token_id=eos)
    ref = reference_beam_search([1], model, beam_width=size, max_tokens=max_tokens, eos=eos)
    for g in range(num_groups):
        mine = [(b.token_ids, b.cum_logprob, b.score) for b in ours if b.group == g]
        assert mine == ref


# ------------------------------------------------------------------------------------------------ diversity


def test_hamming_penalty_by_hand():
    # First-step log-probs after token 0: a=1 -> -0.1, b=2 -> -1.0, c=3 -> -3.0 (nothing else).
    table = {0: {1: -0.1, 2: -1.0, 3: -3.0}}

    def model(seqs):
        return [table.get(s[-1], {1: -0.1, 2: -1.0, 3: -3.0}) for s in seqs]

    kw = dict(beam_width=2, num_groups=2, max_tokens=1, eos_token_id=None)
    small = diverse_beam_search([0], model, diversity_penalty=0.5, **kw)
    assert sorted(b.token_ids[0] for b in small) == [1, 1]  # -0.1 - 0.5 = -0.6 still beats -1.0
    big = diverse_beam_search([0], model, diversity_penalty=2.0, **kw)
    assert {b.group: b.token_ids for b in big} == {0: [1], 1: [2]}  # -2.1 < -1.0: group 1 takes b
    assert [b.cum_logprob for b in big] == [-0.1, -1.0]  # true log-probs, the penalty is not accumulated
    # Multiplicity: with three groups of one the third sees a chosen twice (penalty 2*lambda).
    three = diverse_beam_search([0], model, beam_width=3, num_groups=3, diversity_penalty=0.6, max_tokens=1,
                                eos_token_id=None)
    assert {b.group: b.token_ids[0] for b in three} == {0: 1, 1: 1, 2: 2}  # -0.7 > -1.0; then -1.3 < -1.0


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), beam_width=st.integers(2, 5), max_tokens=st.integers(1, 6),
       penalty=st.floats(0.05, 5.0))
def test_penalty_never_lowers_the_number_of_distinct_first_tokens(seed, beam_width, max_tokens, penalty):
    model = Bigram(12, seed, 2 * beam_width)
    kw = dict(beam_width=beam_width, num_groups=beam_width, max_tokens=max_tokens, eos_token_id=None)
    plain = diverse_beam_search([1], model, diversity_penalty=0.0, **kw)
    diverse = diverse_beam_search([1], model, diversity_penalty=penalty, **kw)
    first = lambda beams: len({b.token_ids[0] for b in beams})  # noqa: E731
    assert first(plain) == 1  # G=B, lambda=0: every group is the same greedy search
    assert first(diverse) >= first(plain)
    huge = diverse_beam_search([1], model, diversity_penalty=100.0, **kw)
    assert first(huge) == beam_width  # every group forced onto a token no earlier group took
    assert distinct_n([b.token_ids for b in huge], 1) >= distinct_n([b.token_ids for b in plain], 1)


def test_penalty_raises_distinct_first_tokens_on_average():
    gains = []
    for seed in range(40):
        model = Bigram(16, seed, 8)
        kw = dict(beam_width=4, num_groups=4, max_tokens=5, eos_token_id=0)
        a = {b.token_ids[0] for b in diverse_beam_search([2], model, diversity_penalty=0.0, **kw)}
        b = {b.token_ids[0] for b in diverse_beam_search([2], model, diversity_penalty=1.0, **kw)}
        gains.append(len(b) - len(a))
    assert min(gains) >= 0 and sum(gains) > 40


# ------------------------------------------------------------------------------------------------ shapes and order


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), groups=st.sampled_from([(1, 1), (3, 1), (4, 2), (4, 4), (6, 2), (6, 3)]),
       max_tokens=st.integers(1, 6), penalty=st.sampled_from([0.0, 0.3, 2.0]), eos=st.sampled_from([None, 0, 5]),
       length_penalty=st.sampled_from([0.0, 1.0, 1.5]), prompt=st.lists(st.integers(0, 9), min_size=1, max_size=3))
def test_output_size_groups_scores_and_sort_order(seed, groups, max_tokens, penalty, eos, length_penalty, prompt):
    beam_width, num_groups = groups
    model = Bigram(14, seed, 2 * beam_width)
    beams = diverse_beam_search(prompt, model, beam_width=beam_width, num_groups=num_groups,
                                diversity_penalty=penalty, max_tokens=max_tokens, length_penalty=length_penalty,
                                eos_token_id=eos)
    assert len(beams) == beam_width
    for g in range(num_groups):
        assert sum(b.group == g for b in beams) == beam_width // num_groups
    assert [b.score for b in beams] == sorted((b.score for b in beams), reverse=True)
    for b in beams:
        assert 1 <= len(b.token_ids) <= max_tokens
        assert b.cum_logprob == pytest.approx(model.path_logprob(prompt, b.token_ids), abs=1e-9)
        assert b.score == beam_score(prompt + b.token_ids, b.cum_logprob, eos, length_penalty)
        ended = b.token_ids[-1] == eos
        assert b.finish_reason == ("stop" if ended else "length")
        assert eos not in b.token_ids[:-1]
        if not ended:
            assert len(b.token_ids) == max_tokens
    # one engine call per step, never more sequences than live beams
    assert len(model.calls) == max_tokens
    assert max(model.calls) <= beam_width
    assert model.calls[0] == 1  # all groups start from the same prompt: asked once


def test_batch_of_prompts_equals_separate_runs_with_one_call_per_step():
    prompts = [[1], [2, 3], [4]]
    kw = dict(beam_width=4, num_groups=2, diversity_penalty=0.7, max_tokens=5, eos_token_id=0)
    batched_model = Bigram(12, 7, 8)
    batched = diverse_beam_search_batch(prompts, batched_model, **kw)
    assert len(batched_model.calls) == 5
    for p, beams in zip(prompts, batched, strict=True):
        assert as_triples(beams) == as_triples(diverse_beam_search(p, Bigram(12, 7, 8), **kw))


def test_ignore_eos_keeps_expanding_through_eos():
    model = Bigram(6, 3, 8)
    beams = diverse_beam_search([1], model, beam_width=4, num_groups=2, diversity_penalty=0.5, max_tokens=6,
                                eos_token_id=0, ignore_eos=True)
    assert all(len(b.token_ids) == 6 and b.finish_reason == "length" for b in beams)


# ------------------------------------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    "override, name",
    [
        ({"beam_width": 0}, "declab.beam_width"),
        ({"beam_width": 2.5}, "declab.beam_width"),
        ({"num_groups": 0}, "declab.num_groups"),
        ({"num_groups": 3}, "declab.num_groups"),
        ({"diversity_penalty": -0.1}, "declab.diversity_penalty"),
        ({"diversity_penalty": float("nan")}, "declab.diversity_penalty"),
        ({"max_tokens": 0}, "declab.max_tokens"),
        ({"length_penalty": "1"}, "declab.length_penalty"),
        ({"ignore_eos": 1}, "declab.ignore_eos"),
    ],
)
def test_bad_parameters_raise_naming_the_parameter(override, name):
    kw = dict(beam_width=4, num_groups=2, diversity_penalty=0.5, max_tokens=4)
    kw.update(override)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        check_params(**kw)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        diverse_beam_search([1], Bigram(8, 0, 8), **kw)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):  # validated before any network access
        diverse_beam_search_http("http://127.0.0.1:9", "m", [1], **kw)


def test_spec_is_plain_data_and_declares_the_parameters():
    assert SPEC.name == "diverse_beam" and SPEC.paper == 20 and SPEC.hook == "search-loop"
    names = [p.name for p in SPEC.params]
    assert names[:3] == ["beam_width", "num_groups", "diversity_penalty"]
    assert {"max_tokens", "length_penalty", "ignore_eos"} <= set(names)
    assert check_params(**{p.name: p.default for p in SPEC.params})  # defaults are consistent
    code = ("import sys, declab.plugins.diverse_beam.spec, declab.plugins.diverse_beam.core, "
            "declab.plugins.diverse_beam.search; "
            "assert not {'vllm', 'torch'} & set(sys.modules), sorted({'vllm', 'torch'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------ HTTP adapter
# Against a real ``declab serve`` in test_diverse_beam_engine.py; here only what a real server cannot show.


def test_http_adapter_needs_an_eos_id_when_the_served_model_is_not_a_local_folder(monkeypatch):
    from declab.plugins.diverse_beam import search

    def served(url, payload, timeout, headers):
        assert url.endswith("/v1/models") and payload is None
        return {"data": [{"id": "toy", "root": "/nonexistent/toy"}]}

    monkeypatch.setattr(search, "_request", served)
    with pytest.raises(ValueError, match="eos_token_id"):
        search._server_eos("http://127.0.0.1:9", "toy", 1.0, {})
