"""SpecTr's drafts as a tree (pure torch): k i.i.d. draft chains from one root.

Sun, Suresh, Ro, Beirami, Jain, Yu, "SpecTr: Fast Speculative Decoding via Optimal Transport" (arXiv 2310.15141).
The draft model samples ``k`` sequences of ``length`` tokens independently (with replacement) from the same
context; the target checks them together, and the k-sequential draft selection accepts, position by position, one
of the drafts still alive with a probability that keeps the target's distribution. As a ``DraftTree``: the root's
``k`` children are the first tokens of the k drafts (drawn i.i.d. from q(. | context): ``children_drawn =
"with_replacement"``, so two drafts may start with the same token and stay separate nodes), and each of them
carries its own chain (one child per node, drawn from q(. | its draft's prefix)); ``rule = "k_sequential"``.

A request verified greedily checks only whether the target's argmax is among a node's children, so two drafts that
agree up to some position need to be verified once: with ``merge=True`` (what the proposer sets for greedy
requests, whose drafts are drawn at ``greedy_draft_temperature``) the chains are drawn exactly as without it, but a
chain whose next token repeats one a previous chain put under the same node follows that node instead of adding its
own: the k chains become a trie, and the budget they no longer spend on repeats reaches deeper. At temperature 0 the
k draws coincide (all are the argmax), so the grower drafts the single greedy chain.
``reference_chains`` is the naive version for the tests: the k chains drawn one after another with their own
generator calls in the same order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from declab.integrations.sdk.tree_drafting import TreeGrower

__all__ = ["KSequentialDraftTree", "reference_chains"]


class KSequentialDraftTree(TreeGrower):
    """``k`` chains of at most ``length`` tokens, level by level (the chains shorten evenly at the budget); with
    ``merge``, chains that agree share their nodes (a trie)."""

    children_drawn = "with_replacement"
    rule = "k_sequential"

    def __init__(self, root: int, budget: int, k: int, length: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None, merge: bool = False) -> None:
        super().__init__(root, budget, temperature, generator)
        self.k = k if self.generator is not None else 1
        self.length = length
        self.merge = merge
        self.chains: list[int] = []  # per live chain: the node it ends at (chains cut at the budget are dropped)
        self.node_dist: dict[int, int] = {}  # node -> index of its children's distribution
        self.child_of: dict[tuple[int, int], int] = {}  # (node, token) -> its child with that token (merge)

    def _draw(self, dist: int, n: int) -> list[int]:
        probs = self.dists[dist]
        if self.generator is None:
            return [int(probs.argmax())] * n
        return torch.multinomial(probs, n, replacement=True, generator=self.generator).tolist()

    def _extend(self, node: int, token: int, dist: int) -> int | None:
        """The node chain ``node -> token`` continues at: a sibling with that token when merging, else a new node
        (None when the budget is spent)."""
        if self.merge and (node, token) in self.child_of:
            return self.child_of[node, token]
        if self.room < 1:
            return None
        child = self.child_of[node, token] = self.add(node, token, dist)
        return child

    def grow(self, logits):
        for node in sorted(logits):
            self.node_dist[node] = self.distribution(logits[node])
        if not self.chains:  # round 0: the k first tokens in one draw from q(. | context)
            firsts = self._draw(self.node_dist[0], self.k)
            ends = [self._extend(0, token, self.node_dist[0]) for token in firsts]
        else:  # each chain one token from q(. | its prefix), in chain order
            ends = [self._extend(node, self._draw(self.node_dist[node], 1)[0], self.node_dist[node])
                    for node in self.chains]
        self.chains = [n for n in ends if n is not None and self.depths[n] < self.length]
        return sorted(set(self.chains)) if self.room > 0 else []


def reference_chains(root: int, next_probs: Callable[[tuple[int, ...]], torch.Tensor], k: int, length: int,
                     generator: torch.Generator) -> list[list[int]]:
    """Naive SpecTr drafting (the test oracle): the k first tokens drawn together from q(.|root), then each chain
    extended one token per level in chain order, each from q(.|its own prefix) with one multinomial call."""
    firsts = torch.multinomial(next_probs((root,)), k, replacement=True, generator=generator).tolist()
    chains = [[t] for t in firsts]
    for _ in range(length - 1):
        for chain in chains:
            probs = next_probs((root, *chain))
            chain.append(int(torch.multinomial(probs, 1, replacement=True, generator=generator)))
    return chains
