"""The draft-tree growers of RSD, SpecTr and DySpec (``plugins/<name>/core.py``) against naive references, with toy
draft "models" (a fixed random distribution per sequence), plus the SDK pieces they share
(``integrations/sdk/tree_drafting.py``): the tree's shape and fields (BFS order, ``draft_probs`` rows, how children
were drawn), sampling without replacement at the right law (a G-test with a negative control), and the draft
model's batched tree forward equal to encoding every root-to-node path on its own."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from stats import goodness_of_fit

from declab.integrations.sdk.tree_drafting import TreeGrower, bfs_order, draft_distribution, gumbel_top_k
from declab.integrations.sdk.trees import DraftTree, tree_depths
from declab.plugins.dyspec.core import DynamicTree, reference_dynamic_tree
from declab.plugins.rsd.core import GumbelTopKTree, StochasticBeamTree, parse_branching, reference_gumbel_tree
from declab.plugins.spectr.core import KSequentialDraftTree, reference_chains

pytestmark = pytest.mark.core

VOCAB = 11


class ToyDraft:
    """Logits per sequence: a fixed random vector per (seed, sequence)."""

    def __init__(self, seed: int, vocab: int = VOCAB, sharpness: float = 2.0) -> None:
        self.seed, self.vocab, self.sharpness = seed, vocab, sharpness
        self.cache: dict[tuple[int, ...], torch.Tensor] = {}

    def logits(self, seq: tuple[int, ...]) -> torch.Tensor:
        if seq not in self.cache:
            g = torch.Generator().manual_seed(hash((self.seed, seq)) % (2**61))
            self.cache[seq] = self.sharpness * torch.randn(self.vocab, generator=g)
        return self.cache[seq]

    def probs(self, temperature: float = 0.0):
        return lambda seq: draft_distribution(self.logits(seq), temperature)


def grow(grower: TreeGrower, draft: ToyDraft) -> tuple[DraftTree, int]:
    """Drive a grower the way ``TreeDraftProposer.draft_trees`` does (round 0: the root); returns the tree and the
    number of rounds after the root's."""
    wanted = grower.grow({0: draft.logits(sequence(grower, 0))})
    rounds = 0
    while wanted:
        rounds += 1
        wanted = grower.grow({n: draft.logits(sequence(grower, n)) for n in wanted})
    return grower.tree(), rounds


def sequence(grower: TreeGrower, node: int) -> tuple[int, ...]:
    out = []
    while node >= 0:
        out.append(grower.tokens[node])
        node = grower.parents[node]
    return tuple(reversed(out))


def tree_sequences(tree: DraftTree) -> list[tuple[int, ...]]:
    seqs: list[tuple[int, ...]] = []
    for i, p in enumerate(tree.parents):
        seqs.append((int(tree.tokens[i]),) if p < 0 else seqs[p] + (int(tree.tokens[i]),))
    return seqs


def assert_well_formed(tree: DraftTree, budget: int) -> None:
    depths = tree_depths(tree.parents)
    assert depths == sorted(depths), "not in BFS order"
    assert len(tree.tokens) - 1 <= budget


def children(tree: DraftTree) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, p in enumerate(tree.parents):
        if p >= 0:
            out.setdefault(p, []).append(i)
    return out


# -- shared pieces ----------------------------------------------------------------------------------------------

def test_bfs_order_keeps_build_order_within_a_depth():
    assert bfs_order([-1, 0, 1, 0, 3, 1, 0]) == [0, 1, 3, 6, 2, 4, 5]


def test_gumbel_top_k_at_temperature_zero_is_top_k_and_draws_distinct_tokens():
    probs = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15])
    assert gumbel_top_k(probs, 3, None) == [1, 3, 4]
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        draw = gumbel_top_k(probs, 4, gen)
        assert len(set(draw)) == 4
    assert len(gumbel_top_k(torch.tensor([0.5, 0.5, 0.0]), 3, gen)) == 2  # never a zero-probability token


