"""Pure cores of the training-free self-speculative drafters of issue 16 (no engine), each against a naive reference:
the hybrid drafter's context index (``plugins/hybrid_drafter/core.py``) and ADED's adaptive tri-gram table and
draft search (``plugins/aded/core.py``)."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declab.plugins.aded.core import TrigramTable, best_chain, best_tree, naive_search, search, tree_paths
from declab.plugins.hybrid_drafter.core import ContextIndex, SourceHindsight, naive_match

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
streams = st.lists(st.integers(0, 5), min_size=0, max_size=60)


# -- hybrid drafter: context index ------------------------------------------------------------------------------


@SETTINGS
@given(streams, st.integers(1, 4), st.integers(0, 3), st.integers(1, 8), st.lists(st.integers(1, 9), max_size=6))
def test_context_index_matches_the_scan_after_every_extension(tokens, min_n, extra, k, cuts):
    """Built in arbitrary chunks, the index answers exactly like a scan of the whole history."""
    max_n = min_n + extra
    index, pos = ContextIndex(min_n, max_n), 0
    for cut in cuts + [len(tokens)]:
        index.extend(tokens[pos : pos + cut])
        pos = min(len(tokens), pos + cut)
        assert index.match(k) == naive_match(tokens[:pos], k, min_n, max_n)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=12, max_size=40), st.integers(1, 5), st.integers(0, 2 ** 16))
def test_source_hindsight_scores_candidates_against_what_was_committed(tokens, k, seed):
    """Candidates recorded along a greedy stream, settled as the stream grows: each source's total is the sum of its
    candidates' common prefixes with the tokens that followed, best is the sum of per-step maxima."""
    rng = random.Random(seed)
    hindsight = SourceHindsight(("a", "b"))
    want = {"steps": 0, "best": 0, "a": 0, "b": 0}
    committed = 4
    while committed < len(tokens):
        cands = {s: [rng.choice([tokens[j], 9]) if j < len(tokens) else 9 for j in range(committed, committed + k)]
                 for s in ("a", "b")}
        hindsight.record("r", committed, cands)
        scores = {}
        for s, cand in cands.items():
            n = 0
            while n < len(cand) and committed + n < len(tokens) and cand[n] == tokens[committed + n]:
                n += 1
            scores[s] = n
        want = {"steps": want["steps"] + 1, "best": want["best"] + max(scores.values()),
                **{s: want[s] + scores[s] for s in ("a", "b")}}
        committed += rng.randint(1, k + 1)
        hindsight.settle("r", tokens[: min(committed, len(tokens))])
    hindsight.settle("r", tokens, final=True)
    assert hindsight.totals == want and not hindsight.pending


def test_context_index_prefers_the_longest_and_latest_match():
    index = ContextIndex(1, 3)
    index.extend([7, 1, 2, 9, 1, 2, 8, 5, 1, 2])
    assert index.match(3) == (2, [8, 5, 1])  # "1 2" last seen before "8"; "5 1 2" never before
    with pytest.raises(ValueError, match="min_n"):
        ContextIndex(3, 2)


# -- ADED: adaptive tri-gram table ------------------------------------------------------------------------------


class ReferenceTable:
    """The table's contract, naively: every observation kept; weights recomputed by replaying them."""

    def __init__(self, decay: float, row_size: int, max_rows: int) -> None:
        self.decay, self.row_size, self.max_rows = decay, row_size, max_rows
        self.events: list[tuple[tuple[int, int], int]] = []

    def observe(self, a, b, c):
        self.events += [((a, b), c), ((-1, b), c)]

    def rows(self) -> OrderedDict:
        rows: OrderedDict = OrderedDict()
        for key, c in self.events:
            row = rows.pop(key, None)
            if row is None:
                row = {}
                if len(rows) >= self.max_rows:
                    rows.popitem(last=False)
            else:
                row = {t: w * self.decay for t, w in row.items()}
            row[c] = row.get(c, 0.0) + 1.0
            if len(row) > self.row_size:
                del row[min(row, key=lambda t: (row[t], -t))]
            rows[key] = row
        return rows


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 6)), max_size=80),
       st.sampled_from([1.0, 0.9, 0.5]), st.integers(1, 4), st.integers(1, 12))
def test_trigram_table_equals_the_replayed_reference(events, decay, row_size, max_rows):
    table, ref = TrigramTable(decay, row_size, max_rows), ReferenceTable(decay, row_size, max_rows)
    for a, b, c in events:
        table.observe(a, b, c)
        ref.observe(a, b, c)
    expected = ref.rows()
    assert list(table.rows) == list(expected)
    for key, row in expected.items():
        assert table.rows[key] == pytest.approx(row)
    for a, b, _ in events:
        got = table.successors(a, b, 3)
        assert sum(p for _, p in got) <= 1 + 1e-9 and all(p > 0 for _, p in got)


