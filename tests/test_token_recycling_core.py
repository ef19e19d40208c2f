"""Unit and property tests of the Token Recycling core (pure torch, no vLLM)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from helpers import assert_lossless

from declab.integrations.sdk.trees import committed_tokens, longest_accepted_path, tree_attention_mask, verify_chain
from declab.plugins.token_recycling.core import (
    PAPER_TREE,
    PAPER_TREE_CHILD_COUNTS,
    AdjacencyMatrix,
    TreeTemplate,
    best_chain,
    best_chains,
    build_draft_tree,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def ranked_logits(perms: torch.Tensor) -> torch.Tensor:
    """Logits ``[n, V]`` whose descending order of row j is exactly ``perms[j]`` (no ties)."""
    n, v = perms.shape
    logits = torch.empty((n, v), dtype=torch.float32)
    logits.scatter_(1, perms, torch.arange(v, 0, -1, dtype=torch.float32).expand(n, v).contiguous())
    return logits


def random_perms(gen: torch.Generator, n: int, v: int) -> torch.Tensor:
    if n == 0:
        return torch.empty((0, v), dtype=torch.long)
    return torch.stack([torch.randperm(v, generator=gen) for _ in range(n)])


@st.composite
def templates(draw, max_nodes=30, max_rank=5):
    """Random valid templates: each new node hangs under a random existing node with an unused rank."""
    n = draw(st.integers(0, max_nodes))
    paths = [()]
    used: dict[tuple, set] = {(): set()}
    for _ in range(n):
        parent = paths[draw(st.integers(0, len(paths) - 1))]
        free = [r for r in range(max_rank + 1) if r not in used[parent]]
        if not free:
            continue
        r = draw(st.sampled_from(free))
        used[parent].add(r)
        child = parent + (r,)
        paths.append(child)
        used[child] = set()
    order = draw(st.permutations(paths[1:]))
    return TreeTemplate(order)


def path_to_root(parents: list[int], i: int) -> list[int]:
    out = [i]
    while parents[out[-1]] >= 0:
        out.append(parents[out[-1]])
    return out[::-1]


# ----------------------------------------------------------------------------------------------------------------
# adjacency matrix
# ----------------------------------------------------------------------------------------------------------------


def test_initialisation_is_zeros_like_the_paper():
    m = AdjacencyMatrix(100, k=8)
    assert m.table.shape == (100, 8) and m.table.dtype == torch.int32
    assert int(m.table.abs().sum()) == 0 and m.num_seen == 0
    assert m.successors(42).tolist() == [0] * 8
    a = AdjacencyMatrix(100, k=4, init="arange")
    assert a.successors(7).tolist() == [0, 1, 2, 3]
    a.update([7], torch.randn(1, 100))
    a.reset()
    assert a.successors(7).tolist() == [0, 1, 2, 3] and a.num_seen == 0


def test_memory_bound():
    m = AdjacencyMatrix(32000, k=8)
    assert m.nbytes == 32000 * 8 * 4 == 1_024_000
    assert m.nbytes < 2 * 1024 * 1024 and m.nbytes < 2_000_000
    assert m.nbytes_total == 1_024_000 + 32000
    # The reference's int64 matrix is the paper's "1.95 MB".
    assert AdjacencyMatrix.memory_bytes(32000, 8, torch.int64) == 2_048_000
    assert round(2_048_000 / 2**20, 2) == 1.95
    assert AdjacencyMatrix(32000, 8, dtype=torch.int64).nbytes == 2_048_000
    assert AdjacencyMatrix.memory_bytes(128256, 8) == 4_104_192


def test_bad_arguments():
    with pytest.raises(ValueError):
        AdjacencyMatrix(10, k=0)
    with pytest.raises(ValueError):
        AdjacencyMatrix(10, dtype=torch.float32)
    with pytest.raises(ValueError):
        AdjacencyMatrix(10, init="ones")
    m = AdjacencyMatrix(10, k=3)
    with pytest.raises(IndexError):
        m.successors(10)
    with pytest.raises(ValueError):
        m.update([1, 2], torch.randn(3, 10))  # n mismatch
    with pytest.raises(ValueError):
        m.update([1], torch.randn(1, 2))  # fewer logits than k
    with pytest.raises(ValueError):
        m.update([1], torch.tensor([[1, 2]]))  # fewer candidates than k
    with pytest.raises(ValueError):
        m.update([1], torch.tensor([[1, 2, 10]]))  # candidate outside vocab
    with pytest.raises(ValueError):
        m.update([10], torch.randn(1, 10))  # input token outside vocab
    with pytest.raises(TypeError):
        m.update(torch.tensor([1.0]), torch.randn(1, 10))


@SETTINGS
@given(
    vocab=st.integers(8, 40),
    k=st.integers(1, 8),
    tokens=st.lists(st.integers(-1, 39), min_size=0, max_size=25),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.int32, torch.int64]),
    as_topk=st.booleans(),
)
def test_update_successor_round_trip(vocab, k, tokens, seed, dtype, as_topk):
    k = min(k, vocab)
    tokens = [t if t < vocab else t % vocab for t in tokens]
    gen = torch.Generator().manual_seed(seed)
    m = AdjacencyMatrix(vocab, k=k, dtype=dtype)
    # a prior state, to check that untouched rows stay and touched rows are overwritten, not merged
    prior_tokens = torch.arange(vocab)
    m.update(prior_tokens, ranked_logits(random_perms(gen, vocab, vocab)))
    before = m.table.clone()
    perms = random_perms(gen, len(tokens), vocab)
    payload = perms[:, : k + 2] if as_topk and k + 2 <= vocab else ranked_logits(perms)
    written = m.update(torch.tensor(tokens, dtype=torch.long), payload)
    expected = {}
    for j, t in enumerate(tokens):  # last occurrence wins
        if t >= 0:
            expected[t] = perms[j, :k].tolist()
    assert written == len(expected)
    for t in range(vocab):
        if t in expected:
            assert m.successors(t).tolist() == expected[t]
        else:
            assert torch.equal(m.successors(t), before[t])
        assert m.is_seen(t)
    assert m.table.dtype == dtype


def test_update_ignores_padded_logit_columns_and_marks_seen():
    m = AdjacencyMatrix(6, k=2)
    logits = torch.tensor([[0.0, 1, 2, 3, 4, 5, 99, 98]])  # two padded columns beyond the vocabulary
    assert m.update([3], logits) == 1
    assert m.successors(3).tolist() == [5, 4]
    assert m.is_seen(3) and not m.is_seen(2) and m.num_seen == 1
    assert m.update(torch.tensor([-1, -1]), torch.randn(2, 6)) == 0
    assert m.update(torch.tensor([], dtype=torch.long), torch.randn(0, 6)) == 0


def test_update_rank_zero_is_argmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 300, generator=gen)
    m = AdjacencyMatrix(300, k=8)
    toks = torch.randperm(300, generator=gen)[:50]
    m.update(toks, logits)
    assert torch.equal(m.table[toks, 0].long(), logits.argmax(-1))


# ----------------------------------------------------------------------------------------------------------------
# templates
# ----------------------------------------------------------------------------------------------------------------


def test_paper_tree_shape():
    t = PAPER_TREE
    assert t.num_draft_nodes == 80 and t.num_nodes == 81
    assert t.depth == 6
    assert t.level_sizes == (1, 8, 21, 25, 15, 8, 3)
    assert t.max_rank == 7
    assert t.main_branch_length == 6
    assert [len(t.children(t.index_of((r,)))) for r in range(8)] == [8, 4, 3, 2, 1, 1, 1, 1]
    assert len(t.children(0)) == 8
    for path in [(0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 1), (0, 0, 0, 1, 0, 0), (5, 0, 0), (3, 0, 0, 0), (1, 0, 0, 0, 0)]:
        t.index_of(path)
    assert sum(PAPER_TREE_CHILD_COUNTS.values()) == 80
    # every node's children are the contiguous ranks 0..c-1
    for i in range(t.num_nodes):
        assert sorted(t.ranks[c] for c in t.children(i)) == list(range(len(t.children(i))))
    # canonical BFS order: depth-major, lexicographic within a depth
    assert list(t.paths) == sorted(t.paths, key=lambda p: (len(p), p))


def test_chain_template_and_from_parents():
    c = TreeTemplate.chain(5)
    assert c.num_draft_nodes == 5 and c.depth == 5 and c.parents == (-1, 0, 1, 2, 3, 4)
    assert c.ranks == (-1, 0, 0, 0, 0, 0) and c.main_branch_length == 5
    assert TreeTemplate.chain(0).num_nodes == 1
    again = TreeTemplate.from_parents(PAPER_TREE.parents, PAPER_TREE.ranks)
    assert again == PAPER_TREE
    with pytest.raises(ValueError):
        TreeTemplate([(0, 1)])  # parent (0,) missing
    with pytest.raises(ValueError):
        TreeTemplate([(0,), (0,)])
    with pytest.raises(ValueError):
        TreeTemplate([(-1,)])
    with pytest.raises(ValueError):
        TreeTemplate.from_parents([-1, 2, 0], [-1, 0, 0])


@SETTINGS
@given(tmpl=templates(), seed=st.integers(0, 2**31 - 1), root=st.integers(0, 29))
def test_bfs_tree_matches_template(tmpl, seed, root):
    vocab, k = 30, 6
    gen = torch.Generator().manual_seed(seed)
    m = AdjacencyMatrix(vocab, k=k)
    m.update(torch.arange(vocab), ranked_logits(random_perms(gen, vocab, vocab)))
    tokens, parents = build_draft_tree(m, root, tmpl)
    n = tmpl.num_nodes
    assert tokens.shape == (n,) and parents.shape == (n,)
    assert tokens.dtype == torch.long and parents.dtype == torch.long
    assert int(tokens[0]) == root and int(parents[0]) == -1
    assert parents.tolist() == list(tmpl.parents)
    depth = [0] * n
    for i in range(1, n):
        p = int(parents[i])
        assert 0 <= p < i  # parents come first (BFS order)
        depth[i] = depth[p] + 1
        assert int(tokens[i]) == int(m.successors(int(tokens[p]))[tmpl.ranks[i]])
        # the path of node i, read from the matrix, gives the same token
        t = root
        for r in tmpl.paths[i]:
            t = int(m.successors(t)[r])
        assert int(tokens[i]) == t
    assert depth == list(tmpl.depths)
    assert depth == sorted(depth)  # layer by layer
    assert [depth.count(d) for d in range(tmpl.depth + 1)] == list(tmpl.level_sizes)


def test_paper_tree_needs_k8():
    with pytest.raises(ValueError):
        build_draft_tree(AdjacencyMatrix(50, k=4), 1, PAPER_TREE)
    tokens, parents = build_draft_tree(AdjacencyMatrix(50, k=8), 3, PAPER_TREE)
    assert tokens.tolist() == [3] + [0] * 80  # zero-initialised matrix drafts token 0 everywhere


# ----------------------------------------------------------------------------------------------------------------
# best chain
# ----------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    root=st.integers(0, 19),
    max_len=st.integers(0, 12),
    learned=st.integers(0, 20),
)
def test_best_chain_follows_rank_zero(seed, root, max_len, learned):
    vocab = 20
    gen = torch.Generator().manual_seed(seed)
    m = AdjacencyMatrix(vocab, k=8)
    toks = torch.randperm(vocab, generator=gen)[:learned]
    m.update(toks, ranked_logits(random_perms(gen, learned, vocab)))
    chain = best_chain(m, root, max_len)
    t, expected = root, []
    for _ in range(max_len):
        t = int(m.successors(t)[0])
        expected.append(t)
    assert chain == expected
    assert best_chains(m, torch.tensor([root, root]), max_len).tolist() == [expected, expected]
    # == the rank-0 main branch of the paper's tree (depth 6) and of the chain template
    tokens, _ = build_draft_tree(m, root, PAPER_TREE)
    d = min(max_len, PAPER_TREE.main_branch_length)
    assert chain[:d] == [int(tokens[PAPER_TREE.index_of((0,) * j)]) for j in range(1, d + 1)]
    ctoks, _ = build_draft_tree(m, root, TreeTemplate.chain(max_len))
    assert ctoks[1:].tolist() == chain
    # stop_at_unseen: cut before the successor of a never-written row
    cut = best_chain(m, root, max_len, stop_at_unseen=True)
    feeders = [root] + chain
    n_ok = 0
    while n_ok < max_len and m.is_seen(feeders[n_ok]):
        n_ok += 1
    assert cut == chain[:n_ok]


# ----------------------------------------------------------------------------------------------------------------
# tree attention mask and greedy tree verification
# ----------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(tmpl=templates(max_nodes=40))
def test_mask_is_ancestor_relation(tmpl):
    parents = list(tmpl.parents)
    mask = tree_attention_mask(torch.tensor(parents))
    n = len(parents)
    assert mask.dtype == torch.bool and mask.shape == (n, n)
    assert bool(mask.diagonal().all())  # reflexive
    assert not bool(mask.triu(1).any())  # only earlier nodes (parents first)
    for i in range(n):
        path = set(path_to_root(parents, i))
        assert {j for j in range(n) if mask[i, j]} == path  # exactly its root-to-node path
        assert int(mask[i].sum()) == tmpl.depths[i] + 1
    assert torch.equal(mask, tree_attention_mask(parents))


def test_mask_small_example():
    # root -> a, b ; a -> c
    mask = tree_attention_mask([-1, 0, 0, 1])
    assert mask.int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
    with pytest.raises(ValueError):
        tree_attention_mask([-1, 2, 0])


def brute_force_longest(tokens, parents, target):
    best_len, best_tokens = 0, []
    for i in range(len(parents)):
        path = path_to_root(parents, i)
        if all(tokens[path[j]] == target[path[j - 1]] for j in range(1, len(path))):
            if len(path) - 1 > best_len:
                best_len = len(path) - 1
                best_tokens = [tokens[q] for q in path[1:]]
    return best_len, best_tokens


@SETTINGS
@given(tmpl=templates(max_nodes=40, max_rank=3), data=st.data())
def test_greedy_tree_verification_vs_brute_force(tmpl, data):
    n = tmpl.num_nodes
    vocab = data.draw(st.integers(2, 4))  # tiny vocabulary: many matches and duplicate siblings
    tokens = data.draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n))
    target = data.draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n))
    parents = list(tmpl.parents)
    path = longest_accepted_path(torch.tensor(tokens), torch.tensor(parents), torch.tensor(target))
    best_len, best_tokens = brute_force_longest(tokens, parents, target)
    assert path[0] == 0 and len(path) - 1 == best_len
    for j in range(1, len(path)):
        assert parents[path[j]] == path[j - 1]
        assert tokens[path[j]] == target[path[j - 1]]
    committed = committed_tokens(tokens, path, target)
    assert committed == best_tokens + [target[path[-1]]]
    # the tie rule: deepest, then lowest index
    accepted_at_depth = [
        i for i in range(n)
        if tmpl.depths[i] == best_len
        and all(tokens[q] == target[parents[q]] for q in path_to_root(parents, i)[1:])
    ]
    assert path[-1] == min(accepted_at_depth)


@SETTINGS
@given(draft=st.lists(st.integers(0, 3), max_size=10), data=st.data())
def test_verify_chain_is_tree_verification_on_a_chain(draft, data):
    target = data.draw(st.lists(st.integers(0, 3), min_size=len(draft) + 1, max_size=len(draft) + 1))
    n_acc, bonus = verify_chain(draft, target)
    parents = list(TreeTemplate.chain(len(draft)).parents)
    path = longest_accepted_path([0] + draft, parents, target)
    assert n_acc == len(path) - 1 and bonus == target[path[-1]]
    assert draft[:n_acc] == target[:n_acc] and (n_acc == len(draft) or draft[n_acc] != target[n_acc])
    with pytest.raises(ValueError):
        verify_chain(draft, target[:-1])


# ----------------------------------------------------------------------------------------------------------------
# simulated end-to-end speculative decoding with a toy deterministic model
# ----------------------------------------------------------------------------------------------------------------


def toy_model(vocab: int, order: int, seed: int) -> torch.Tensor:
    """Logit table without ties: ``[V, V]`` (bigram) or ``[V, V, V]`` (next token depends on the last two)."""
    gen = torch.Generator().manual_seed(seed)
    rows = vocab ** (order - 1)
    return ranked_logits(random_perms(gen, rows, vocab)).reshape(*([vocab] * (order - 1)), vocab)


def next_logits(table: torch.Tensor, context: list[int]) -> torch.Tensor:
    return table[context[-1]] if table.dim() == 2 else table[context[-2], context[-1]]


def greedy_decode(table, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(next_logits(table, seq).argmax()))
    return seq[len(prompt):]


def spec_decode_chain(table, matrix, prompt, n, k_draft):
    """Stage 1: best-chain drafts, greedy chain verification, matrix update at every verified position."""
    seq, accepted = list(prompt), []
    while len(seq) - len(prompt) < n:
        root = seq[-1]
        draft = best_chain(matrix, root, k_draft)
        inputs = [root] + draft
        logits = torch.stack([next_logits(table, seq + draft[:j]) for j in range(len(inputs))])
        n_acc, bonus = verify_chain(draft, logits.argmax(-1).tolist())
        seq += draft[:n_acc] + [bonus]
        accepted.append(n_acc)
        matrix.update(torch.tensor(inputs), logits)  # root + every draft position, rejected ones included
    return seq[len(prompt): len(prompt) + n], accepted


def spec_decode_tree(table, matrix, prompt, n, template):
    """Paper: BFS draft tree, tree verification, update from every node of the merged sequence."""
    seq, accepted = list(prompt), []
    while len(seq) - len(prompt) < n:
        tokens, parents = build_draft_tree(matrix, seq[-1], template)
        toks, par = tokens.tolist(), parents.tolist()
        logits = torch.stack(
            [next_logits(table, seq + [toks[q] for q in path_to_root(par, i)[1:]]) for i in range(len(toks))]
        )
        argmax = logits.argmax(-1)
        path = longest_accepted_path(tokens, parents, argmax)
        seq += committed_tokens(tokens, path, argmax)
        accepted.append(len(path) - 1)
        matrix.update(tokens, logits)
    return seq[len(prompt): len(prompt) + n], accepted


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    vocab=st.integers(8, 24),
    order=st.sampled_from([2, 3]),
    seed=st.integers(0, 2**31 - 1),
    k_draft=st.integers(1, 8),
    prompt=st.lists(st.integers(0, 7), min_size=2, max_size=6),
    n=st.integers(1, 40),
)
def test_speculative_decoding_is_lossless(vocab, order, seed, k_draft, prompt, n):
    """Identity on random toy models from a cold matrix, where accepting nothing is legitimate (one token, an
    unlearned row); acceptance is required by the learned-table test below, which a never-drafting chain fails."""
    table = toy_model(vocab, order, seed)
    expected = greedy_decode(table, prompt, n)
    out, accepted = spec_decode_chain(table, AdjacencyMatrix(vocab, k=8), prompt, n, k_draft)
    assert out == expected
    assert all(0 <= a <= k_draft for a in accepted)
    out_tree, acc_tree = spec_decode_tree(table, AdjacencyMatrix(vocab, k=8), prompt, n, PAPER_TREE)
    assert out_tree == expected
    assert all(0 <= a <= 6 for a in acc_tree)


def test_accepted_length_rises_once_the_matrix_has_learned_the_table():
    vocab, k_draft = 64, 5
    table = toy_model(vocab, 2, seed=1)
    prompt = [3, 17]
    n = 400
    m = AdjacencyMatrix(vocab, k=8)
    out, accepted = spec_decode_chain(table, m, prompt, n, k_draft)
    assert_lossless([out], [greedy_decode(table, prompt, n)], sum(accepted), "toy bigram, chain")
    early, late = accepted[:3], accepted[-20:]
    assert sum(late) / len(late) > sum(early) / len(early)
    # a bigram model's greedy path is eventually periodic; once its tokens' rows are learned every draft is exact
    assert late == [k_draft] * len(late)
    # learned rows equal the model's own top-k (bigram: every recycled row is right, even from rejected drafts)
    for t in range(vocab):
        if m.is_seen(t):
            assert m.successors(t).tolist() == torch.topk(table[t], 8).indices.tolist()
    # hot start: a second query reusing the matrix (as the paper does) accepts at least as much from step one
    out2, accepted2 = spec_decode_chain(table, m, prompt, n, k_draft)
    assert_lossless([out2], [out], sum(accepted2), "toy bigram, chain, hot start")
    assert sum(accepted2) >= sum(accepted) and accepted2[0] == k_draft


def test_tree_accepts_at_least_the_main_branch():
    """The paper's tree contains the best chain (depth <= 6), so at a fixed matrix it never accepts fewer tokens."""
    vocab = 16
    for seed in range(15):
        table = toy_model(vocab, 3, seed)
        gen = torch.Generator().manual_seed(seed)
        m = AdjacencyMatrix(vocab, k=8)
        hist = torch.randint(0, vocab, (60,), generator=gen).tolist()
        m.update(torch.tensor(hist[1:]), torch.stack([next_logits(table, hist[: i + 1]) for i in range(1, 60)]))
        seq = hist[-2:]
        tokens, parents = build_draft_tree(m, seq[-1], PAPER_TREE)
        toks, par = tokens.tolist(), parents.tolist()
        argmax = torch.stack(
            [next_logits(table, seq + [toks[q] for q in path_to_root(par, i)[1:]]) for i in range(len(toks))]
        ).argmax(-1)
        tree_acc = len(longest_accepted_path(tokens, parents, argmax)) - 1
        draft = best_chain(m, seq[-1], 6)
        chain_argmax = [int(next_logits(table, seq + draft[:j]).argmax()) for j in range(7)]
        chain_acc, _ = verify_chain(draft, chain_argmax)
        assert tree_acc >= chain_acc


