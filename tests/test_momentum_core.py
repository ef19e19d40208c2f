"""Unit and property tests of the Momentum Decoding core (no vLLM)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from declab.integrations.sdk.params import resolve_params
from declab.integrations.sdk.rows import RowContext
from declab.plugins.momentum.core import (
    RESISTANCE_FUNCTIONS,
    MomentumProcessor,
    NgramGraph,
    loop_depth_naive,
    pack,
)
from declab.plugins.momentum.spec import SPEC

NEG = float("-inf")


def make(prompt, output, vocab, **params):
    full = resolve_params(SPEC.params, params)
    return MomentumProcessor(full, prompt, output, RowContext(vocab_size=vocab))


def reference_choice(history, logits, top_k=5, alpha=0.2, max_ngram=5, resistance="ours"):
    """The paper's x_t recomputed from scratch (float64, naive loop depth, first max wins)."""
    x = torch.tensor(logits, dtype=torch.float64)
    p = torch.softmax(x, dim=-1)
    order = sorted(range(len(logits)), key=lambda i: -logits[i])[: min(top_k, len(logits))]
    r = RESISTANCE_FUNCTIONS[resistance]
    scores = [float(p[v]) - alpha * r(loop_depth_naive(history, v, max_ngram)) for v in order]
    best = max(range(len(order)), key=lambda j: (scores[j], -j))
    return order[best], dict(zip(order, scores))


# ---------------------------------------------------------------------------------------------------------------
# hand-made cases


def test_loop_is_left_for_a_new_node():
    # The README's figure: prefix [1, 2, 3], then the LM keeps walking the loop 2 -> 3 -> 7 -> 8 -> 2.
    prompt = [1, 2, 3]
    output = [7, 8, 2, 3, 7, 8, 2, 3, 7]
    logits = [0.0] * 16
    logits[8] = 5.0  # greedy would close the loop again
    logits[9] = 3.5  # an unseen token
    logits[2] = 3.0
    proc = make(prompt, output, 16)
    history = prompt + output
    assert loop_depth_naive(history, 8, 5) == 5
    assert proc.loop_depths([8, 9, 2, 1]) == [5, 0, 1, 1]
    row = proc(torch.tensor(logits, dtype=torch.float32))
    assert int(torch.argmax(row)) == 9 == reference_choice(history, logits)[0]
    assert int(torch.argmax(torch.tensor(logits))) == 8


def test_incremental_calls_follow_a_live_output_list():
    prompt = [1, 2, 3]
    output: list[int] = []
    proc = make(prompt, output, 16, top_k=3)
    logits = torch.zeros(16)
    logits[2] = 4.0
    proc(logits.clone())
    assert proc.loop_depths([2, 3, 4]) == [1, 1, 0]
    for t in [2, 3, 2, 3]:
        output.append(t)
        proc(logits.clone())
        hist = prompt + output
        assert proc.graph is not None and proc.graph.length == len(hist)
        assert proc.loop_depths(range(16)) == [loop_depth_naive(hist, v, 5) for v in range(16)]
    # history 1 2 3 2 3 2 3: candidate 2 would repeat the 5-gram 2 3 2 3 2 (positions 1..5)
    assert proc.loop_depths([2]) == [5]


def test_unseen_top1_keeps_argmax_and_row_shape():
    proc = make([4, 5, 6], [7], 12, top_k=4)
    logits = torch.tensor([0.1, 2.0, 0.3, 1.5, 1.0, 0.2, 0.9, 0.8, 0.0, -1.0, 0.5, 0.4])
    p = torch.softmax(logits.double(), -1)
    row = proc(logits.clone())
    assert int(torch.argmax(row)) == 1
    finite = torch.isfinite(row)
    assert int(finite.sum()) == 4
    assert set(torch.nonzero(finite).flatten().tolist()) == {1, 3, 4, 6}
    # candidate 4 is a node of the graph (in the prompt, no longer loop): s = p - 0.2 * R(1) = p - 0.2
    assert row[4].item() == pytest.approx(p[4].item() - 0.2, abs=1e-6)
    assert row[1].item() == pytest.approx(p[1].item(), abs=1e-6)


def test_prompt_counts_in_the_graph():
    proc = make([3, 4], [], 8, top_k=2)
    assert proc.loop_depths([3, 4, 5]) == [1, 1, 0]
    logits = torch.tensor([0.0, 0.0, 0.0, 3.0, 0.0, 2.9, 0.0, 0.0])
    assert int(torch.argmax(proc(logits))) == 5


def test_float32_ties_go_to_the_higher_logit():
    # Two unseen candidates whose probabilities differ by less than a float32 ulp of 0.5: the reference keeps the
    # first of its top-k (the higher logit, token 9), argmax over a float32 row would pick token 2 without care.
    a = torch.tensor(1e-3, dtype=torch.float32)
    b = torch.nextafter(a, torch.tensor(1.0))
    logits = torch.full((12,), NEG)
    logits[2] = a
    logits[9] = b
    row = make([0], [], 12)(logits)
    assert int(torch.argmax(row)) == 9
    assert int(torch.isfinite(row).sum()) == 2


