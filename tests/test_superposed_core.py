"""Superposed Decoding's pure parts: the n-gram tables against a dictionary of counts, the draft update against a
literal transcription of the reference's step, redoing a discarded step, EOS handling, the parallel-sampling child
ids the bundled-completions seam reads, and admission (n must equal k, no logprobs / stop_token_ids)."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

import pytest
import torch

from declab.integrations.sdk.embeddings import child_index
from declab.plugins.superposed.core import SuperposedDrafts
from declab.plugins.superposed.ngram import NGramTables

pytestmark = pytest.mark.core

WEIGHTS = (0.01, 0.04, 0.15, 0.18, 0.12)


def _count_reference(tokens: list[int]) -> dict[int, dict[tuple, Counter]]:
    table: dict[int, dict[tuple, Counter]] = {c: defaultdict(Counter) for c in range(1, 6)}
    for c in range(1, 6):
        for i in range(len(tokens) - c):
            table[c][tuple(tokens[i : i + c])][tokens[i + c]] += 1
    return table


def test_ngram_tables_match_counts():
    rng = random.Random(0)
    tokens = [rng.randrange(12) for _ in range(3000)]
    tables = NGramTables.from_tokens(tokens, min_count=1)
    ref = _count_reference(tokens)
    for _ in range(300):
        c = rng.randrange(1, 6)
        context = [rng.randrange(12) for _ in range(c)]
        nxt = rng.randrange(12)
        counts = ref[c].get(tuple(context))
        expected = None if counts is None else counts[nxt] / sum(counts.values())
        got = tables.prob(c, context, nxt)
        assert (got is None) == (expected is None)
        if expected is not None:
            assert got == pytest.approx(expected)
    context = tokens[100:108]
    cands = list(range(12))
    want = [sum(w * (ref[c][tuple(context[-c:])][t] / sum(ref[c][tuple(context[-c:])].values())
                     if tuple(context[-c:]) in ref[c] else 0.0) for c, w in enumerate(WEIGHTS, 1)) for t in cands]
    assert tables.interpolated(context, cands, WEIGHTS) == pytest.approx(want)


def test_ngram_min_count_drops_rare_long_contexts(tmp_path):
    tokens = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 9]
    tables = NGramTables.from_tokens(tokens, min_count=2)
    assert tables.prob(2, [1, 2], 3) == 1.0  # seen twice
    assert tables.prob(3, [4, 5, 6], 7) is None  # seen once: dropped
    assert tables.prob(1, [4], 5) == 1.0  # context length 1 keeps everything
    tables.save(tmp_path / "t.npz")
    again = NGramTables.load(tmp_path / "t.npz")
    assert again.describe() == tables.describe()


def _reference_step(alive, scores, logits, k, first, eos, ngram, alpha, temp, m, penalty):
    """A literal transcription of the reference's Superpose.forward for one prompt (lists, no tensors)."""
    probs = torch.softmax(logits.double() / temp, -1).tolist()
    top = sorted(range(len(probs)), key=lambda t: -probs[t])[:m]
    z = sum(probs[t] for t in top)
    cands = []
    for d in range(1 if first else k):
        ng = ngram(alive[d], top)
        lp = {t: math.log(probs[t] / z) for t in top}
        if not any(x > 0 for x in ng):
            row = {t: (1 - alpha) * lp[t] - penalty for t in top}
        else:
            row = {t: (1 - alpha) * lp[t] + alpha * (math.log(x) if x > 0 else -1e4) for t, x in zip(top, ng)}
        for t in top:
            cands.append((scores[d] + row[t], d, t))
    cands.sort(key=lambda c: -c[0])
    cands = cands[: 2 * k]
    live = [c for c in cands if c[2] != eos][:k]
    return [alive[d] + [t] for _, d, t in live], [s for s, _, _ in live]


