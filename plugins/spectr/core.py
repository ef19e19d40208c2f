"""SpecTr's drafts as a tree (pure torch): k i.i.d. draft chains from one root.

Sun, Suresh, Ro, Beirami, Jain, Yu, "SpecTr: Fast Speculative Decoding via Optimal Transport" (arXiv 2310.15141).
The draft model samples ``k`` sequences of ``length`` tokens independently (with replacement) from the same
context; the target checks them together, and the k-sequential draft selection accepts, position by position, one
of the drafts still alive with a probability that keeps the target's distribution. As a ``DraftTree``: the root's
``k`` children are the first tokens of the k drafts (drawn i.i.d. from q(. | context): ``children_drawn =
"with_replacement"``, so two drafts may start with the same token and stay separate nodes), and each of them
carries its own chain (one child per node, drawn from q(. | its draft's prefix)); ``rule = "k_sequential"``.

At temperature 0 the k draws coincide (all are the argmax), so the grower drafts the single greedy chain.
``reference_chains`` is the naive version for the tests: the k chains drawn one after another with their own
generator calls in the same order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from declab.integrations.sdk.tree_drafting import TreeGrower

__all__ = ["KSequentialDraftTree", "reference_chains"]


class KSequentialDraftTree(TreeGrower):
    """``k`` chains of at most ``length`` tokens, level by level (the chains shorten evenly at the budget)."""

    children_drawn = "with_replacement"
    rule = "k_sequential"

    def __init__(self, root: int, budget: int, k: int, length: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(root, budget, temperature, generator)
        self.k = k if self.generator is not None else 1
        self.length = length

    def _draw(self, dist: int, n: int) -> list[int]:
        probs = self.dists[dist]
        if self.generator is None:
            return [int(probs.argmax())] * n
        return torch.multinomial(probs, n, replacement=True, generator=self.generator).tolist()

    def grow(self, logits):
        expand = []
        for node in sorted(logits):
            d = self.depths[node]
            if d >= self.length or self.room < 1:
                continue
            dist = self.distribution(logits[node])
            for token in self._draw(dist, min(self.k if node == 0 else 1, self.room)):
                child = self.add(node, token, dist)
                if d + 1 < self.length:
                    expand.append(child)
        return expand if self.room > 0 else []


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