def test_unseen_context_backs_off_to_the_bigram_row():
    table = TrigramTable()
    table.observe_stream([1, 2, 3, 4, 2, 5])
    assert [t for t, _ in table.successors(9, 2, 4)] == [5, 3]  # (9, 2) unseen: bigram of 2, latest weighs more
    assert table.successors(9, 9, 4) == []


# -- ADED: draft search -----------------------------------------------------------------------------------------


def random_table(rng: random.Random) -> TrigramTable:
    table = TrigramTable(decay=rng.choice([1.0, 0.8]), row_size=rng.randint(1, 4))
    table.observe_stream([rng.randint(0, 5) for _ in range(rng.randint(0, 80))])
    return table


@pytest.mark.parametrize("seed", range(60))
def test_search_equals_the_naive_reference(seed):
    rng = random.Random(seed)
    table = random_table(rng)
    a, b = rng.randint(0, 5), rng.randint(0, 5)
    args = (rng.randint(0, 40), rng.randint(1, 4), rng.randint(1, 6), rng.choice([0.0, 0.5, 1.0, 3.0]))
    got = tree_paths(search(table, a, b, *args))
    want = naive_search(table, a, b, *args)
    assert got.keys() == want.keys()
    for path, (n, w) in want.items():
        assert got[path][0] == n and got[path][1] == pytest.approx(w), path


@pytest.mark.parametrize("seed", range(40))
def test_drafts_are_paths_of_the_table_and_trees_are_closed(seed):
    rng = random.Random(seed)
    table = random_table(rng)
    a, b = rng.randint(0, 5), rng.randint(0, 5)
    iterations, depth, k = rng.randint(1, 40), rng.randint(1, 6), rng.randint(1, 10)
    nodes = search(table, a, b, iterations, 4, depth)
    assert nodes[0].visits == iterations
    for node in nodes:
        assert node.visits >= sum(nodes[c].visits for c in node.children)
    chain = best_chain(nodes, k)
    assert len(chain) <= min(k, depth)
    ctx = (a, b)
    for t in chain:
        assert t in [s for s, _ in table.successors(*ctx, 4)]
        ctx = (ctx[1], t)
    tokens, parents = best_tree(nodes, k)
    assert tokens[0] == b and parents[0] == -1 and len(tokens) <= k + 1
    assert all(0 <= parents[i] < i for i in range(1, len(tokens)))
    # The chain is the tree's most-visited branch: its prefix of the tree's size is in the tree.
    paths = {(): 0}
    for i in range(1, len(tokens)):
        paths[next(p for p, j in paths.items() if j == parents[i]) + (tokens[i],)] = i
    assert tuple(chain[: max(0, len(tokens) - 1)][:1]) in paths or not chain


def test_a_deterministic_table_drafts_its_only_continuation():
    table = TrigramTable()
    table.observe_stream([1, 2, 3, 4, 5, 6, 7])
    assert best_chain(search(table, 1, 2, 16, 4, 8), 8) == [3, 4, 5, 6, 7]


# -- SJD: the Jacobi window -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_jacobi_window_draws_from_what_it_reports(seed):
    """Every drafted token has positive reported probability, every reported row is a distribution, stale positions
    come first and new positions are point masses; greedy draws the stale argmax."""
    import torch

    from declab.plugins.sjd.core import JacobiWindow, stale_rows

    rng = random.Random(seed)
    vocab, k = rng.randint(2, 12), rng.randint(1, 6)
    rows = torch.randn(rng.randint(1, 8), vocab)
    accepted = rng.randint(0, rows.shape[0] - 1)
    window = JacobiWindow(vocab)
    window.carry(rows, accepted)
    assert torch.equal(window.stale, stale_rows(rows, accepted)) and window.stale.shape[0] == rows.shape[0] - accepted - 1
    gen = torch.Generator().manual_seed(seed)
    for temperature in (0.0, 1.0, 0.5):
        tokens, q = window.draw(k, temperature, gen, rng.choice(["random", "repeat"]))
        assert len(tokens) == k and q.shape == (k, vocab)
        assert torch.allclose(q.sum(dim=1), torch.ones(k))
        assert all(q[i, t] > 0 for i, t in enumerate(tokens))
        n = min(k, window.stale.shape[0])
        if temperature == 0.0:
            assert tokens[:n] == window.stale[:n].argmax(dim=1).tolist()
        for i in range(n, k):
            assert q[i, tokens[i]] == 1.0
