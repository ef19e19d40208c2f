"""RSD's draft trees (pure torch): Gumbel-top-k per node (RSD-C) and stochastic beam search (RSD-S).

Jeon, Gagrani, Goel, Park, Lee, Lott, "Recursive Speculative Decoding: Accelerating LLM Inference via Sampling
Without Replacement" (arXiv 2402.14160). The siblings of every node are drawn *without replacement* from the draft
distribution q of their parent, so no two siblings repeat a token and recursive rejection sampling can test them one
after another:

* ``GumbelTopKTree`` (RSD with constant branching, RSD-C): node at depth d gets ``branching[d]`` children, the
  top of ``log q + Gumbel`` (Gumbel-top-k = sampling without replacement, in draw order); at temperature 0 the
  ``branching[d]`` most likely tokens.
* ``StochasticBeamTree`` (RSD-S): a beam of ``width`` sequences per level. Every candidate child gets the
  perturbed log-probability of its sequence, conditioned on its parent's (Kool, van Hoof, Welling 2019, Sec. 3.1:
  ``G_child = -log(exp(-G_parent) - exp(-Z) + exp(-G~_child))``, ``Z`` the largest ``G~`` among the parent's
  children), and the ``width`` largest over the level survive: sequences sampled without replacement, unlikely ones
  truncated early. At temperature 0 it is beam search on the draft's log-probabilities. A node's surviving children
  are a prefix of its own Gumbel-top-k order, so each node's children are still a without-replacement draw.

``reference_gumbel_tree`` is the naive version the tests compare ``GumbelTopKTree`` with: node by node,
depth-first recursion over an explicit distribution function, no budget bookkeeping shared with the grower.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from declab.integrations.sdk.tree_drafting import TreeGrower, gumbel_top_k

__all__ = ["GumbelTopKTree", "StochasticBeamTree", "parse_branching", "reference_gumbel_tree", "log1mexp"]


def parse_branching(text: str) -> tuple[int, ...]:
    """``"3,2,1"`` -> (3, 2, 1): children per node at depth 0, 1, 2 (the tree's depth is the list's length)."""
    try:
        out = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"rsd.branching must be comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1 or len(out) > 32:
        raise ValueError(f"rsd.branching needs 1 to 32 counts, each >= 1, got {text!r}")
    return out


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, numerically stable (split at -log 2)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class GumbelTopKTree(TreeGrower):
    """RSD-C: ``branching[d]`` children per node at depth d, drawn without replacement; BFS order, cut at the
    budget (a BFS prefix of the full tree)."""

    children_drawn = "without_replacement"
    rule = "recursive"

    def __init__(self, root: int, budget: int, branching: Sequence[int], temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(root, budget, temperature, generator)
        self.branching = tuple(branching)

    def grow(self, logits):
        expand = []
        for node in sorted(logits):  # BFS order within the round
            d = self.depths[node]
            if d >= len(self.branching) or self.room < 1:
                continue
            dist = self.distribution(logits[node])
            for token in gumbel_top_k(self.dists[dist], min(self.branching[d], self.room), self.generator):
                child = self.add(node, token, dist)
                if d + 1 < len(self.branching):
                    expand.append(child)
        return expand if self.room > 0 else []


class StochasticBeamTree(TreeGrower):
    """RSD-S: a beam of ``width`` sequences per level for ``depth`` levels (at most ``width * depth`` nodes)."""

    children_drawn = "without_replacement"
    rule = "recursive"

    def __init__(self, root: int, budget: int, width: int, depth: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(root, budget, temperature, generator)
        self.width, self.depth = width, depth
        self.logp = {0: 0.0}  # node -> log q of its sequence (at the draw temperature)
        self.score = {0: 0.0}  # node -> perturbed log-probability G (= logp at temperature 0)

    def _candidates(self, node: int, dist: int, k: int) -> list[tuple[float, float, int]]:
        """(G, logp, token) of the ``k`` best children of ``node`` by G, in draw order."""
        logq = self.dists[dist].clamp_min(1e-30).log()
        phi = self.logp[node] + logq
        if self.generator is None:
            top = torch.topk(phi, k)
            return [(float(g), float(g), int(t)) for g, t in zip(top.values, top.indices)]
        u = torch.rand(phi.shape, generator=self.generator).clamp_(1e-20, 1.0)
        perturbed = phi - torch.log(-torch.log(u))  # G~: Gumbel(phi)
        z = perturbed.max()
        parent = torch.tensor(self.score[node])
        # G = -log(exp(-T) - exp(-Z) + exp(-G~)), stably: v = T - G~ + log1mexp(G~ - Z)
        v = parent - perturbed + log1mexp((perturbed - z).clamp_max(0.0))
        g = parent - torch.relu(v) - torch.log1p(torch.exp(-v.abs()))
        top = torch.topk(g, k)
        return [(float(s), float(phi[t]), int(t)) for s, t in zip(top.values, top.indices)]

    def grow(self, logits):
        d = self.depths[next(iter(logits))]
        k = min(self.width, self.room)
        if d >= self.depth or k < 1:
            return []
        pool = []  # (G, parent order, rank in parent's draw order, parent, logp, token, dist)
        for order, node in enumerate(sorted(logits)):
            dist = self.distribution(logits[node])
            for rank, (g, lp, t) in enumerate(self._candidates(node, dist, k)):
                pool.append((g, order, rank, node, lp, t, dist))
        survivors = sorted(pool, key=lambda c: -c[0])[:k]
        beam = []
        for g, _, _, node, lp, t, dist in sorted(survivors, key=lambda c: (c[1], c[2])):  # siblings in draw order
            child = self.add(node, t, dist)
            self.logp[child], self.score[child] = lp, g
            beam.append(child)
        return beam if d + 1 < self.depth and self.room > 0 else []


def reference_gumbel_tree(root: int, next_probs: Callable[[tuple[int, ...]], torch.Tensor],
                          branching: Sequence[int], budget: int) -> tuple[list[int], list[int]]:
    """Naive RSD-C at temperature 0 (the test oracle): full tree by recursion over sequences, each node's children
    its ``branching[depth]`` most likely tokens under ``next_probs(sequence)``, then BFS order, cut at ``budget``.
    Returns (tokens, parents), root first."""
    nodes = [(root, -1, (root,), 0)]  # token, parent, sequence, depth
    frontier = [0]
    while frontier:
        nxt = []
        for i in frontier:
            _, _, seq, d = nodes[i]
            if d >= len(branching):
                continue
            probs = next_probs(seq)
            for t in sorted(range(len(probs)), key=lambda v: (-float(probs[v]), v))[: branching[d]]:
                nodes.append((t, i, seq + (t,), d + 1))
                nxt.append(len(nodes) - 1)
        frontier = nxt
    nodes = nodes[: budget + 1]
    return [n[0] for n in nodes], [n[1] for n in nodes]