# ----------------------------------------------------------------------------------------------------------------
# packaging
# ----------------------------------------------------------------------------------------------------------------


def test_core_keeps_the_verification_names_it_moved_to_the_sdk():
    from declab.integrations.sdk import trees
    from declab.plugins.token_recycling import core

    for name in ("tree_attention_mask", "longest_accepted_path", "committed_tokens", "verify_chain"):
        assert getattr(core, name) is getattr(trees, name) and name in core.__all__


def test_paper_tree_depths_follow_its_parents():
    from declab.integrations.sdk.trees import tree_depths

    assert tree_depths(PAPER_TREE.parents) == list(PAPER_TREE.depths)


def test_the_declared_template_sizes_match_the_templates():
    from declab.plugins.token_recycling import spec
    from declab.plugins.token_recycling.proposer import TREE_TEMPLATES

    assert set(spec.TREE_TEMPLATES) == set(TREE_TEMPLATES)
    for name, template in TREE_TEMPLATES.items():
        assert spec.TREE_TEMPLATES[name] == template.num_draft_nodes


def test_core_imports_no_vllm():
    code = (
        "import sys, declab.plugins.token_recycling.core, declab.plugins.token_recycling; "
        "assert 'vllm' not in sys.modules, [m for m in sys.modules if m.startswith('vllm')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_device_paths():
    vocab = 1000
    m = AdjacencyMatrix(vocab, k=8, device="cuda")
    logits = torch.randn(81, vocab, device="cuda")
    toks = torch.randint(0, vocab, (81,), device="cuda")
    m.update(toks, logits)
    cpu = AdjacencyMatrix(vocab, k=8)
    cpu.update(toks.cpu(), logits.cpu())
    assert torch.equal(m.table.cpu(), cpu.table)
    t_gpu, p_gpu = build_draft_tree(m, int(toks[0]), PAPER_TREE)
    t_cpu, _ = build_draft_tree(cpu, int(toks[0]), PAPER_TREE)
    assert t_gpu.is_cuda and torch.equal(t_gpu.cpu(), t_cpu)
    assert best_chain(m, int(toks[0]), 10) == best_chain(cpu, int(toks[0]), 10)
    assert tree_attention_mask(p_gpu).is_cuda
