"""Pure-core tests of the exact-extract plugin (no vLLM): suffix automaton, span-constrained processor, exact search."""

from __future__ import annotations

import random
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from declab.integrations.sdk.rows import RowContext
from declab.plugins.extractive.core import (
    ExtractiveProcessor,
    SpanAutomaton,
    all_spans,
    best_span,
    brute_force_best_span,
    build_passage_automaton,
    passage_segments,
    span_logprob,
)

SETTINGS = settings(max_examples=150, deadline=None)


def substrings(seq):
    seq = tuple(seq)
    return {seq[i:j] for i in range(len(seq) + 1) for j in range(i, len(seq) + 1)}


def contains(seg, sub):
    seg, sub = list(seg), list(sub)
    return any(seg[i : i + len(sub)] == sub for i in range(len(seg) - len(sub) + 1))


token_lists = st.lists(st.integers(0, 3), max_size=14)


# ---------------------------------------------------------------------------------------------------------------
# SpanAutomaton
# ---------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(token_lists, st.lists(st.integers(0, 4), max_size=6))
def test_automaton_accepts_exactly_the_substrings(seq, probe):
    sam = SpanAutomaton(seq)
    subs = substrings(seq)
    # every substring is accepted, and a random probe is accepted iff it is a substring
    for s in subs:
        assert sam.is_span(s)
    assert sam.is_span(probe) == (tuple(probe) in subs)
    # enumerating all paths from start yields exactly the substrings (each once)
    paths = []

    def dfs(state, prefix):
        paths.append(tuple(prefix))
        for t in sam.allowed(state):
            dfs(sam.step(state, t), prefix + [t])

    dfs(sam.start, [])
    assert len(paths) == len(set(paths))
    assert set(paths) == subs
    assert sam.num_distinct_spans() == len(subs) - 1
    # linear size
    assert sam.num_states <= max(1, 2 * len(seq) - 1) + 1


@SETTINGS
@given(st.lists(token_lists, max_size=4), st.lists(st.integers(0, 4), max_size=6))
def test_multi_segment_automaton_never_crosses_segments(segs, probe):
    sam = SpanAutomaton.from_segments(segs)
    subs = set().union(*(substrings(s) for s in segs)) if segs else {()}
    assert sam.is_span(probe) == (tuple(probe) in subs)
    for s in subs:
        assert sam.is_span(s)
    for state in range(sam.num_states):
        assert all(t >= 0 for t in sam.allowed(state))


def test_automaton_basics():
    sam = SpanAutomaton([5, 6, 5, 7])
    assert sam.allowed(sam.start) == [5, 6, 7]
    s = sam.step(sam.start, 5)
    assert sam.allowed(s) == [6, 7]
    assert sam.step(s, 5) is None
    assert sam.step(sam.start, -1) is None
    assert sam.is_span([]) and sam.is_span([6, 5, 7]) and not sam.is_span([7, 5])
    empty = SpanAutomaton([])
    assert empty.allowed(empty.start) == [] and empty.is_span([]) and not empty.is_span([0])
    with pytest.raises(ValueError):
        SpanAutomaton([1, -2])


def test_automaton_build_is_linear_on_a_long_passage():
    rng = random.Random(0)
    seq = [rng.randrange(50) for _ in range(20000)]
    sam = SpanAutomaton(seq)
    assert sam.num_states <= 2 * len(seq)
    assert sam.is_span(seq[1234:1300]) and sam.is_span(seq)


# ---------------------------------------------------------------------------------------------------------------
# Tokenization variants
# ---------------------------------------------------------------------------------------------------------------


class ToyBPE:
    """Byte-level-BPE-like toy: a word token carries its leading space (" Marrator" != "Marrator")."""

    def __init__(self):
        self.vocab: dict[str, int] = {"<eos>": 0}

    def __call__(self, text: str) -> list[int]:
        ids = []
        for piece in re.findall(r" ?[^\s]+|\s", text):
            if piece not in self.vocab:
                self.vocab[piece] = len(self.vocab)
            ids.append(self.vocab[piece])
        return ids

    def ids(self, *pieces):
        return [self.vocab[p] for p in pieces]


def test_leading_space_variants_cover_first_word_and_line_starts():
    tok = ToyBPE()
    passage = "Marrator founded the town.\nThe river Olm floods."
    segs = passage_segments(passage, tok)
    assert segs[0] == tok(passage)
    sam = build_passage_automaton(passage, tok)
    # the answer after "Answer:" starts with a space
    assert sam.is_span(tok(" Marrator founded"))
    assert sam.is_span(tok("Marrator founded"))  # as-is tokenization still works
    assert sam.is_span(tok(" The river"))  # line start
    assert sam.is_span(tok(" the town."))  # mid text
    assert not sam.is_span(tok(" town. The"))  # not passage text (a newline sits there)
    assert not sam.is_span(tok(" Marrator the"))


# ---------------------------------------------------------------------------------------------------------------
# ExtractiveProcessor
# ---------------------------------------------------------------------------------------------------------------

