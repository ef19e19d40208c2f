"""Token Recycling: adjacency matrix, static tree template, BFS drafting and greedy verification (pure torch).

Paper: Xianzhen Luo, Yixuan Wang, Qingfu Zhu, Zhiming Zhang, Xuanyu Zhang, Qing Yang, Dongliang Xu, "Turning Trash
into Treasure: Accelerating Inference of Large Language Models with Token Recycling", arXiv 2408.08696 (2024), ACL
2025. Reading list paper 21. Reference code: github.com/Luowaterbi/TokenRecycling (``evaluation/
inference_recycling.py``: ``recycling_forward``; ``model/recycling/tree_template_.py``: ``choose_tree_template``,
version ``"2.2.2"``). This module is a fresh implementation of the method, not a copy of that code; it imports no
vLLM. Section names below follow the paper's method section (Sec. 3: adjacency matrix initialisation and update,
draft-tree retrieval with Algorithm 1 "Static Tree Based BFS", verification with tree attention; the tree is the
one drawn in the appendix figure of the static tree, Fig. 5). Where the paper's text is not explicit the behaviour
is the reference code's, and it is marked as such.

Method in one paragraph (Sec. 3, Fig. 2). The target LM produces a full next-token distribution at every position
it runs, but greedy decoding keeps only the argmax. Token Recycling keeps the top-k of every such distribution in
an adjacency matrix ``M in Z^{|V| x k}``: row ``t`` holds the k most likely successors of token ``t`` the last time
``t`` was fed to the model. Each decoding step (1) retrieves a draft tree from ``M`` breadth-first, starting from
the last committed token, along a fixed tree template; (2) flattens the tree into one "merged sequence" and runs
the target on it once with a tree attention mask (each node sees the context plus its own ancestors); (3) accepts
the longest root-to-node path whose every token equals the target's greedy choice after its parent, plus one bonus
token (the target's choice after the last accepted node); (4) overwrites the rows of ``M`` of *every* token of the
merged sequence with the top-k of the logits computed at that token's position.

Exact rules implemented here
----------------------------

Initialisation (Sec. 3, "hot start"; Fig. 2: "the adjacency matrix, initialized by inheriting from the previous
query"). The matrix is created once, filled with zeros (reference: ``torch.zeros((vocab_size, k), dtype=long)``),
and is *not* reset between queries: each query starts from the matrix the previous one left. So a never-seen token
``t`` drafts token 0 at every rank. ``AdjacencyMatrix(init="zeros")`` is that; ``init="arange"`` (row = 0..k-1, so
the k children of an unseen token are distinct) is offered as a non-paper variant. ``reset()`` gives a cold start.
A boolean ``seen`` vector (|V| bytes, not in the paper) records which rows were ever written, so that an engine can
stop a chain at an unseen token instead of drafting the zero row.

Update (Sec. 3, update step; reference ``adj_matrix[input_ids] = topk(logits, k=8).indices``). After the target
has run on the merged sequence ``S = (x_t; draft nodes)`` (the root, i.e. the last committed token, and *all* draft
nodes, accepted or rejected), for every position ``j``::

    M[S_j, :] <- top-k indices of logits_j, best first           (whole row overwritten; no merging/averaging)

The logits of a rejected draft node are conditioned on a wrong prefix; the paper recycles them anyway (they are the
"trash" it turns into treasure). Details of the reference that this module pins down:

* ties between duplicate tokens in ``S`` (the same token at several nodes): the reference's index assignment leaves
  the winner unspecified; here the *last* occurrence in ``S`` wins (as if the rows were written in order);
* the reference does not update from the prompt's prefill logits (it only updates after tree steps);
  ``update`` accepts any (token, logits) pairs, the caller decides which to pass;
* the reference hard-codes ``k=8`` in its update (its ``--output-id-topk`` defaults to 8).

Draft-tree retrieval (Sec. 3, Algorithm 1 "Static Tree Based BFS"). The template is a fixed rooted tree whose
nodes are paths of successor ranks: node ``(r_1, ..., r_d)`` is "from the root take candidate ``r_1``, from that
token take candidate ``r_2``, ...". Layer by layer (BFS), all nodes of depth ``d`` are filled in parallel::

    token(root) = x_t
    token(node) = M[token(parent(node)), rank(node)]

The merged sequence is the concatenation of the layers, i.e. nodes in BFS order (``build_draft_tree``).

The paper's tree (``PAPER_TREE``; the appendix figure of the static tree, reference template ``"2.2.2"``): a static,
imbalanced tree of 80 draft nodes (81 with the root) and depth 6, with 8 / 21 / 25 / 15 / 8 / 3 nodes at depths
1..6. The more probable a branch (lower ranks along its path), the more children it gets: the root has all 8
candidates; at depth 1 the children counts by rank are 8, 4, 3, 2, 1, 1, 1, 1; the all-rank-0 "main branch"
``(0,)*d`` reaches the full depth 6. Every node's children are the contiguous ranks ``0..c-1``, so the tree is
fully given by its child counts (``PAPER_TREE_CHILD_COUNTS``). Its largest rank is 7, so it needs ``k >= 8``.

Verification (Sec. 3, tree attention; greedy decoding, as in the paper's experiments). The attention mask of the
merged sequence lets node ``i`` see node ``j`` iff ``j`` is ``i`` or an ancestor of ``i`` (``tree_attention_mask``;
all nodes also see the committed context). With ``a_j`` the target's argmax at node ``j``, node ``i`` is accepted
iff its parent is accepted and ``token(i) == a_parent(i)`` (the root is always accepted); the longest accepted
root-to-node path is committed, followed by the bonus token ``a_last`` (``longest_accepted_path``,
``committed_tokens``). This is lossless: the committed tokens are exactly what plain greedy decoding would write.
Verification is not specific to Token Recycling: those functions live in ``declab.integrations.sdk.trees`` (with
tree attention over the paged cache and KV relocation) and are re-exported here.

vLLM 0.32 (``/work/shared/docs/vllm-0.32-hooks.md`` Sec. 3.2-3.5, 7.3): a ``custom_class`` proposer returns one flat
draft list per request and draft positions get plain causal attention (no tree attention). Stage 1 therefore
drafts only the tree's best chain, the rank-0 path ``x_t -> M[x_t,0] -> M[M[x_t,0],0] -> ...`` (``best_chain``),
which is exactly the paper tree's main branch ``(0,)*d`` (``PAPER_TREE.main_branch_length == 6``; a chain longer
than 6 extends the main branch past the paper's depth). Verifying a chain is the special case of tree verification
where every node has one child (``verify_chain``). The tree functions (``build_draft_tree``,
``tree_attention_mask``, ``longest_accepted_path``) serve stage 2, the whole tree verified by the SDK's
tree-verification seam (``proposer.py``, mode ``"tree"``).

Memory (the paper's "<2MB"): ``|V| * k * itemsize`` bytes. For |V| = 32000, k = 8: int64 (the reference's dtype)
2,048,000 B = 1.95 MiB; int32 (this module's default; any vocabulary < 2**31 fits) 1,024,000 B = 0.98 MiB. Larger
vocabularies scale linearly (e.g. 128,256 tokens, k = 8, int32: 4.10 MB), the ``seen`` vector adds |V| bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

# Verification is not Token Recycling's own: the tree math lives in the SDK (shared with the tree-verification seam
# and any other tree drafter) and is re-exported here under its old names.
from declab.integrations.sdk.trees import committed_tokens, longest_accepted_path, tree_attention_mask, verify_chain
# The successor store (matrix, per-request overlay, rank-0 chains) is shared with other proposers that draft from
# recycled successors: it lives in the family module ``declab.plugins.shared.recycled_successors``, re-exported here.
from declab.plugins.shared.recycled_successors import (AdjacencyMatrix, RequestSuccessors, best_chains,
                                                       successor_rows)

__all__ = [
    "AdjacencyMatrix",
    "RequestSuccessors",
    "successor_rows",
    "TreeTemplate",
    "PAPER_TREE",
    "PAPER_TREE_CHILD_COUNTS",
    "build_draft_tree",
    "best_chain",
    "best_chains",
    "tree_attention_mask",
    "longest_accepted_path",
    "committed_tokens",
    "verify_chain",
]

Path = tuple[int, ...]

# --------------------------------------------------------------------------------------------------------------
# Static tree template (Sec. 3 draft-tree retrieval; appendix figure of the static tree)
# --------------------------------------------------------------------------------------------------------------


class TreeTemplate:
    """A static draft-tree shape: a rooted tree whose nodes are paths of successor ranks.

    Node ``(r_1, ..., r_d)`` stands for "take candidate ``r_1`` of the root, then candidate ``r_2`` of that token,
    ...". Nodes are kept in canonical BFS order: by depth, then lexicographically by path, which puts every parent
    before its children and siblings in rank order. Index 0 is the root (path ``()``, parent -1, rank -1).

    Attributes (tuples, index = node): ``paths``, ``parents``, ``ranks``, ``depths``; and ``layers`` = the
    ``(start, stop)`` index range of each depth (depth 0 = the root).
    """

    def __init__(self, paths: Iterable[Sequence[int]]) -> None:
        nodes: set[Path] = set()
        for p in paths:
            path = tuple(int(r) for r in p)
            if not path:
                continue  # the root is implicit
            if any(r < 0 for r in path):
                raise ValueError(f"negative rank in path {path}")
            if path in nodes:
                raise ValueError(f"duplicate path {path}")
            nodes.add(path)
        for path in nodes:
            if len(path) > 1 and path[:-1] not in nodes:
                raise ValueError(f"path {path} has no parent {path[:-1]} in the template")
        ordered: list[Path] = [()] + sorted(nodes, key=lambda q: (len(q), q))
        index = {q: i for i, q in enumerate(ordered)}
        self.paths: tuple[Path, ...] = tuple(ordered)
        self.parents: tuple[int, ...] = tuple(-1 if not q else index[q[:-1]] for q in ordered)
        self.ranks: tuple[int, ...] = tuple(-1 if not q else q[-1] for q in ordered)
        self.depths: tuple[int, ...] = tuple(len(q) for q in ordered)
        layers: list[tuple[int, int]] = []
        start = 0
        for i in range(1, len(ordered) + 1):
            if i == len(ordered) or self.depths[i] != self.depths[start]:
                layers.append((start, i))
                start = i
        self.layers: tuple[tuple[int, int], ...] = tuple(layers)
        self._index = index

    # -- constructors --------------------------------------------------------------------------------------------

    @classmethod
    def chain(cls, depth: int) -> TreeTemplate:
        """The single rank-0 path of ``depth`` draft nodes (what one flat vLLM draft list can hold)."""
        if depth < 0:
            raise ValueError("depth must be >= 0")
        return cls((0,) * d for d in range(1, depth + 1))

    @classmethod
    def from_child_counts(cls, counts: Mapping[Sequence[int], int]) -> TreeTemplate:
        """Tree where node ``p`` has children ranks ``0..counts[p]-1`` (nodes absent from ``counts``: leaves)."""
        paths: list[Path] = []
        for parent, c in counts.items():
            for r in range(int(c)):
                paths.append(tuple(parent) + (r,))
        return cls(paths)

    @classmethod
    def from_parents(cls, parents: Sequence[int], ranks: Sequence[int]) -> TreeTemplate:
        """From ``(parent index, successor rank)`` pairs; node 0 must be the root (parent -1), parents first."""
        if len(parents) != len(ranks) or not parents:
            raise ValueError("parents and ranks must be non-empty and of equal length")
        if parents[0] != -1:
            raise ValueError("node 0 must be the root (parent -1)")
        paths: list[Path] = [()]
        for i in range(1, len(parents)):
            p = int(parents[i])
            if not 0 <= p < i:
                raise ValueError(f"node {i}: parent {p} must be an earlier node")
            paths.append(paths[p] + (int(ranks[i]),))
        return cls(paths[1:])

    # -- shape ---------------------------------------------------------------------------------------------------

    @property
    def num_nodes(self) -> int:
        """Nodes including the root."""
        return len(self.paths)

    @property
    def num_draft_nodes(self) -> int:
        """Nodes excluding the root (the paper's "80 nodes")."""
        return len(self.paths) - 1

    @property
    def depth(self) -> int:
        return self.depths[-1]

    @property
    def max_rank(self) -> int:
        """Largest successor rank used (the matrix needs ``k > max_rank``); -1 for a bare root."""
        return max(self.ranks)

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Number of nodes at depth 0 (the root), 1, 2, ..."""
        return tuple(b - a for a, b in self.layers)

    @property
    def main_branch_length(self) -> int:
        """Length of the all-rank-0 path from the root (= the depth ``best_chain`` mirrors)."""
        d = 0
        while (0,) * (d + 1) in self._index:
            d += 1
        return d

    def index_of(self, path: Sequence[int]) -> int:
        return self._index[tuple(path)]

    def children(self, node: int) -> list[int]:
        return [i for i, p in enumerate(self.parents) if p == node]

    def leaves(self) -> list[int]:
        has_child = set(self.parents)
        return [i for i in range(self.num_nodes) if i not in has_child]

    def parents_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.tensor(self.parents, dtype=torch.long, device=device)

    def ranks_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.tensor(self.ranks, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return self.num_nodes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TreeTemplate) and self.paths == other.paths

    def __hash__(self) -> int:
        return hash(self.paths)

    def __repr__(self) -> str:
        return f"TreeTemplate(draft_nodes={self.num_draft_nodes}, depth={self.depth}, levels={self.level_sizes})"


# Child counts of the paper's static tree (appendix figure; reference template "2.2.2"): node path -> number of
# children, whose ranks are 0..count-1. 43 internal nodes, 80 draft nodes, depth 6, levels 8/21/25/15/8/3.
PAPER_TREE_CHILD_COUNTS: dict[Path, int] = {
    (): 8,
    # depth 1 -> 21 nodes at depth 2
    (0,): 8, (1,): 4, (2,): 3, (3,): 2, (4,): 1, (5,): 1, (6,): 1, (7,): 1,
    # depth 2 -> 25 nodes at depth 3
    (0, 0): 8, (0, 1): 3, (0, 2): 2, (0, 3): 1, (0, 4): 1, (0, 5): 1, (0, 6): 1, (0, 7): 1,
    (1, 0): 2, (1, 1): 1, (2, 0): 1, (3, 0): 1, (4, 0): 1, (5, 0): 1,
    # depth 3 -> 15 nodes at depth 4
    (0, 0, 0): 5, (0, 0, 1): 2, (0, 0, 2): 1, (0, 0, 3): 1, (0, 0, 4): 1,
    (0, 1, 0): 1, (0, 2, 0): 1, (1, 0, 0): 1, (2, 0, 0): 1, (3, 0, 0): 1,
    # depth 4 -> 8 nodes at depth 5
    (0, 0, 0, 0): 3, (0, 0, 0, 1): 1, (0, 0, 0, 2): 1, (0, 0, 1, 0): 1, (0, 1, 0, 0): 1, (1, 0, 0, 0): 1,
    # depth 5 -> 3 nodes at depth 6
    (0, 0, 0, 0, 0): 2, (0, 0, 0, 1, 0): 1,
}

PAPER_TREE: TreeTemplate = TreeTemplate.from_child_counts(PAPER_TREE_CHILD_COUNTS)


# --------------------------------------------------------------------------------------------------------------
# Drafting (Sec. 3, Algorithm 1 "Static Tree Based BFS")
# --------------------------------------------------------------------------------------------------------------


def build_draft_tree(
    matrix: AdjacencyMatrix, root_token: int, template: TreeTemplate, overlay: RequestSuccessors | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill ``template`` from ``matrix`` breadth-first, starting at ``root_token`` (the last committed token).

    Returns ``(tokens, parents)``, both ``int64 [template.num_nodes]`` on the matrix's device, in BFS order (the
    paper's merged sequence): ``tokens[0] = root_token``, ``parents[0] = -1``, and for every other node
    ``tokens[i] = M[tokens[parents[i]], rank_i]``. One gather per depth, all nodes of a layer at once. With an
    ``overlay`` (the request's own rows), a token's row is read there when present (``successor_rows``).
    """
    if template.max_rank >= matrix.k:
        raise ValueError(f"template uses rank {template.max_rank} but the matrix keeps only k={matrix.k}")
    root = int(root_token)
    if not 0 <= root < matrix.vocab_size:
        raise IndexError(f"root token {root} outside the vocabulary")
    device = matrix.device
    parents = template.parents_tensor(device)
    ranks = template.ranks_tensor(device)
    tokens = torch.empty(template.num_nodes, dtype=torch.long, device=device)
    tokens[0] = root
    for start, stop in template.layers[1:]:
        parent_tokens = tokens[parents[start:stop]]
        if overlay is None:
            tokens[start:stop] = matrix.table[parent_tokens, ranks[start:stop]].long()
        else:
            rows = successor_rows(matrix, parent_tokens, overlay)
            tokens[start:stop] = rows.gather(1, ranks[start:stop].unsqueeze(1)).squeeze(1).long()
    return tokens, parents


def best_chain(
    matrix: AdjacencyMatrix, root_token: int, max_len: int, stop_at_unseen: bool = False
) -> list[int]:
    """Stage-1 draft: follow rank-0 successors from ``root_token`` for ``max_len`` steps.

    ``best_chain(M, x, d)`` equals the tokens of ``PAPER_TREE``'s main branch ``(0,)``, ``(0,0)``, ... for
    ``d <= 6`` (the paper's tree puts its longest path on rank 0); the chain may be longer than the paper's depth.
    With ``stop_at_unseen`` (not in the paper) the chain ends before the successor of a token whose row was never
    written, i.e. before drafting from the all-zero initial row.
    """
    if max_len <= 0:
        return []
    chain = best_chains(matrix, [int(root_token)], max_len)[0]
    if stop_at_unseen:
        feeders = torch.cat([torch.tensor([int(root_token)], device=chain.device), chain[:-1]])
        ok = matrix.seen[feeders]
        bad = (~ok).nonzero()
        if bad.numel():
            chain = chain[: int(bad[0, 0])]
    return chain.tolist()
