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

import sys
from collections.abc import Iterable, Mapping, Sequence

import torch

# Verification is not Token Recycling's own: the tree math lives in the SDK (shared with the tree-verification seam
# and any other tree drafter) and is re-exported here under its old names.
from declab.integrations.sdk.trees import committed_tokens, longest_accepted_path, tree_attention_mask, verify_chain

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

_INT_DTYPES = (torch.int32, torch.int64)


def _as_long_1d(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got {t.dtype}")
    return t.long()


# --------------------------------------------------------------------------------------------------------------
# Adjacency matrix (Sec. 3: initialisation, "hot start", update)
# --------------------------------------------------------------------------------------------------------------


class AdjacencyMatrix:
    """``M[V, k]``: row ``t`` = the top-k successor candidates of token ``t``, best first (paper Sec. 3).

    ``init="zeros"`` is the paper/reference initialisation (every row all token 0); the object is meant to live
    across queries ("hot start", Fig. 2). ``table`` is the matrix itself, ``seen[t]`` whether row ``t`` has ever
    been written (not in the paper; used by ``best_chain(stop_at_unseen=True)``).
    """

    def __init__(
        self,
        vocab_size: int,
        k: int = 8,
        dtype: torch.dtype = torch.int32,
        device: torch.device | str | None = None,
        init: str = "zeros",
    ) -> None:
        if vocab_size < 1:
            raise ValueError("vocab_size must be >= 1")
        if k < 1:
            raise ValueError("k must be >= 1")
        if dtype not in _INT_DTYPES:
            raise ValueError(f"dtype must be torch.int32 or torch.int64, got {dtype}")
        if dtype == torch.int32 and vocab_size > 2**31 - 1:
            raise ValueError("vocab_size does not fit in int32")
        if init not in ("zeros", "arange"):
            raise ValueError("init must be 'zeros' (paper) or 'arange'")
        self.vocab_size = int(vocab_size)
        self.k = int(k)
        self.init = init
        self.table = torch.empty((self.vocab_size, self.k), dtype=dtype, device=device)
        self.seen = torch.empty(self.vocab_size, dtype=torch.bool, device=device)
        self.reset()

    # -- bookkeeping ---------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Cold start: back to the initial matrix (the paper never does this between queries)."""
        if self.init == "zeros":
            self.table.zero_()
        else:
            row = torch.arange(self.k, dtype=self.table.dtype, device=self.table.device) % self.vocab_size
            self.table.copy_(row.expand(self.vocab_size, self.k))
        self.seen.zero_()

    @property
    def dtype(self) -> torch.dtype:
        return self.table.dtype

    @property
    def device(self) -> torch.device:
        return self.table.device

    @property
    def nbytes(self) -> int:
        """Bytes of the matrix itself (what the paper's "<2MB" counts): ``V * k * itemsize``."""
        return self.table.numel() * self.table.element_size()

    @property
    def nbytes_total(self) -> int:
        """Matrix plus the ``seen`` vector (``V`` more bytes)."""
        return self.nbytes + self.seen.numel() * self.seen.element_size()

    @staticmethod
    def memory_bytes(vocab_size: int, k: int = 8, dtype: torch.dtype = torch.int32) -> int:
        """``nbytes`` of a matrix of that shape, without allocating it."""
        return int(vocab_size) * int(k) * torch.empty((), dtype=dtype).element_size()

    @property
    def num_seen(self) -> int:
        return int(self.seen.sum())

    # -- read ----------------------------------------------------------------------------------------------------

    def successors(self, token: int) -> torch.Tensor:
        """Row ``M[token]``: the k successor candidates of ``token``, rank 0 (most likely) first."""
        t = int(token)
        if not 0 <= t < self.vocab_size:
            raise IndexError(f"token {t} outside the vocabulary [0, {self.vocab_size})")
        return self.table[t]

    def is_seen(self, token: int) -> bool:
        return bool(self.seen[int(token)])

    # -- write (Sec. 3, update) ------------------------------------------------------------------------------------

    def top_successors(self, logits_or_topk: torch.Tensor) -> torch.Tensor:
        """``[n, k]`` ranked successor ids of each row: the top-k of floating logits ``[n, V']`` (columns past
        ``vocab_size`` ignored), or the first ``k`` columns of integer candidate ids ``[n, m]``, already ranked."""
        cand = torch.as_tensor(logits_or_topk)
        if cand.is_floating_point():
            if cand.shape[1] > self.vocab_size:
                cand = cand[:, : self.vocab_size]
            if cand.shape[1] < self.k:
                raise ValueError(f"need at least k={self.k} logit columns, got {cand.shape[1]}")
            return torch.topk(cand, self.k, dim=-1, largest=True, sorted=True).indices
        if cand.shape[1] < self.k:
            raise ValueError(f"need at least k={self.k} candidate columns, got {cand.shape[1]}")
        top = cand[:, : self.k]
        if bool(((top < 0) | (top >= self.vocab_size)).any()):
            raise ValueError("candidate ids outside the vocabulary")
        return top

    def update(self, input_tokens, logits_or_topk: torch.Tensor) -> int:
        """Overwrite ``M[input_tokens[j]]`` with the top-k of ``logits_or_topk[j]`` for every ``j``.

        ``input_tokens``: ``[n]`` token ids, the tokens *fed* to the model at the ``n`` positions (the root and every
        draft node, accepted or not, as in the paper); negative ids are padding and are skipped.
        ``logits_or_topk``: either floating logits ``[n, V']`` (the top-k is taken here; columns past
        ``vocab_size``, e.g. a padded LM head, are ignored) or integer candidate ids ``[n, m]`` with ``m >= k``,
        already ranked best first (the first ``k`` columns are used).
        Duplicate tokens: the last occurrence wins. Returns the number of rows written.
        """
        tokens = _as_long_1d(input_tokens, "input_tokens")
        cand = torch.as_tensor(logits_or_topk)
        if cand.dim() != 2 or cand.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"logits_or_topk must be [n, V] or [n, k] with n = {tokens.shape[0]}, got {tuple(cand.shape)}"
            )
        if tokens.numel() == 0:
            return 0
        top = self.top_successors(cand)
        tokens = tokens.to(self.device)
        top = top.to(device=self.device, dtype=self.dtype)
        if bool((tokens >= self.vocab_size).any()):
            raise ValueError("input token outside the vocabulary")
        valid = tokens >= 0
        if not bool(valid.all()):
            tokens, top = tokens[valid], top[valid]
            if tokens.numel() == 0:
                return 0
        # Last occurrence of each token wins: keep position j iff no later position holds the same token.
        uniq, inverse = torch.unique(tokens, return_inverse=True)
        pos = torch.arange(tokens.numel(), device=tokens.device)
        last = torch.full((uniq.numel(),), -1, dtype=torch.long, device=tokens.device)
        last = last.scatter_reduce(0, inverse, pos, reduce="amax", include_self=True)
        self.table[uniq] = top[last]
        self.seen[uniq] = True
        return int(uniq.numel())