EOS = 0


def char_tokenize(text: str) -> list[int]:
    # ids 1.. for the characters of a tiny alphabet; the space is a token too
    return [" abcd".index(c) + 1 for c in text]


def expected_allowed(segs, out, max_tokens, vocab):
    if len(out) >= max_tokens or not any(contains(s, out) for s in segs):
        return {EOS}
    keep = {t for t in range(vocab) if t != EOS and any(contains(s, out + [t]) for s in segs)}
    if out:
        keep.add(EOS)
    return keep or {EOS}


@SETTINGS
@given(
    st.text(alphabet="ab cd", max_size=12),
    st.integers(1, 6),
    st.integers(0, 2**31 - 1),
    st.booleans(),
)
def test_processor_keeps_outputs_spans(passage, max_tokens, seed, sample):
    vocab = 8
    ctx = RowContext(vocab_size=vocab, eos_token_id=EOS, tokenize=char_tokenize)
    params = {"passage": passage, "mode": "greedy", "max_span_tokens": max_tokens}
    out: list[int] = []
    proc = ExtractiveProcessor(params, [1, 2, 3], out, ctx)
    segs = passage_segments(passage, char_tokenize)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max_tokens + 3):
        row = torch.randn(vocab, generator=gen) * 3
        res = proc(row)
        assert res.shape == (vocab,)
        finite = {i for i in range(vocab) if torch.isfinite(res[i])}
        assert finite, "never an all -inf row"
        assert finite == expected_allowed(segs, out, max_tokens, vocab)
        if sample:
            tok = int(torch.multinomial(torch.softmax(res, -1), 1, generator=gen))
        else:
            tok = int(torch.argmax(res))
        if tok == EOS:
            break
        out.append(tok)
        assert any(contains(s, out) for s in segs)
    assert len(out) <= max_tokens
    assert proc._consumed == len(out)  # state was advanced incrementally, token by token


def test_processor_first_token_with_leading_space_and_eos_rules():
    tok = ToyBPE()
    passage = "Marrator founded the town."
    tok(passage), tok(" " + passage), tok(" elsewhere")
    vocab = len(tok.vocab) + 2
    ctx = RowContext(vocab_size=vocab, eos_token_id=0, tokenize=tok)
    out: list[int] = []
    proc = ExtractiveProcessor({"passage": passage}, [], out, ctx)
    res = proc(torch.zeros(vocab))
    keep = {i for i in range(vocab) if torch.isfinite(res[i])}
    assert tok.vocab[" Marrator"] in keep and tok.vocab["Marrator"] in keep and tok.vocab[" the"] in keep
    assert 0 not in keep  # no empty answer
    assert tok.vocab[" elsewhere"] not in keep
    out.append(tok.vocab[" Marrator"])
    res = proc(torch.zeros(vocab))
    keep = {i for i in range(vocab) if torch.isfinite(res[i])}
    assert keep == {0, tok.vocab[" founded"]}


def test_processor_forces_eos_when_needed():
    ctx = RowContext(vocab_size=6, eos_token_id=EOS, tokenize=char_tokenize)
    # empty passage: only EOS
    proc = ExtractiveProcessor({"passage": ""}, [], [], ctx)
    res = proc(torch.randn(6))
    assert torch.isfinite(res).nonzero().flatten().tolist() == [EOS]
    # the sampler ignored the mask: output left the passage -> only EOS from then on
    out = [2, 5]
    proc = ExtractiveProcessor({"passage": "ab"}, [], out, ctx)
    res = proc(torch.randn(6))
    assert torch.isfinite(res).nonzero().flatten().tolist() == [EOS]
    # every kept logit is -inf (masked by someone else): EOS becomes finite
    proc = ExtractiveProcessor({"passage": "ab"}, [], [], ctx)
    res = proc(torch.full((6,), float("-inf")))
    assert torch.isfinite(res).nonzero().flatten().tolist() == [EOS]
    # no tokenizer: clear error
    with pytest.raises(ValueError):
        ExtractiveProcessor({"passage": "ab"}, [], [], RowContext(vocab_size=6, eos_token_id=0))
    with pytest.raises(ValueError):
        ExtractiveProcessor({"passage": "ab", "mode": "beam"}, [], [], ctx)


# ---------------------------------------------------------------------------------------------------------------
# best_span (exact mode)
# ---------------------------------------------------------------------------------------------------------------


def bigram_score_fn(vocab, seed, temperature):
    gen = torch.Generator().manual_seed(seed)
    table = torch.log_softmax(torch.randn(vocab + 1, vocab, generator=gen) / temperature, -1)  # row vocab = BOS

    def score(prefixes):
        return torch.stack([table[p[-1] if p else vocab] for p in prefixes])

    return score


def history_score_fn(vocab, seed, temperature):
    """Next-token distribution depends on the whole prefix (seeded by it)."""

    def score(prefixes):
        rows = []
        for p in prefixes:
            g = torch.Generator().manual_seed(hash((seed, tuple(p))) & 0x7FFFFFFF)
            rows.append(torch.log_softmax(torch.randn(vocab, generator=g) / temperature, -1))
        return torch.stack(rows)

    return score


