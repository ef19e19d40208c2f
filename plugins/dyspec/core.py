"""DySpec's dynamic draft tree (pure torch): grown greedily by cumulative draft probability under a node budget.

Xiong et al., "DySpec: Faster Speculative Decoding with Dynamic Token Tree
Structure" (arXiv 2410.11744). The acceptance of a draft node correlates with its draft probability, so the
expected number of accepted tokens of a tree is about the sum, over its nodes, of the product of the draft
probabilities along the node's path; the greedy tree keeps adding the candidate with the largest such value (a
max-heap over the children of the nodes already in the tree) until the budget is spent. Since a child's value
never exceeds its parent's, the exact greedy tree is the ``budget`` most probable sequences of the draft.

One draft forward per added node would be one per *node*; like the paper's batched implementation, ``DynamicTree``
grows in rounds: each round pops up to ``per_round`` candidates off the heap (all expanded together by one batched
draft forward), so a node's children compete from the next round on. Children of a node enter the heap in their
draw order (at temperature 0: by probability; at temperature > 0: Gumbel-top-k, i.e. without replacement), the next
sibling only once the previous one is taken, so a node's children are always a prefix of one without-replacement
draw (what recursive rejection sampling needs); their value is the product of the draft probabilities q
(at the draw temperature) along the path.

``reference_dynamic_tree`` is the naive exact greedy (one expansion per node) the tests compare with at
``per_round=1``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import torch

from declab.integrations.sdk.tree_drafting import TreeGrower, gumbel_top_k

__all__ = ["DynamicTree", "reference_dynamic_tree"]


class DynamicTree(TreeGrower):
    """Greedy growth by path probability: ``per_round`` nodes per round, depth at most ``max_depth``."""

    children_drawn = "without_replacement"
    rule = "recursive"

    def __init__(self, root: int, budget: int, per_round: int, max_depth: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(root, budget, temperature, generator)
        self.per_round, self.max_depth = per_round, max_depth
        self.value = {0: 1.0}  # node -> product of draft probabilities along its path
        self.order: dict[int, tuple[int, list[int]]] = {}  # node -> (its distribution, children in draw order)
        self.taken: dict[int, int] = {}  # node -> how many of its children are in the tree
        self.heap: list[tuple[float, int, int]] = []  # (-value, tie-break counter, parent)
        self._counter = 0

    def _push_next_child(self, node: int) -> None:
        dist, order = self.order[node]
        i = self.taken[node]
        if i < len(order):
            self._counter += 1
            heapq.heappush(self.heap, (-self.value[node] * float(self.dists[dist][order[i]]), self._counter, node))

    def grow(self, logits):
        for node in sorted(logits):
            if self.depths[node] >= self.max_depth:
                continue
            dist = self.distribution(logits[node])
            self.order[node] = (dist, gumbel_top_k(self.dists[dist], self.budget, self.generator))
            self.taken[node] = 0
            self._push_next_child(node)
        expand = []  # nodes added this round that may get children (a leaf at max_depth needs no forward)
        while self.heap and len(expand) < self.per_round and self.room > 0:
            neg_value, _, parent = heapq.heappop(self.heap)
            dist, order = self.order[parent]
            child = self.add(parent, order[self.taken[parent]], dist)
            self.value[child] = -neg_value
            self.taken[parent] += 1
            self._push_next_child(parent)
            if self.depths[child] < self.max_depth:
                expand.append(child)
        return expand if self.room > 0 else []


def reference_dynamic_tree(root: int, next_probs: Callable[[tuple[int, ...]], torch.Tensor], budget: int,
                           max_depth: int) -> list[tuple[tuple[int, ...], float]]:
    """Naive exact greedy at temperature 0 (the test oracle): repeatedly add the most probable sequence not yet in
    the tree whose prefix is, scanning every child of every tree node. Returns (sequence, value) in order added."""
    tree: dict[tuple[int, ...], float] = {(root,): 1.0}
    added = []
    while len(added) < budget:
        best = None
        for seq, value in tree.items():
            if len(seq) - 1 >= max_depth:
                continue
            probs = next_probs(seq)
            for t in range(len(probs)):
                cand = seq + (t,)
                if cand in tree:
                    continue
                v = value * float(probs[t])
                if best is None or v > best[1]:
                    best = (cand, v)
        if best is None:
            break
        tree[best[0]] = best[1]
        added.append(best)
    return added