def test_draft_update_matches_literal_reference():
    rng = torch.Generator().manual_seed(0)
    vocab, k, prompt = 50, 3, [1, 2, 3]
    table = {}

    def ngram(context, cands):
        key = tuple(context[-2:])
        if key not in table:
            table[key] = torch.rand(vocab, generator=rng).tolist()
        return [table[key][t] if table[key][t] > 0.3 else 0.0 for t in cands]

    drafts = SuperposedDrafts(k, prompt, eos_token_id=0, alpha=0.5, softmax_temperature=0.5, n_token_sample=9,
                              penalty=200.0, ngram=lambda ctx, c: ngram(list(ctx), list(c)))
    alive, scores = [list(prompt)], [0.0]
    for s in range(12):
        logits = torch.randn(vocab, generator=rng) * 3
        alive, scores = _reference_step(alive, scores, logits, k, s == 0, 0, ngram, 0.5, 0.5, 9, 200.0)
        drafts.step(s, logits)
        assert [prompt + drafts.draft(d) for d in range(k)] == alive
        assert drafts.steps[-1].scores == pytest.approx(scores)
        weights = drafts.steps[-1].weights
        assert sum(weights) == pytest.approx(1.0) and weights == sorted(weights, reverse=True)


def test_redoing_a_step_replaces_it():
    gen = torch.Generator().manual_seed(1)
    logits = [torch.randn(40, generator=gen) for _ in range(6)]
    a = SuperposedDrafts(3, [5], None, ngram=None)
    for s, row in enumerate(logits):
        a.step(s, row)
    b = SuperposedDrafts(3, [5], None, ngram=None)
    for s, row in enumerate(logits[:4]):
        b.step(s, torch.randn(40, generator=gen))  # discarded tokens (a partial prefill, a recomputation)
        b.step(s, row)
    for s, row in enumerate(logits[4:], start=4):
        b.step(s, row)
    assert [a.draft(d) for d in range(3)] == [b.draft(d) for d in range(3)]


def test_eos_drafts_finish_and_end_the_row():
    vocab, eos = 20, 0
    drafts = SuperposedDrafts(2, [3, 4], eos, ngram=None, softmax_temperature=1.0, n_token_sample=4)
    row = torch.full((vocab,), -5.0)
    row[7], row[8], row[9] = 3.0, 2.9, 2.8
    drafts.step(0, row)
    assert drafts.placeholder() in (7, 8)
    end = torch.full((vocab,), -5.0)
    end[eos] = 10.0
    end[11] = 0.0
    for s in range(1, 4):
        drafts.step(s, end)
    assert drafts.all_finished() and drafts.placeholder() == eos
    completions = drafts.completions()
    assert len(completions) == 2 and all(ended and toks[-1] == eos and len(toks) == 2 for toks, _, ended in completions)


def test_child_index():
    assert child_index("0_cmpl-abc-1") == (0, "cmpl-abc-1")
    assert child_index("12_x") == (12, "x")
    assert child_index("cmpl_3") is None and child_index("3_") is None and child_index("plain") is None


class _Params:
    """The SamplingParams fields admission reads (neutral values for the options the plugin refuses)."""

    def __init__(self, n=3, logprobs=None, stop_token_ids=None, k=3):
        self.n, self.logprobs, self.stop_token_ids = n, logprobs, stop_token_ids
        self.extra_args = {"declab": {"method": "superposed", "k": k}}

    def __getattr__(self, name):
        from declab.integrations.sdk.sampling_options import NEUTRAL

        if name in NEUTRAL:
            return NEUTRAL[name]
        raise AttributeError(name)


@pytest.mark.parametrize("params, named", [
    (_Params(n=1), "declab.k"), (_Params(n=4, k=3), "declab.k"), (_Params(logprobs=2), "logprobs"),
    (_Params(stop_token_ids=[5]), "stop_token_ids"),
])
def test_admission_refuses(params, named, monkeypatch):
    """Through the router's admission (``validate_params``), as vLLM calls it."""
    from declab.integrations.router import DeclabLogitsRouter

    monkeypatch.setenv("DECLAB_PLUGINS", "superposed")
    with pytest.raises(ValueError, match=named):
        DeclabLogitsRouter.validate_params(params)
    DeclabLogitsRouter.validate_params(_Params())