@SETTINGS
@given(
    st.lists(st.integers(1, 5), min_size=0, max_size=14),
    st.integers(0, 2**31 - 1),
    st.sampled_from([0.3, 1.0, 3.0]),
    st.integers(1, 8),
    st.sampled_from([1, 4, 64]),
    st.booleans(),
)
def test_best_span_equals_brute_force(passage, seed, temperature, max_len, batch_size, history):
    vocab = 7  # 0 = EOS, passage tokens 1..5, 6 never in the passage
    make = history_score_fn if history else bigram_score_fn
    score = make(vocab, seed, temperature)
    span, lp, rows = best_span(passage, score, max_len, EOS, batch_size=batch_size)
    bspan, blp, brows = brute_force_best_span(passage, score, max_len, EOS)
    if not passage:
        assert span == [] and lp == float("-inf") and rows == 0
        return
    assert lp == pytest.approx(blp, abs=1e-9)
    assert 1 <= len(span) <= max_len and contains(passage, span)
    assert span_logprob(span, score, EOS) == pytest.approx(lp, abs=1e-9)
    n_spans = len(all_spans(passage, max_len, EOS))
    assert rows <= 1 + n_spans  # each distinct prefix is scored at most once
    if n_spans >= 2:
        assert rows < brows


def test_best_span_prunes_with_peaked_model_and_respects_eos_in_passage():
    rng = random.Random(1)
    passage = [rng.randrange(1, 40) for _ in range(300)]
    score = bigram_score_fn(41, 3, 0.3)
    span, lp, rows = best_span(passage, score, 16, EOS)
    bspan, blp, brows = brute_force_best_span(passage, score, 16, EOS)
    assert lp == pytest.approx(blp, abs=1e-9) and span == bspan
    assert rows < len(all_spans(passage, 16, EOS)) // 10  # scores a small part of the trie
    assert rows < brows // 50
    # EOS inside the passage never occurs inside a span
    span, lp, _ = best_span([3, EOS, 4], bigram_score_fn(6, 0, 1.0), 5, EOS)
    assert EOS not in span and span in ([3], [4])


def test_best_span_over_tokenization_variants():
    tok = ToyBPE()
    passage = "Marrator founded the town.\nThe river floods."
    sam = build_passage_automaton(passage, tok)
    vocab = len(tok.vocab) + 1
    score = history_score_fn(vocab, 7, 1.0)
    span, lp, rows = best_span(sam, score, 6, EOS, batch_size=8)
    bspan, blp, brows = brute_force_best_span(sam, score, 6, EOS)
    assert lp == pytest.approx(blp, abs=1e-9) and sam.is_span(span)
    assert rows < brows


def test_best_span_finds_a_planted_answer():
    # a model that strongly prefers " Olm floods" then EOS
    tok = ToyBPE()
    passage = "The river Olm floods every spring."
    ids = tok(passage)
    vocab = len(tok.vocab)
    want = tok(" Olm floods")

    def score(prefixes):
        rows = torch.full((len(prefixes), vocab), -8.0)
        for i, p in enumerate(prefixes):
            nxt = want[len(p)] if len(p) < len(want) and p == want[: len(p)] else EOS
            rows[i, nxt] = 0.0
        return torch.log_softmax(rows, -1)

    # one expansion per call: root, " Olm", " Olm floods", then every frontier bound is below the incumbent
    span, lp, rows = best_span(ids, score, 8, EOS, batch_size=1)
    assert span == want and rows == len(want) + 1
    # batching trades extra rows (the whole frontier above the incumbent) for fewer score_fn calls
    span, lp, rows = best_span(ids, score, 8, EOS, batch_size=32)
    assert span == want and rows <= 1 + len(all_spans(ids, 8, EOS))


def test_stop_token_may_end_a_span_but_not_start_one():
    import torch as _torch

    from declab.integrations.sdk.rows import RowContext
    from declab.plugins.extractive.core import ExtractiveProcessor

    def char_tokenize(text):
        return [ord(c) for c in text]

    ctx = RowContext(vocab_size=256, eos_token_id=0, tokenize=char_tokenize)
    out: list[int] = []
    proc = ExtractiveProcessor({"passage": "abc", "mode": "greedy", "max_span_tokens": 8, "stop": "\n"}, [], out, ctx)
    first = proc(_torch.zeros(256))
    assert first[ord("\n")] == float("-inf") and first[0] == float("-inf")  # no empty answer
    out.append(ord("a"))
    second = proc(_torch.zeros(256))
    assert second[ord("\n")] == 0.0 and second[0] == 0.0 and second[ord("b")] == 0.0
    out.append(ord("\n"))  # after the stop token only EOS remains
    third = proc(_torch.zeros(256))
    assert (third == 0.0).nonzero().flatten().tolist() == [0]