def test_gumbel_top_two_has_the_without_replacement_law_and_a_with_replacement_draw_fails():
    probs = torch.tensor([0.35, 0.25, 0.2, 0.12, 0.08])
    q = probs.tolist()
    exact = {(a, b): q[a] * q[b] / (1 - q[a]) for a, b in itertools.permutations(range(5), 2)}
    gen = torch.Generator().manual_seed(1)
    samples = [tuple(gumbel_top_k(probs, 2, gen)) for _ in range(4000)]
    fit = goodness_of_fit(samples, exact)
    assert fit.passes, str(fit)
    # Negative control: two i.i.d. draws, duplicates redrawn (P ~ q_a q_b): the test must tell it apart.
    broken = []
    while len(broken) < 4000:
        a, b = torch.multinomial(probs, 2, replacement=True, generator=gen).tolist()
        if a != b:
            broken.append((a, b))
    control = goodness_of_fit(broken, exact)
    assert not control.passes, str(control)


# -- RSD ------------------------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), branching=st.lists(st.integers(1, 3), min_size=1, max_size=4),
       budget=st.integers(1, 40))
def test_rsd_gumbel_tree_at_temperature_zero_equals_the_naive_recursion(seed, branching, budget):
    draft = ToyDraft(seed)
    tree, rounds = grow(GumbelTopKTree(5, budget, branching), draft)
    assert_well_formed(tree, budget)
    tokens, parents = reference_gumbel_tree(5, draft.probs(), branching, budget)
    assert (list(tree.tokens), list(tree.parents)) == (tokens, parents)
    assert tree.children_drawn == "deterministic" and tree.draft_probs is None
    assert rounds <= len(branching) - 1  # one draft forward per level below the root's


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), budget=st.integers(4, 30))
def test_rsd_gumbel_tree_when_sampling_draws_siblings_without_replacement_and_records_their_distribution(seed,
                                                                                                        budget):
    draft = ToyDraft(seed)
    gen = torch.Generator().manual_seed(seed)
    tree, _ = grow(GumbelTopKTree(5, budget, (3, 2, 2), temperature=0.8, generator=gen), draft)
    assert_well_formed(tree, budget)
    assert tree.children_drawn == "without_replacement" and tree.rule == "recursive"
    seqs = tree_sequences(tree)
    for parent, kids in children(tree).items():
        assert len({int(tree.tokens[k]) for k in kids}) == len(kids)
        for k in kids:  # each child's row is its parent's draft distribution at the draw temperature
            torch.testing.assert_close(tree.draft_probs[k], draft.probs(0.8)(seqs[parent]))
    assert parse_branching("3,2,1") == (3, 2, 1)
    with pytest.raises(ValueError, match="rsd.branching"):
        parse_branching("3,0")


def naive_beam_search(root: int, probs, width: int, depth: int) -> list[set[tuple[int, ...]]]:
    beam = [((root,), 0.0)]
    levels = []
    for _ in range(depth):
        cands = [(seq + (t,), lp + float(torch.log(probs(seq)[t]))) for seq, lp in beam for t in range(VOCAB)]
        beam = sorted(cands, key=lambda c: -c[1])[:width]
        levels.append({seq for seq, _ in beam})
    return levels


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), width=st.integers(1, 4), depth=st.integers(1, 4))
def test_rsd_stochastic_beam_at_temperature_zero_is_beam_search(seed, width, depth):
    draft = ToyDraft(seed)
    tree, _ = grow(StochasticBeamTree(5, width * depth, width, depth), draft)
    assert_well_formed(tree, width * depth)
    seqs = tree_sequences(tree)
    depths = tree_depths(tree.parents)
    expected = naive_beam_search(5, draft.probs(), width, depth)
    for d in range(1, depth + 1):
        assert {s for s, dd in zip(seqs, depths) if dd == d} == expected[d - 1]


def test_rsd_stochastic_beam_when_sampling_keeps_width_distinct_sequences_per_level():
    gen = torch.Generator().manual_seed(3)
    for seed in range(20):
        tree, _ = grow(StochasticBeamTree(5, 40, 4, 5, temperature=1.0, generator=gen), ToyDraft(seed))
        depths = tree_depths(tree.parents)
        assert all(depths.count(d) == 4 for d in range(1, 6))
        assert len(set(tree_sequences(tree))) == len(tree.tokens)
        for kids in children(tree).values():
            assert len({int(tree.tokens[k]) for k in kids}) == len(kids)
        assert tree.children_drawn == "without_replacement"