def test_rollback_rebuilds_state():
    output = [1, 2, 1, 2]
    proc = make([0], output, 6)
    proc(torch.zeros(6))
    assert proc.loop_depths([1]) == [3]  # 2-1-2 + 1
    del output[2:]
    proc(torch.zeros(6))
    assert proc.loop_depths([1]) == [loop_depth_naive([0, 1, 2], 1, 5)] == [1]


# ---------------------------------------------------------------------------------------------------------------
# parameters and their bounds


def test_spec_matches_core():
    names = {p.name: p for p in SPEC.params}
    assert set(names) == {"top_k", "alpha", "max_ngram", "resistance"}
    assert set(names["resistance"].choices) == set(RESISTANCE_FUNCTIONS)
    assert resolve_params(SPEC.params, {}) == {"top_k": 5, "alpha": 0.2, "max_ngram": 5, "resistance": "ours"}
    assert SPEC.load_row_processor() is MomentumProcessor
    for bad in ({"top_k": 0}, {"alpha": -0.1}, {"max_ngram": 0}, {"resistance": "nope"}, {"top_k": 2049}):
        with pytest.raises(ValueError):
            resolve_params(SPEC.params, bad)


def test_spec_imports_no_torch():
    code = (
        "import sys; import declab.plugins.momentum.spec, declab.plugins.momentum; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", sorted(RESISTANCE_FUNCTIONS))
def test_resistance_functions_are_zero_at_zero_and_nondecreasing(name):
    r = RESISTANCE_FUNCTIONS[name]
    vals = [r(d) for d in range(0, 17)]
    assert vals[0] == 0.0
    assert all(math.isfinite(v) and v > 0 for v in vals[1:])
    assert all(b >= a for a, b in zip(vals, vals[1:]))


def test_ours_table():
    assert [RESISTANCE_FUNCTIONS["ours"](d) for d in range(8)] == [0, 1, 3, 4, 5, 5, 5, 5]


def test_top_k_one_is_greedy_even_when_penalised():
    output = [1, 2, 1, 2, 1, 2, 1]
    logits = torch.tensor([0.0, 0.0, 6.0, 0.0, 0.0])
    row = make([0], output, 5, top_k=1, alpha=10.0)(logits)
    assert int(torch.isfinite(row).sum()) == 1 and int(torch.argmax(row)) == 2


def test_top_k_above_vocab_keeps_every_token():
    row = make([0], [], 7, top_k=2048)(torch.randn(7))
    assert bool(torch.isfinite(row).all())


def test_alpha_zero_is_greedy():
    output = [1, 2, 1, 2, 1, 2, 1]
    logits = torch.tensor([0.0, 0.0, 6.0, 5.9, 0.0])
    assert int(torch.argmax(make([0], output, 5, alpha=0.0)(logits.clone()))) == 2
    assert int(torch.argmax(make([0], output, 5)(logits.clone()))) == 3


def test_alpha_max_prefers_any_unseen_candidate():
    output = [1, 2, 3]
    logits = torch.tensor([0.0, 9.0, 8.0, 7.0, 1.0, -3.0])
    row = make([0], output, 6, alpha=10.0, top_k=5)(logits)
    assert int(torch.argmax(row)) == 4


def test_max_ngram_bounds():
    hist = [1, 2, 3, 1, 2, 3, 1, 2]
    proc1 = make(hist, [], 5, max_ngram=1)
    assert proc1.loop_depths([3, 4, 1]) == [1, 0, 1]
    proc16 = make(hist, [], 5, max_ngram=16)
    assert proc16.loop_depths([3, 1]) == [loop_depth_naive(hist, 3, 16), loop_depth_naive(hist, 1, 16)] == [6, 1]


# ---------------------------------------------------------------------------------------------------------------
# properties

tokens = st.integers(min_value=0, max_value=7)
VOCAB = 8


@settings(max_examples=300, deadline=None)
@given(
    prompt=st.lists(tokens, min_size=0, max_size=20),
    output=st.lists(tokens, min_size=0, max_size=60),
    chunks=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=30),
    max_ngram=st.integers(min_value=1, max_value=7),
)
def test_incremental_state_equals_scratch(prompt, output, chunks, max_ngram):
    live: list[int] = []
    proc = make(prompt, live, VOCAB, max_ngram=max_ngram)
    pos, i = 0, 0
    while True:
        proc(torch.zeros(VOCAB))
        hist = prompt + live
        scratch = NgramGraph(max_ngram)
        scratch.extend(hist)
        assert proc.graph.grams == scratch.grams
        assert proc.graph.grams == {
            pack(hist[a:b]) for b in range(1, len(hist) + 1) for a in range(max(0, b - max_ngram), b)
        }
        assert proc.loop_depths(range(VOCAB)) == [loop_depth_naive(hist, v, max_ngram) for v in range(VOCAB)]
        if pos >= len(output):
            break
        step = chunks[i % len(chunks)] or 1
        live.extend(output[pos : pos + step])
        pos += step
        i += 1


