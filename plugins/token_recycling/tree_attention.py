"""Tree verification inside a paged-KV engine: the pure pieces (torch only, no vLLM import).

The paper (Sec. 3) verifies the whole draft tree in one forward pass: the root (the last committed token) and the
draft nodes are fed as one "merged sequence"; node ``i`` gets the rotary position ``context + depth(i)`` and attends
to the whole committed context plus its own ancestors and itself:

    attn_i = softmax( q_i [K_ctx ; K_tree]^T * scale  +  bias_i ) [V_ctx ; V_tree]
    bias_i[j] = 0 for every context key j, and for tree key j iff j == i or j is an ancestor of i; -inf otherwise

An engine stores the merged sequence's keys and values at consecutive cache slots (node ``i`` at slot
``context + i``), so after verification the accepted path ``0 = p_0 < p_1 < ... < p_a`` must be moved to slots
``context + 0 .. context + a``: ``relocation`` gives the rows to copy. Paths are strictly increasing in BFS order
(a child comes after its parent), so ``p_j >= j`` and a copy never overwrites a row that a later copy reads.

``paged_context`` reads the committed context back from vLLM's CPU attention cache (the ``vec`` / ``vec16``
layouts of vLLM 0.32: per block and KV head, ``2 * block_size * head_size`` values, the key block stored
transposed ``[head_size, block_size]``, the value block as ``[block_size, head_size]``). The engine checks this
layout against vLLM's own cache writer at start-up (``check_cpu_cache_layout`` in the tree patch), so a changed
layout fails loudly instead of attending to garbage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from declab.plugins.token_recycling.core import tree_attention_mask

__all__ = ["paged_context", "tree_attention", "tree_depths", "relocation"]


def tree_depths(parents: Sequence[int]) -> list[int]:
    """Depth of every node (root 0) of a tree in topological order."""
    depths: list[int] = []
    for i, p in enumerate(parents):
        p = int(p)
        if p >= i:
            raise ValueError(f"node {i}: parent {p} must be -1 or an earlier node")
        depths.append(0 if p < 0 else depths[p] + 1)
    return depths


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