def test_rsd_stochastic_beam_of_depth_one_is_gumbel_top_k():
    """One level of stochastic beam search = Gumbel-top-k at the root (same law)."""
    draft = ToyDraft(7, vocab=5, sharpness=1.0)
    q = draft.probs(1.0)((5,)).tolist()
    exact = {(a, b): q[a] * q[b] / (1 - q[a]) for a, b in itertools.permutations(range(5), 2)}
    gen = torch.Generator().manual_seed(11)
    samples = []
    for _ in range(3000):
        tree, _ = grow(StochasticBeamTree(5, 2, 2, 1, temperature=1.0, generator=gen), draft)
        samples.append(tuple(int(t) for t in tree.tokens[1:]))
    fit = goodness_of_fit(samples, exact)
    assert fit.passes, str(fit)


# -- SpecTr ---------------------------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.integers(1, 5), length=st.integers(1, 5))
def test_spectr_tree_is_k_iid_chains_drawn_like_the_naive_reference(seed, k, length):
    draft = ToyDraft(seed)
    tree, rounds = grow(KSequentialDraftTree(5, k * length, k, length, temperature=1.0,
                                             generator=torch.Generator().manual_seed(seed)), draft)
    assert_well_formed(tree, k * length)
    chains = reference_chains(5, draft.probs(1.0), k, length, torch.Generator().manual_seed(seed))
    leaves = [s[1:] for s, d in zip(tree_sequences(tree), tree_depths(tree.parents)) if d == length]
    assert leaves == [tuple(c) for c in chains]
    kids = children(tree)
    assert len(kids[0]) == k and all(len(v) == 1 for p, v in kids.items() if p != 0)
    assert tree.children_drawn == "with_replacement" and tree.rule == "k_sequential"
    assert rounds <= length - 1


def test_spectr_at_temperature_zero_drafts_one_greedy_chain_and_cuts_chains_evenly_at_the_budget():
    draft = ToyDraft(2)
    tree, _ = grow(KSequentialDraftTree(5, 20, 4, 5), draft)
    seq = (5,)
    for _ in range(5):
        seq = seq + (int(draft.logits(seq).argmax()),)
    assert tree_sequences(tree)[-1] == seq and len(tree.tokens) == 6
    tree, _ = grow(KSequentialDraftTree(5, 10, 4, 5, temperature=1.0, generator=torch.Generator()), draft)
    assert tree_depths(tree.parents)[1:] == [1] * 4 + [2] * 4 + [3] * 2


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.integers(1, 6), length=st.integers(1, 5))
def test_spectr_merged_tree_is_the_trie_of_the_same_k_chains(seed, k, length):
    """``merge`` (greedy requests): the same k chains as the naive reference, sharing their agreeing prefixes: every
    root-to-leaf path is one of the chains, every chain is a path, and no node has two children with one token."""
    draft = ToyDraft(seed, vocab=4)  # a small vocabulary, so chains often agree
    tree, _ = grow(KSequentialDraftTree(5, k * length, k, length, temperature=1.0,
                                        generator=torch.Generator().manual_seed(seed), merge=True), draft)
    assert_well_formed(tree, k * length)
    chains = {tuple(c) for c in reference_chains(5, draft.probs(1.0), k, length, torch.Generator().manual_seed(seed))}
    depths = tree_depths(tree.parents)
    paths = {s[1:] for s, d in zip(tree_sequences(tree), depths) if d == length}
    assert paths == chains
    assert len(tree.tokens) - 1 == len({c[:i] for c in chains for i in range(1, length + 1)})  # one node per prefix
    for kids in children(tree).values():
        assert len({tree.tokens[c] for c in kids}) == len(kids)