# --------------------------------------------------------------------------------------------------------------
# Per-request overlay (not in the paper: Token Recycling under concurrency)
# --------------------------------------------------------------------------------------------------------------


class RequestSuccessors:
    """One request's own successor rows, read before the shared ``AdjacencyMatrix`` (not in the paper).

    Why: the paper decodes one query at a time, so the matrix holds what the current stream taught it. In a server
    every concurrent stream overwrites the same rows (common tokens such as ``" the"`` or ``"\\n"`` most of all),
    and each request drafts from the successors another request just wrote. The overlay keeps the rows the
    request's *own* verified positions wrote (same update rule as the matrix: whole row overwritten, last
    occurrence in a step wins); drafting reads a token's row here when present, else from the shared matrix, which
    is still updated from every stream (the paper's "hot start" across queries). At batch 1 the two agree row for
    row, so the overlay changes nothing there.

    Storage: ``rows`` (``[capacity, k]``, the matrix's dtype, grown by doubling up to ``max_rows``) and a dict
    ``token -> slot``. At most ``max_rows`` tokens are kept; a new token past that evicts the least recently
    written one (dict order: a row written again moves to the end). Memory: ``nbytes`` (rows) + ``index_bytes``.
    """

    def __init__(self, k: int, dtype: torch.dtype = torch.int32, max_rows: int = 4096) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.k = int(k)
        self.max_rows = int(max_rows)
        self.rows = torch.empty((0, self.k), dtype=dtype)
        self._slot: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, token: int) -> bool:
        return int(token) in self._slot

    @property
    def nbytes(self) -> int:
        """Bytes of the allocated row storage (``capacity * k * itemsize``)."""
        return self.rows.numel() * self.rows.element_size()

    @property
    def index_bytes(self) -> int:
        """Bytes of the ``token -> slot`` dict's hash table (CPython ``sys.getsizeof``; int objects excluded)."""
        return sys.getsizeof(self._slot)

    def successors(self, token: int) -> torch.Tensor | None:
        """This request's row for ``token`` (rank 0 first), or None when its stream never wrote one."""
        slot = self._slot.get(int(token))
        return None if slot is None else self.rows[slot]

    def slots(self, tokens: Sequence[int]) -> list[int]:
        """Slot of each token in ``rows``, -1 where absent."""
        get = self._slot.get
        return [get(t, -1) for t in tokens]

    def update(self, tokens: Sequence[int], top: torch.Tensor) -> int:
        """Row of ``tokens[j]`` <- ``top[j]`` (``[n, k]`` ranked ids); negative tokens skipped; last occurrence wins.

        Returns the number of rows written."""
        last: dict[int, int] = {}
        for j, t in enumerate(tokens):
            if t >= 0:
                last[int(t)] = j
        if not last:
            return 0
        for t, _ in sorted(last.items(), key=lambda item: item[1]):  # written in order of last occurrence
            slot = self._slot.pop(t, None)  # re-inserted below: dict order = least recently written first
            if slot is None:
                if len(self._slot) >= self.max_rows:
                    slot = self._slot.pop(next(iter(self._slot)))
                else:
                    slot = len(self._slot)  # slots 0..len-1 are in use (nothing is removed before full)
            self._slot[t] = slot
        # Only this step's tokens that survived (more distinct tokens than max_rows evict each other): one slot each.
        kept = [(self._slot[t], j) for t, j in last.items() if t in self._slot]
        slots, src = [s for s, _ in kept], [j for _, j in kept]
        need = max(slots) + 1
        if need > self.rows.shape[0]:
            capacity = min(self.max_rows, max(16, 2 * self.rows.shape[0], need))
            grown = torch.empty((capacity, self.k), dtype=self.rows.dtype)
            grown[: self.rows.shape[0]] = self.rows
            self.rows = grown
        self.rows[torch.tensor(slots)] = top[torch.tensor(src)][:, : self.k].to(device="cpu", dtype=self.rows.dtype)
        return len(slots)


