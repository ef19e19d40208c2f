"""Draft trees and their verification in a paged-KV engine: the pure pieces (torch only, no vLLM import).

A proposer may draft a *tree* per request instead of a chain (``DraftTree``): the root (the last committed token)
and the draft nodes in BFS order, with ``parents[i]`` the index of node ``i``'s parent (``parents[0] == -1``). The
tree-verification seam (``declab.integrations.sdk.tree_verification`` and the patches in
``declab/patches/tree_verification.py``) verifies such a tree in one forward pass, as tree-speculation papers do:
the root and the draft nodes are fed as one "merged sequence"; node ``i`` gets the rotary position
``context + depth(i)`` and attends to the whole committed context plus its own ancestors and itself:

    attn_i = softmax( q_i [K_ctx ; K_tree]^T * scale  +  bias_i ) [V_ctx ; V_tree]
    bias_i[j] = 0 for every context key j, and for tree key j iff j == i or j is an ancestor of i; -inf otherwise

(``tree_attention_mask`` is the tree block of that mask, ``tree_attention`` the whole formula.)

Greedy verification: with ``a_j`` the target's argmax at node ``j``, node ``i`` is accepted iff its parent is
accepted and ``token(i) == a_parent(i)`` (the root is always accepted); the longest accepted root-to-node path is
committed, followed by the bonus token ``a_last`` (``longest_accepted_path``, ``committed_tokens``). This is
lossless: the committed tokens are exactly what plain greedy decoding would write. A chain is the tree where every
node has one child (``verify_chain``, what vLLM's rejection sampler does at temperature 0).

An engine stores the merged sequence's keys and values at consecutive cache slots (node ``i`` at slot
``context + i``), so after verification the accepted path ``0 = p_0 < p_1 < ... < p_a`` must be moved to slots
``context + 0 .. context + a``: ``relocation`` gives the rows to copy. Paths are strictly increasing in BFS order
(a child comes after its parent), so ``p_j >= j`` and a copy never overwrites a row that a later copy reads.

``paged_context`` reads the committed context back from vLLM's CPU attention cache (the ``vec`` / ``vec16``
layouts of vLLM 0.32: per block and KV head, ``2 * block_size * head_size`` values, the key block stored
transposed ``[head_size, block_size]``, the value block as ``[block_size, head_size]``); ``cpu_key_value_views``
is vLLM's own split of that allocation into its key and value caches. The seam checks this layout against vLLM's
cache writer at start-up (``tree_verification.check_cpu_cache_layout``), so a changed layout fails loudly instead
of attending to garbage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch

__all__ = [
    "DraftTree",
    "tree_depths",
    "tree_attention_mask",
    "longest_accepted_path",
    "committed_tokens",
    "verify_chain",
    "paged_context",
    "cpu_key_value_views",
    "tree_attention",
    "relocation",
]


@dataclass(frozen=True)
class DraftTree:
    """One request's draft tree: ``tokens`` in BFS order, root first (the last committed token), and ``parents``
    (``parents[0] == -1``, every other parent an earlier node). vLLM receives ``tokens[1:]`` as the draft list;
    the tree-verification seam reads the tree back through the proposer (``DeclabProposer.tree_draft``).

    How the children were drawn decides how a sampling verifier may accept them (the target distribution is kept
    only if the rule matches the drafting):

    * ``children_drawn="deterministic"`` (default; ``draft_probs`` None): the drafts are fixed choices (Token
      Recycling's successors, n-grams): a node's distinct children are point masses.
    * ``"with_replacement"``: each child of a node was drawn independently from ``draft_probs[child]`` (SpecTr's
      k i.i.d. drafts, RSD with replacement).
    * ``"without_replacement"``: the children of a node were drawn without replacement from their shared
      distribution (Gumbel-top-k, stochastic beam search: RSD).

    ``draft_probs``: ``[len(tokens), V]`` float; row ``i`` (``i >= 1``) is the draft distribution node ``i``'s token
    was drawn from (the same row for siblings drawn from one distribution); row 0 is unused. ``rule``: the
    verification rule the proposer asks for among a node's children: ``"recursive"`` (recursive rejection sampling)
    or ``"k_sequential"`` (SpecTr's k-sequential selection, drafts with replacement)."""

    tokens: Union[Sequence[int], torch.Tensor]
    parents: tuple[int, ...]
    draft_probs: torch.Tensor | None = None
    children_drawn: str = "deterministic"
    rule: str = "recursive"

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents) or not self.parents or self.parents[0] != -1:
            raise ValueError(f"a draft tree needs one parent per token, root first (parent -1); got "
                             f"{len(self.tokens)} tokens and parents {tuple(self.parents)[:4]}...")
        if self.children_drawn not in ("deterministic", "with_replacement", "without_replacement"):
            raise ValueError(f"children_drawn must be 'deterministic', 'with_replacement' or "
                             f"'without_replacement', got {self.children_drawn!r}")
        if self.rule not in ("recursive", "k_sequential"):
            raise ValueError(f"rule must be 'recursive' or 'k_sequential', got {self.rule!r}")
        if (self.draft_probs is None) != (self.children_drawn == "deterministic"):
            raise ValueError("draft_probs are required exactly when the children were drawn at random "
                             f"(children_drawn={self.children_drawn!r})")
        if self.draft_probs is not None and self.draft_probs.shape[0] != len(self.tokens):
            raise ValueError(f"draft_probs needs one row per node ({len(self.tokens)}), got "
                             f"{tuple(self.draft_probs.shape)}")

    def draft_tokens(self) -> list[int]:
        """The draft nodes without the root, as vLLM's draft list."""
        rest = self.tokens[1:]
        return rest.tolist() if isinstance(rest, torch.Tensor) else [int(t) for t in rest]

    def pruned(self, max_depth: int) -> "DraftTree":
        """This tree without its nodes deeper than ``max_depth`` (root depth 0), in the same order (a BFS tree loses a
        tail); ``self`` when no node is deeper. What a verifier decides at the kept nodes does not depend on the cut
        ones: a kept node without its children commits the target's own token there, as a leaf does."""
        depths = tree_depths(self.parents)
        if max(depths) <= max_depth:
            return self
        keep = [i for i, d in enumerate(depths) if d <= max_depth]  # ancestors come first: parents stay kept
        new_index = {old: new for new, old in enumerate(keep)}
        tokens = [int(self.tokens[i]) for i in keep]
        parents = tuple(-1 if self.parents[i] < 0 else new_index[self.parents[i]] for i in keep)
        probs = None if self.draft_probs is None else self.draft_probs[keep]
        return DraftTree(tokens, parents, probs, self.children_drawn, self.rule)


def _parent_list(parents) -> list[int]:
    p = [int(x) for x in (parents.tolist() if isinstance(parents, torch.Tensor) else parents)]
    for i, q in enumerate(p):
        if q >= i or q < -1:
            raise ValueError(f"node {i}: parent {q} must be -1 or an earlier node (BFS/topological order)")
    return p


def tree_depths(parents: Sequence[int]) -> list[int]:
    """Depth of every node (root 0) of a tree in topological order."""
    depths: list[int] = []
    for i, p in enumerate(parents):
        p = int(p)
        if p >= i:
            raise ValueError(f"node {i}: parent {p} must be -1 or an earlier node")
        depths.append(0 if p < 0 else depths[p] + 1)
    return depths


def tree_attention_mask(parents) -> torch.Tensor:
    """Ancestor mask of a tree in topological order: ``mask[i, j]`` iff ``j == i`` or ``j`` is an ancestor of ``i``.

    ``parents``: ``[n]``, ``-1`` for a root, otherwise an index ``< i``. This is the draft-to-draft block of tree
    attention (every node additionally sees the whole committed context). Returns ``bool [n, n]`` (lower
    triangular, reflexive, on ``parents``' device when it is a tensor).
    """
    p = _parent_list(parents)
    n = len(p)
    device = parents.device if isinstance(parents, torch.Tensor) else None
    mask = torch.zeros((n, n), dtype=torch.bool)
    for i, q in enumerate(p):
        if q >= 0:
            mask[i] = mask[q]
        mask[i, i] = True
    return mask.to(device) if device is not None else mask


def longest_accepted_path(tree_tokens, parents, target_argmax_per_node) -> list[int]:
    """Greedy tree verification: node indices of the longest accepted root-to-node path, root first.

    A root (parent -1) is accepted (it is the committed token); node ``i`` is accepted iff its parent ``p`` is and
    ``tree_tokens[i] == target_argmax_per_node[p]`` (the target's greedy choice after the parent). Among accepted
    nodes the deepest wins; ties go to the lowest index (first in BFS order). Tied paths carry identical tokens
    (each is the greedy continuation), so the tie rule only chooses which KV entries to keep.
    ``len(path) - 1`` draft tokens are accepted; the bonus token is ``target_argmax_per_node[path[-1]]``.
    """
    p = _parent_list(parents)
    tok = [int(x) for x in torch.as_tensor(tree_tokens).tolist()]
    tgt = [int(x) for x in torch.as_tensor(target_argmax_per_node).tolist()]
    n = len(p)
    if len(tok) != n or len(tgt) != n:
        raise ValueError("tree_tokens, parents and target_argmax_per_node must have the same length")
    if n == 0:
        return []
    accepted = [False] * n
    depth = [0] * n
    best = -1
    for i, q in enumerate(p):
        if q < 0:
            accepted[i], depth[i] = True, 0
        else:
            accepted[i] = accepted[q] and tok[i] == tgt[q]
            depth[i] = depth[q] + 1
        if accepted[i] and (best < 0 or depth[i] > depth[best]):
            best = i
    path = [best]
    while p[path[-1]] >= 0:
        path.append(p[path[-1]])
    path.reverse()
    return path


def committed_tokens(tree_tokens, path: Sequence[int], target_argmax_per_node) -> list[int]:
    """Tokens a verification step commits: the accepted draft tokens along ``path`` (root excluded) + the bonus."""
    tok = torch.as_tensor(tree_tokens).tolist()
    tgt = torch.as_tensor(target_argmax_per_node).tolist()
    return [int(tok[i]) for i in path[1:]] + [int(tgt[path[-1]])]


def verify_chain(draft: Sequence[int], target_argmax: Sequence[int]) -> tuple[int, int]:
    """Greedy verification of one chain (what vLLM 0.32's rejection sampler does at temperature 0).

    ``target_argmax[j]`` is the target's argmax after the root (``j = 0``) and after ``draft[j-1]``;
    ``len(target_argmax) == len(draft) + 1``. Returns ``(num_accepted, bonus_token)``: the longest prefix with
    ``draft[j] == target_argmax[j]`` and the target's token after it. Equals ``longest_accepted_path`` on the
    chain tree.
    """
    d = [int(x) for x in draft]
    a = [int(x) for x in target_argmax]
    if len(a) != len(d) + 1:
        raise ValueError("target_argmax must have one more entry than draft")
    n = 0
    while n < len(d) and d[n] == a[n]:
        n += 1
    return n, a[n]


def cpu_key_value_views(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's CPU split of ``[blocks, kv_heads, block_size, 2 * head_size]`` into its key and value caches."""
    blocks, heads, block_size, _ = kv_cache.shape
    return kv_cache.view(blocks, heads, 2 * block_size, -1).chunk(2, dim=2)


def paged_context(kv_cache: torch.Tensor, block_ids: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of the first ``length`` positions of one sequence from a CPU ``vec`` layout cache.

    ``kv_cache``: ``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` (vLLM's CPU allocation);
    ``block_ids``: the sequence's block table row. Returns ``(keys, values)``, each ``[length, num_kv_heads,
    head_size]``.
    """
    num_blocks, heads, block_size, two_d = kv_cache.shape
    d = two_d // 2
    if length == 0:
        empty = kv_cache.new_empty((0, heads, d))
        return empty, empty
    used = (length + block_size - 1) // block_size
    blocks = kv_cache[block_ids[:used].long()].reshape(used, heads, 2, block_size * d)
    keys = blocks[:, :, 0].reshape(used, heads, d, block_size).permute(0, 3, 1, 2)
    values = blocks[:, :, 1].reshape(used, heads, block_size, d).permute(0, 2, 1, 3)
    return (keys.reshape(used * block_size, heads, d)[:length],
            values.reshape(used * block_size, heads, d)[:length])


def tree_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, parents: Sequence[int],
                   scale: float) -> torch.Tensor:
    """Attention of the merged sequence's rows under the tree mask (formula in the module docstring).

    ``query``: ``[n, num_heads, head_size]`` (the root and its ``n - 1`` draft nodes); ``keys`` / ``values``:
    ``[context + n, num_kv_heads, head_size]`` (the committed context, then the same ``n`` rows). Grouped-query
    attention is handled by repeating KV heads. Computed in float32; returns ``[n, num_heads, head_size]`` in
    ``query``'s dtype.
    """
    n, heads, _ = query.shape
    context = keys.shape[0] - n
    if context < 0 or len(parents) != n:
        raise ValueError(f"{n} query rows need {n} parents and at least {n} keys (got {len(parents)}, {keys.shape[0]})")
    group = heads // keys.shape[1]
    k = keys.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [H, C + n, D]
    v = values.float().repeat_interleave(group, dim=1).transpose(0, 1)
    q = query.float().transpose(0, 1)  # [H, n, D]
    allowed = torch.ones((n, context + n), dtype=torch.bool, device=query.device)
    allowed[:, context:] = tree_attention_mask(list(parents)).to(query.device)
    scores = torch.matmul(q, k.transpose(1, 2)) * scale
    scores.masked_fill_(~allowed, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [H, n, D]
    return out.transpose(0, 1).to(query.dtype)


def relocation(path: Sequence[int]) -> tuple[list[int], list[int]]:
    """Rows of the merged sequence to copy so the accepted ``path`` (root first) becomes contiguous.

    Returns ``(src, dst)``: row ``src[j]`` goes to row ``dst[j]``; rows already in place are left out. Copies may
    run in the given order (``src[j] >= dst[j]`` and both increase).
    """
    src, dst = [], []
    for depth, node in enumerate(path):
        if node < depth or (depth and node <= path[depth - 1]):
            raise ValueError(f"path {list(path)} is not increasing from the root")
        if node != depth:
            src.append(int(node))
            dst.append(depth)
    return src, dst