# -- DySpec ---------------------------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), budget=st.integers(1, 25), max_depth=st.integers(1, 6))
def test_dyspec_with_one_node_per_round_is_the_exact_greedy_tree(seed, budget, max_depth):
    draft = ToyDraft(seed)
    grower = DynamicTree(5, budget, 1, max_depth)
    tree, _ = grow(grower, draft)
    assert_well_formed(tree, budget)
    expected = reference_dynamic_tree(5, draft.probs(), budget, max_depth)
    assert set(tree_sequences(tree)[1:]) == {s for s, _ in expected}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), budget=st.integers(1, 40), per_round=st.integers(2, 8),
       temperature=st.sampled_from([0.0, 0.7, 1.0]))
def test_dyspec_batched_rounds_spend_the_budget_and_keep_children_a_prefix_of_their_draw(seed, budget, per_round,
                                                                                         temperature):
    draft = ToyDraft(seed)
    gen = torch.Generator().manual_seed(seed)
    tree, rounds = grow(DynamicTree(5, budget, per_round, 10, temperature, gen), draft)
    assert_well_formed(tree, budget)
    assert len(tree.tokens) - 1 == budget  # the vocabulary never runs out here
    assert rounds <= -(-budget // per_round)  # one draft forward per round
    seqs = tree_sequences(tree)
    for parent, kids in children(tree).items():
        got = [int(tree.tokens[k]) for k in kids]
        if temperature == 0:  # the most probable children, in order
            probs = draft.probs()(seqs[parent])
            assert got == torch.topk(probs, len(got)).indices.tolist()
        assert len(set(got)) == len(got)
    assert (tree.children_drawn == "deterministic") == (temperature == 0)


# -- the draft model's tree forward -------------------------------------------------------------------------------

def test_the_batched_tree_forward_equals_encoding_each_path_alone():
    from declab.integrations.models import default_draft_model
    from declab.integrations.sdk.draft_model import DraftModel

    path = default_draft_model()
    if path is None:
        pytest.skip("no draft model (../shared/fixtures/draft-5m)")
    model = DraftModel.from_pretrained(path)
    contexts = [[5, 100, 200, 300, 17], [7, 8, 9, 1000, 2000, 31, 44, 59]]
    # Two levels of nodes after the root (the context's last token): node ids -> (parent, token)
    levels = [[(0, 11), (0, 12), (0, 13)], [(1, 21), (1, 22), (3, 23)]]
    caches = [model.new_cache() for _ in contexts]
    model.forward(caches, contexts)
    got: list[dict[tuple[int, ...], torch.Tensor]] = [{} for _ in contexts]
    slot_of = [{0: len(c) - 1} for c in contexts]
    paths = [{0: ()} for _ in contexts]
    next_id = [1, 1]
    for level in levels:
        tokens, positions, masks, ids = [], [], [], []
        for r, ctx in enumerate(contexts):
            start = len(caches[r])
            mask = torch.zeros(len(level), start + len(level), dtype=torch.bool)
            mask[:, :len(ctx)] = True
            row_ids = []
            for n, (parent, tok) in enumerate(level):
                node = next_id[r] + n
                paths[r][node] = paths[r][parent] + (tok,)
                slot_of[r][node] = start + n
                a = node
                while a:
                    mask[n, slot_of[r][a]] = True
                    a = levels_parent(levels, a)[0]
                row_ids.append(node)
            next_id[r] += len(level)
            tokens.append([t for _, t in level])
            positions.append([len(ctx) - 1 + len(paths[r][i]) for i in row_ids])
            masks.append(mask)
            ids.append(row_ids)
        out = model.forward_nodes(caches, tokens, positions, masks)
        row = 0
        for r in range(len(contexts)):
            for node in ids[r]:
                got[r][paths[r][node]] = out.logits[row]
                row += 1
    for r, ctx in enumerate(contexts):
        for path, logits in got[r].items():
            alone = model.forward([model.new_cache()], [ctx + list(path)]).logits[0]
            torch.testing.assert_close(logits, alone, atol=2e-4, rtol=1e-4)


def levels_parent(levels, node: int) -> tuple[int, int]:
    """(parent, token) of ``node`` (ids count from 1 over the levels in order)."""
    flat = [x for level in levels for x in level]
    return flat[node - 1]