def successor_rows(matrix: AdjacencyMatrix, tokens: torch.Tensor, overlay: RequestSuccessors | None = None
                   ) -> torch.Tensor:
    """``[n, k]`` rows of ``tokens`` (``int64 [n]``): the overlay's row where it has one, else the matrix's."""
    rows = matrix.table[tokens]
    if overlay is not None and len(overlay):
        slots = torch.tensor(overlay.slots(tokens.tolist()), dtype=torch.long)
        hit = slots >= 0
        if bool(hit.any()):
            rows[hit.to(rows.device)] = overlay.rows[slots[hit]].to(device=rows.device, dtype=rows.dtype)
    return rows


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


def best_chains(matrix: AdjacencyMatrix, roots, max_len: int,
                overlays: Sequence[RequestSuccessors | None] | None = None) -> torch.Tensor:
    """Rank-0 chains for a batch of roots: ``out[b, i+1] = M[out[b, i], 0]`` with ``out[b, -1] := roots[b]``.

    ``overlays[b]`` (optional, one per root, None allowed): request ``b``'s own rows, read before ``M``.
    Returns ``int64 [B, max_len]`` on the matrix's device (no host sync inside the loop without overlays).
    """
    r = _as_long_1d(roots, "roots").to(matrix.device)
    out = torch.empty((r.numel(), max(int(max_len), 0)), dtype=torch.long, device=matrix.device)
    col0 = matrix.table[:, 0]
    own = [] if overlays is None else [(b, o) for b, o in enumerate(overlays) if o is not None and len(o)]
    if overlays is not None and len(overlays) != r.numel():
        raise ValueError(f"overlays must have one entry per root ({r.numel()}), got {len(overlays)}")
    cur = r
    for i in range(out.shape[1]):
        nxt = col0[cur].long()
        if own:
            feeders = cur.tolist()
            for b, overlay in own:
                row = overlay.successors(feeders[b])
                if row is not None:
                    nxt[b] = int(row[0])
        cur = nxt
        out[:, i] = cur
    return out


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