@settings(max_examples=300, deadline=None)
@given(
    prompt=st.lists(tokens, min_size=1, max_size=15),
    output=st.lists(tokens, min_size=0, max_size=40),
    logits=st.lists(st.floats(-8, 8, width=32), min_size=VOCAB, max_size=VOCAB, unique=True),
    top_k=st.integers(min_value=1, max_value=10),
    alpha=st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0, 10.0]),
    max_ngram=st.integers(min_value=1, max_value=6),
    resistance=st.sampled_from(sorted(RESISTANCE_FUNCTIONS)),
)
def test_greedy_matches_the_paper_rule(prompt, output, logits, top_k, alpha, max_ngram, resistance):
    params = dict(top_k=top_k, alpha=alpha, max_ngram=max_ngram, resistance=resistance)
    row = make(prompt, output, VOCAB, **params)(torch.tensor(logits, dtype=torch.float32))
    choice, scores = reference_choice(prompt + output, logits, **params)
    assert int(torch.argmax(row)) == choice
    finite = torch.isfinite(row)
    assert set(torch.nonzero(finite).flatten().tolist()) == set(scores)
    for v, s in scores.items():
        assert row[v].item() == pytest.approx(s, abs=1e-5)


@settings(max_examples=200, deadline=None)
@given(
    prompt=st.lists(tokens, min_size=1, max_size=15),
    output=st.lists(tokens, min_size=0, max_size=40),
    logits=st.lists(st.floats(-8, 8, width=32), min_size=VOCAB, max_size=VOCAB, unique=True),
    top_k=st.integers(min_value=1, max_value=10),
    alpha=st.floats(0.0, 10.0),
)
def test_unseen_top1_is_never_displaced(prompt, output, logits, top_k, alpha):
    hist = prompt + output
    top1 = max(range(VOCAB), key=lambda i: logits[i])
    hist = [t for t in hist if t != top1] or [(top1 + 1) % VOCAB]
    row = make(hist, [], VOCAB, top_k=top_k, alpha=alpha)(torch.tensor(logits, dtype=torch.float32))
    assert int(torch.argmax(row)) == top1


special = st.sampled_from([NEG, float("inf"), float("nan")])


@settings(max_examples=300, deadline=None)
@given(
    output=st.lists(tokens, min_size=0, max_size=30),
    logits=st.lists(st.one_of(st.floats(-50, 50, width=32), special), min_size=VOCAB, max_size=VOCAB),
    top_k=st.integers(min_value=1, max_value=10),
    alpha=st.floats(0.0, 10.0),
    max_ngram=st.integers(min_value=1, max_value=16),
    resistance=st.sampled_from(sorted(RESISTANCE_FUNCTIONS)),
)
def test_never_all_neg_inf(output, logits, top_k, alpha, max_ngram, resistance):
    proc = make([0, 1], output, VOCAB, top_k=top_k, alpha=alpha, max_ngram=max_ngram, resistance=resistance)
    row = proc(torch.tensor(logits, dtype=torch.float32))
    assert row.shape == (VOCAB,)
    assert not bool(torch.isnan(row).any())
    assert bool(torch.isfinite(row).any())
    finite_in = [x for x in logits if not math.isnan(x) and x != NEG]
    if finite_in:
        # only tokens that had a usable logit can be chosen
        chosen = torch.nonzero(torch.isfinite(row)).flatten().tolist()
        assert all(not (math.isnan(logits[v]) or logits[v] == NEG) for v in chosen)


def test_all_neg_inf_input_comes_back_finite():
    row = make([0], [], 4)(torch.full((4,), NEG))
    assert bool(torch.isfinite(row).all())


class _CountingList(list):
    """A list that counts how many items are read through indexing/slicing (the processor's only access)."""

    reads = 0

    def __getitem__(self, item):
        out = super().__getitem__(item)
        _CountingList.reads += len(out) if isinstance(item, slice) else 1
        return out

    def __iter__(self):
        _CountingList.reads += len(self)
        return super().__iter__()


def test_each_step_reads_only_the_new_tokens():
    prompt = _CountingList(range(50))
    output = _CountingList()
    _CountingList.reads = 0
    proc = make(prompt, output, 64)
    logits = torch.randn(64)
    proc(logits.clone())
    assert _CountingList.reads == 50  # the prompt, once
    for step in range(200):
        list.append(output, step % 7)
        proc(logits.clone())
    assert _CountingList.reads == 50 + 200
    assert proc.loop_depths(range(64)) == [loop_depth_naive(list(prompt) + list(output), v, 5) for v in range(64)]
