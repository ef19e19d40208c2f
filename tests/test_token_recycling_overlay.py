"""Property tests of Token Recycling's per-request overlay (pure torch, no vLLM): ``RequestSuccessors``,
``successor_rows`` and the drafting functions that read through it, each against a naive dict reference."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declab.plugins.token_recycling.core import (
    PAPER_TREE,
    AdjacencyMatrix,
    RequestSuccessors,
    best_chains,
    build_draft_tree,
    successor_rows,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VOCAB, K = 24, 8


class ReferenceOverlay:
    """The overlay's contract, naively: token -> row (last write wins), the least recently written evicted."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.rows: OrderedDict[int, list[int]] = OrderedDict()

    def update(self, tokens: list[int], top: torch.Tensor) -> None:
        for j, t in enumerate(tokens):  # in order: a later duplicate overwrites an earlier one
            if t < 0:
                continue
            self.rows.pop(t, None)
            if len(self.rows) >= self.max_rows:
                self.rows.popitem(last=False)
            self.rows[t] = top[j].tolist()

    def row(self, matrix: AdjacencyMatrix, t: int) -> list[int]:
        return self.rows[t] if t in self.rows else matrix.table[t].tolist()


steps = st.lists(st.lists(st.integers(-1, VOCAB - 1), min_size=0, max_size=8), min_size=1, max_size=12)


def replay(steps_tokens, max_rows: int, seed: int):
    """The same random updates applied to a matrix, an overlay and the reference (the matrix sees other writes too,
    as under concurrency: every step also writes rows for random tokens of "other requests")."""
    gen = torch.Generator().manual_seed(seed)
    matrix, overlay, ref = AdjacencyMatrix(VOCAB, K), RequestSuccessors(K, max_rows=max_rows), ReferenceOverlay(max_rows)
    for tokens in steps_tokens:
        top = torch.randint(0, VOCAB, (len(tokens), K), generator=gen)
        others = torch.randint(0, VOCAB, (4,), generator=gen)
        matrix.update(others, torch.randint(0, VOCAB, (4, K), generator=gen))
        if tokens:
            matrix.update(torch.tensor(tokens), top)
            overlay.update(tokens, top)
            ref.update(tokens, top)
    return matrix, overlay, ref


@SETTINGS
@given(steps_tokens=steps, max_rows=st.sampled_from([1, 3, 8, 1000]), seed=st.integers(0, 2**16))
def test_overlay_lookup_equals_the_dict_reference(steps_tokens, max_rows, seed):
    matrix, overlay, ref = replay(steps_tokens, max_rows, seed)
    assert len(overlay) == len(ref.rows) <= max_rows
    for t in range(VOCAB):
        row = overlay.successors(t)
        assert (t in overlay) == (t in ref.rows)
        assert (row is None) == (t not in ref.rows)
        if row is not None:
            assert row.tolist() == ref.rows[t]
    tokens = torch.arange(VOCAB)
    assert successor_rows(matrix, tokens, overlay).tolist() == [ref.row(matrix, t) for t in range(VOCAB)]
    assert overlay.nbytes <= max_rows * K * 4  # int32 rows, capacity never past max_rows


@SETTINGS
@given(steps_tokens=steps, seed=st.integers(0, 2**16), roots=st.lists(st.integers(0, VOCAB - 1), min_size=1,
                                                                    max_size=4), max_len=st.integers(0, 8))
def test_chains_and_trees_read_the_overlay_first(steps_tokens, seed, roots, max_len):
    matrix, overlay, ref = replay(steps_tokens, 1000, seed)
    overlays = [overlay if b % 2 == 0 else None for b in range(len(roots))]  # mixed: some requests have none
    chains = best_chains(matrix, roots, max_len, overlays).tolist()
    for b, root in enumerate(roots):
        cur, expect = root, []
        for _ in range(max_len):
            cur = ref.row(matrix, cur)[0] if overlays[b] is not None else int(matrix.table[cur, 0])
            expect.append(cur)
        assert chains[b] == expect
    tokens, parents = build_draft_tree(matrix, roots[0], PAPER_TREE, overlay)
    expect = [roots[0]]
    for i in range(1, PAPER_TREE.num_nodes):
        expect.append(ref.row(matrix, expect[PAPER_TREE.parents[i]])[PAPER_TREE.ranks[i]])
    assert tokens.tolist() == expect
    assert parents.tolist() == list(PAPER_TREE.parents)


@SETTINGS
@given(steps_tokens=steps, seed=st.integers(0, 2**16), root=st.integers(0, VOCAB - 1))
def test_one_stream_alone_drafts_the_same_with_or_without_overlay(steps_tokens, seed, root):
    """At batch 1 the request's rows and the matrix's agree, so the overlay changes no draft (the paper's case)."""
    gen = torch.Generator().manual_seed(seed)
    matrix, overlay = AdjacencyMatrix(VOCAB, K), RequestSuccessors(K)
    for tokens in steps_tokens:
        top = torch.randint(0, VOCAB, (len(tokens), K), generator=gen)
        if tokens:
            matrix.update(torch.tensor(tokens), top)
            overlay.update(tokens, top)
    assert best_chains(matrix, [root], 7, [overlay]).tolist() == best_chains(matrix, [root], 7).tolist()
    assert build_draft_tree(matrix, root, PAPER_TREE, overlay)[0].tolist() == \
        build_draft_tree(matrix, root, PAPER_TREE)[0].tolist()


def test_concurrent_streams_keep_their_own_successors():
    """Two streams write different successors of the same token; the matrix keeps the last writer's, each overlay
    its own stream's (what the paper's single matrix loses under concurrency)."""
    matrix, a, b = AdjacencyMatrix(VOCAB, K), RequestSuccessors(K), RequestSuccessors(K)
    row_a, row_b = torch.arange(K).unsqueeze(0), torch.arange(K, 2 * K).unsqueeze(0)
    for overlay, row in ((a, row_a), (b, row_b)):
        matrix.update(torch.tensor([5]), row)
        overlay.update([5], row)
    assert best_chains(matrix, [5, 5], 1).tolist() == [[K], [K]]  # both read request b's successor
    assert best_chains(matrix, [5, 5], 1, [a, b]).tolist() == [[0], [K]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_rows"):
        RequestSuccessors(K, max_rows=0)
    with pytest.raises(ValueError, match="overlays must have one entry per root"):
        best_chains(AdjacencyMatrix(VOCAB, K), [1, 2], 3, [None])
