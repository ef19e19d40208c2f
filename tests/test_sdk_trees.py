"""The SDK's tree math (``declab.integrations.sdk.trees``), pure pieces of the tree-verification seam: tree-mask
attention, paged-context reads, KV relocation. Greedy tree verification is pinned in ``test_token_recycling_core.py``
(against a brute force over Token Recycling's templates).

The end-to-end check (a tree drafter token-identical to vanilla through the engine) is Token Recycling's tree mode
in ``test_token_recycling_engine.py``; these pin the math each piece must satisfy.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from declab.integrations.sdk.trees import DraftTree, paged_context, relocation, tree_attention, tree_depths


def _reference(query, keys, values, parents, scale):
    """Each node alone: ordinary attention over the context, its ancestors and itself."""
    n = query.shape[0]
    context = keys.shape[0] - n
    group = query.shape[1] // keys.shape[1]
    out = torch.empty_like(query)
    for i in range(n):
        chain, j = [], i
        while j >= 0:
            chain.append(context + j)
            j = parents[j]
        idx = list(range(context)) + sorted(chain)
        k = keys[idx].repeat_interleave(group, dim=1)  # [m, H, D]
        v = values[idx].repeat_interleave(group, dim=1)
        w = torch.softmax(torch.einsum("hd,mhd->hm", query[i], k) * scale, dim=-1)
        out[i] = torch.einsum("hm,mhd->hd", w, v)
    return out


@st.composite
def trees(draw):
    n = draw(st.integers(1, 12))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    return parents


@settings(max_examples=40, deadline=None)
@given(parents=trees(), context=st.integers(0, 9), kv_heads=st.sampled_from([1, 2]), group=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**16))
def test_tree_attention_equals_attention_over_context_and_ancestors(parents, context, kv_heads, group, seed):
    g = torch.Generator().manual_seed(seed)
    n, d = len(parents), 8
    query = torch.randn(n, kv_heads * group, d, generator=g, dtype=torch.float64)
    keys = torch.randn(context + n, kv_heads, d, generator=g, dtype=torch.float64)
    values = torch.randn(context + n, kv_heads, d, generator=g, dtype=torch.float64)
    got = tree_attention(query, keys, values, parents, 0.3)
    torch.testing.assert_close(got, _reference(query, keys, values, parents, 0.3), rtol=1e-5, atol=1e-5)


def test_tree_attention_on_a_chain_is_causal_attention():
    g = torch.Generator().manual_seed(1)
    n, context, heads, d = 7, 20, 4, 16
    query = torch.randn(n, heads, d, generator=g)
    keys = torch.randn(context + n, heads, d, generator=g)
    values = torch.randn(context + n, heads, d, generator=g)
    chain = tuple(range(-1, n - 1))
    mask = torch.ones(n, context + n, dtype=torch.bool).tril(diagonal=context)
    want = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1), attn_mask=mask, scale=0.25)
    torch.testing.assert_close(tree_attention(query, keys, values, chain, 0.25), want.transpose(0, 1))


@pytest.mark.parametrize("isa", ["vec", "vec16"])
@pytest.mark.parametrize("block_size", [16, 32, 128])
def test_paged_context_reads_what_vllms_cpu_cache_writer_wrote(isa, block_size):
    from declab.integrations.sdk.tree_verification import check_cpu_cache_layout

    check_cpu_cache_layout(isa, num_kv_heads=2, head_size=32 if isa == "vec16" else 64, block_size=block_size)


def test_paged_context_follows_the_block_table():
    blocks, heads, block_size, d = 4, 1, 2, 3
    cache = torch.zeros(blocks, heads, block_size, 2 * d)
    flat = cache.view(blocks, heads, 2, block_size * d)
    for b in range(blocks):  # key block stored [d, block_size], value block [block_size, d]
        for o in range(block_size):
            for x in range(d):
                flat[b, 0, 0, x * block_size + o] = 100 * b + 10 * o + x
                flat[b, 0, 1, o * d + x] = -(100 * b + 10 * o + x)
    keys, values = paged_context(cache, torch.tensor([3, 1]), 3)
    assert keys[:, 0, 0].tolist() == [300, 310, 100]
    assert keys[2, 0].tolist() == [100, 101, 102]
    assert torch.equal(values, -keys)
    assert paged_context(cache, torch.tensor([3]), 0)[0].shape == (0, 1, 3)


@settings(max_examples=60, deadline=None)
@given(parents=trees(), data=st.data())
def test_relocation_makes_the_accepted_path_contiguous(parents, data):
    # a root-to-node path of a random tree
    node = data.draw(st.integers(0, len(parents) - 1))
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    path.reverse()
    rows = list(range(len(parents)))  # row r holds node r's KV
    src, dst = relocation(path)
    for s, t in zip(src, dst):
        rows[t] = rows[s]
    assert rows[: len(path)] == path
    assert all(s > t for s, t in zip(src, dst))


def test_relocation_rejects_a_non_increasing_path():
    with pytest.raises(ValueError):
        relocation([0, 3, 2])
    assert relocation([0, 1, 2]) == ([], [])


def test_tree_depths():
    assert tree_depths([-1, 0, 0, 1, 3, 2]) == [0, 1, 1, 2, 3, 2]
    with pytest.raises(ValueError):
        tree_depths([-1, 1])


def test_a_draft_tree_is_root_first_with_one_parent_per_token():
    tree = DraftTree(torch.tensor([5, 6, 7]), (-1, 0, 0))
    assert tree.draft_tokens() == [6, 7]
    assert DraftTree([5, 6], (-1, 0)).draft_tokens() == [6]
    with pytest.raises(ValueError):
        DraftTree([5, 6], (0, 0))
    with pytest.raises(ValueError):
        DraftTree([5, 6, 7], (-1, 0))


def _paths(tree: DraftTree) -> list[tuple[tuple[int, ...], tuple[float, ...] | None]]:
    """Every node as its root-to-node token path (and its draft-probability row), in the tree's order."""
    out = []
    for i in range(len(tree.parents)):
        path, j = [], i
        while j >= 0:
            path.append(int(tree.tokens[j]))
            j = tree.parents[j]
        probs = None if tree.draft_probs is None else tuple(tree.draft_probs[i].tolist())
        out.append((tuple(reversed(path)), probs))
    return out


@settings(max_examples=60, deadline=None)
@given(parents=trees(), max_depth=st.integers(0, 12), drawn=st.booleans(), seed=st.integers(0, 99))
def test_a_pruned_tree_keeps_exactly_the_nodes_up_to_the_depth_in_order(parents, max_depth, drawn, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50, (len(parents),), generator=g).tolist()
    probs = torch.rand(len(parents), 5, generator=g) if drawn else None
    tree = DraftTree(tokens, tuple(parents), probs, "with_replacement" if drawn else "deterministic")
    pruned = tree.pruned(max_depth)
    expected = [p for p, d in zip(_paths(tree), tree_depths(parents)) if d <= max_depth]  # the naive filter
    assert _paths(pruned) == expected
    assert (pruned is tree) == (max(tree_depths(parents)) <= max_depth)
    assert (pruned.children_drawn, pruned.rule) == (tree.children_drawn, tree.rule)
