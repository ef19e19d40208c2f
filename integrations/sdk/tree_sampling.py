"""Tree and multi-draft verification at any temperature: the pure walk (torch only, no vLLM import).

A draft tree (``trees.DraftTree``) is verified from the root down. At each visited node ``u`` the target's
distribution ``p_u`` (the request's temperature / top-k / top-p / min-p already applied, exactly as the engine's
sampler would) decides, among ``u``'s children tried in BFS order, which one (if any) is accepted; the walk then
moves to that child. When no child is accepted (or ``u`` is a leaf) one token is drawn from what is left of ``p_u``
(the residual) and the walk ends. Every visited depth commits exactly one token: the accepted children, then the
final draw. How a node decides depends on how its children were drawn (``DraftTree.children_drawn``, ``rule``):

* ``deterministic`` (point masses; Token Recycling, n-grams): recursive rejection sampling with ``q = delta_c``
  accepts child ``c`` with probability ``p_res(c)`` and otherwise zeroes ``c`` in ``p_res`` and renormalises.
  That is the same law as *draw ``y ~ p_u``, accept the first child whose token is ``y``, else commit ``y``*
  (``PointMassRule``), which needs one draw per position and nothing else: a seeded request then draws its token
  at each position exactly as plain sampling does, whatever the drafts.
* ``with_replacement`` (children drawn i.i.d. from ``q``; SpecTr's drafts, RSD with replacement), ``rule
  "recursive"``: accept child ``x_i`` with ``min(1, p_res(x_i) / q(x_i))``, on rejection ``p_res <-
  norm(max(0, p_res - q))`` (``RecursiveRule(update_q=False)``; SpecInfer's multi-draft sampling).
* ``without_replacement`` (siblings drawn without replacement from one ``q``: Gumbel-top-k, stochastic beam
  search; RSD): as above, and ``q`` loses the rejected token and is renormalised (``RecursiveRule(update_q=True)``).
* ``with_replacement`` with ``rule "k_sequential"`` (SpecTr, Sun et al. 2023, Alg. "k-sequential"): with ``k``
  i.i.d. children, ``beta(rho) = sum_x min(q(x), p(x) / rho)``, accept ``x_i`` with ``min(1, p(x_i) / (rho q(x_i)))``;
  if all ``k`` are rejected draw from ``(p - min(q, p / rho) (1 - (1 - beta)^k) / beta) / (1 - beta)^k``. ``rho``
  is the smallest value in ``[1, k]`` for which that residual is a distribution (``(1 - (1 - beta)^k) / beta <=
  rho``, bisection), which maximises the acceptance ``1 - (1 - beta)^k`` (``KSequentialRule``).

Greedy is the special case: with ``p_u`` a point mass at the argmax every rule accepts exactly the child whose
token is the argmax, which is ``trees.longest_accepted_path`` (for distinct sibling tokens).

Randomness comes per committed position (``PositionDraws``: at most one ``sample`` and any number of ``accept``
draws), so an engine can tie a request's random stream to output positions rather than to steps or drafts.
``reference_verify_tree`` is a naive, list-based restatement (every rule as explicit recursive rejection sampling,
Python floats) the tests compare against; both are checked by exact enumeration to give the target distribution
at every depth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from declab.integrations.sdk.trees import DraftTree

__all__ = ["PositionDraws", "TorchDraws", "NodeRule", "PointMassRule", "RecursiveRule", "KSequentialRule",
           "rule_for", "verify_tree", "spectr_rho", "reference_verify_tree"]


class PositionDraws(Protocol):
    """The randomness of one committed position."""

    def accept(self, probability: float) -> bool:
        """True with ``probability`` (in (0, 1))."""

    def sample(self, logits: torch.Tensor) -> int:
        """A token drawn from ``softmax(logits)`` (``-inf`` = excluded); called at most once per position."""


class TorchDraws:
    """``PositionDraws`` from a ``torch.Generator`` (or the global generator): Gumbel-max by exponential race."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def accept(self, probability: float) -> bool:
        return float(torch.rand((), dtype=torch.float64, generator=self.generator)) < probability

    def sample(self, logits: torch.Tensor) -> int:
        probs = torch.softmax(logits.double(), dim=-1)
        race = torch.empty_like(probs).exponential_(generator=self.generator)
        return int(torch.argmax(probs / race))


def _normalised(x: torch.Tensor) -> torch.Tensor | None:
    total = float(x.sum())
    return x / total if total > 0 else None


def _accept(draws: PositionDraws, p_x: float, q_x: float) -> bool:
    """Accept with probability ``min(1, p_x / q_x)`` (``q_x == 0``: accept iff ``p_x > 0``)."""
    if p_x <= 0.0:
        return False
    if q_x <= p_x:
        return True  # probability 1: no draw needed
    return draws.accept(p_x / q_x)


class NodeRule:
    """How a node chooses among its children: ``choose`` returns ``(accepted child or None, committed token)``."""

    def choose(self, logits: torch.Tensor, children: list[int], tokens: list[int], q_rows: torch.Tensor | None,
               draws: PositionDraws) -> tuple[int | None, int]:
        raise NotImplementedError


class PointMassRule(NodeRule):
    """Deterministic children: draw ``y ~ p``, accept the first child whose token is ``y``, else commit ``y``."""

    def choose(self, logits, children, tokens, q_rows, draws):
        y = draws.sample(logits)
        return next((c for c in children if tokens[c] == y), None), y


class RecursiveRule(NodeRule):
    """Recursive rejection sampling over children drawn from ``q`` (``update_q``: drawn without replacement)."""

    def __init__(self, update_q: bool) -> None:
        self.update_q = update_q

    def choose(self, logits, children, tokens, q_rows, draws):
        p = torch.softmax(logits.double(), dim=-1)
        q = q_rows[children[0]].double().clone() if children else None
        for c in children:
            if not self.update_q:
                q = q_rows[c].double()
            x = tokens[c]
            if _accept(draws, float(p[x]), float(q[x])):
                return c, x
            p = _normalised(torch.clamp(p - q, min=0.0)) if float(q[x]) > 0 else p
            if p is None:  # p == q: rejection had probability 0
                raise ValueError("recursive rejection sampling: empty residual (rejected a draft with p == q)")
            if self.update_q:
                q[x] = 0.0
                q = _normalised(q)
                if q is None:
                    break  # no token left to have drawn: later siblings cannot exist under this q
        return None, draws.sample(torch.log(p))


def spectr_rho(p: torch.Tensor, q: torch.Tensor, k: int, iters: int = 60) -> tuple[float, float]:
    """SpecTr's ``rho`` for ``k`` i.i.d. drafts: the smallest ``rho`` in ``[1, k]`` with ``(1 - (1 - beta)^k) / beta
    <= rho`` (``beta(rho) = sum min(q, p / rho)``); returns ``(rho, beta(rho))``."""
    def beta(rho: float) -> float:
        return float(torch.minimum(q, p / rho).sum())

    def valid(rho: float) -> bool:
        b = beta(rho)
        return b <= 0.0 or (1.0 - (1.0 - b) ** k) / b <= rho * (1 + 1e-12)

    if k <= 1 or valid(1.0):
        return 1.0, beta(1.0)
    lo, hi = 1.0, float(k)  # invalid at lo, valid at hi ((1 - (1 - b)^k) / b <= k always)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if valid(mid) else (mid, hi)
    return hi, beta(hi)


class KSequentialRule(NodeRule):
    """SpecTr's k-sequential selection over ``k`` children drawn i.i.d. from one ``q``."""

    def choose(self, logits, children, tokens, q_rows, draws):
        p = torch.softmax(logits.double(), dim=-1)
        if not children:
            return None, draws.sample(logits)
        q = q_rows[children[0]].double()
        k = len(children)
        rho, beta = spectr_rho(p, q, k)
        for c in children:
            x = tokens[c]
            if _accept(draws, float(p[x]), rho * float(q[x])):
                return c, x
        if beta <= 0.0:
            return None, draws.sample(logits)
        none_accepted = (1.0 - beta) ** k
        residual = torch.clamp(p - torch.minimum(q, p / rho) * ((1.0 - none_accepted) / beta), min=0.0)
        return None, draws.sample(torch.log(_normalised(residual)))


def rule_for(tree: DraftTree) -> NodeRule:
    """The rule matching how ``tree``'s children were drawn; ``ValueError`` for a combination that has none."""
    if tree.rule == "k_sequential":
        if tree.children_drawn != "with_replacement":
            raise ValueError(f"rule 'k_sequential' needs children drawn with replacement, got {tree.children_drawn!r}")
        return KSequentialRule()
    if tree.children_drawn == "deterministic":
        return PointMassRule()
    return RecursiveRule(update_q=tree.children_drawn == "without_replacement")


def _children(parents: Sequence[int]) -> list[list[int]]:
    kids: list[list[int]] = [[] for _ in parents]
    for i, p in enumerate(parents):
        if i and p >= 0:
            kids[p].append(i)
    return kids


def verify_tree(tree: DraftTree, target_logits: Callable[[int], torch.Tensor],
                draws_at: Callable[[int], PositionDraws], rule: NodeRule | None = None) -> tuple[list[int], list[int]]:
    """Walk ``tree`` from the root: returns ``(path, tokens)`` as ``TreeVerifier.verify`` does (accepted node indices
    root first; the accepted drafts plus the token drawn after the last of them).

    ``target_logits(node)``: the target's processed logits ``[V]`` after that node (called only for visited nodes);
    ``draws_at(depth)``: the randomness of the position committed at that depth (called once per committed token);
    ``rule``: defaults to ``rule_for(tree)``."""
    rule = rule or rule_for(tree)
    tokens = [int(t) for t in (tree.tokens.tolist() if isinstance(tree.tokens, torch.Tensor) else tree.tokens)]
    kids = _children(tree.parents)
    path, out, node = [0], [], 0
    while True:
        child, token = rule.choose(target_logits(node), kids[node], tokens, tree.draft_probs, draws_at(len(out)))
        out.append(token)
        if child is None:
            return path, out
        path.append(child)
        node = child


# ---------------------------------------------------------------------------------------------------------------
# Naive reference: every rule as explicit recursive rejection sampling over Python lists of floats.


def _ref_rrs(p: list[float], children: list[int], tokens: list[int], q_of: Callable[[int, list[float]], list[float]],
             accept: Callable[[float], bool], update: Callable[[list[float], int], list[float]]):
    for c in children:
        q = q_of(c, p)
        x = tokens[c]
        ratio = 1.0 if q[x] <= p[x] else p[x] / q[x]
        if p[x] > 0 and (ratio >= 1.0 or accept(ratio)):
            return c, p
        if q[x] > 0:
            diff = [max(0.0, a - b) for a, b in zip(p, q)]
            p = [d / sum(diff) for d in diff]
        update(q, x)
    return None, p


def reference_verify_tree(tree: DraftTree, target_probs: Callable[[int], list[float]],
                          accept: Callable[[float], bool],
                          sample: Callable[[list[float]], int]) -> tuple[list[int], list[int]]:
    """Naive restatement of ``verify_tree`` (probabilities as lists, one ``accept`` per rejection test, ``sample``
    draws a token from a probability list). Deterministic children are point masses ``q = delta_c``."""
    tokens = [int(t) for t in (tree.tokens.tolist() if isinstance(tree.tokens, torch.Tensor) else tree.tokens)]
    probs = None if tree.draft_probs is None else tree.draft_probs.double().tolist()
    kids = _children(tree.parents)
    path, out, node = [0], [], 0
    while True:
        p = list(target_probs(node))
        children = kids[node]
        if tree.rule == "k_sequential" and children:
            q, k = probs[children[0]], len(children)
            rho = _ref_rho(p, q, k)
            beta = sum(min(a, b / rho) for a, b in zip(q, p))
            child = None
            for c in children:
                x = tokens[c]
                ratio = 1.0 if rho * q[x] <= p[x] else p[x] / (rho * q[x])
                if p[x] > 0 and (ratio >= 1.0 or accept(ratio)):
                    child = c
                    break
            if child is None and beta > 0:
                scale = (1 - (1 - beta) ** k) / beta
                res = [max(0.0, a - min(b, a / rho) * scale) for a, b in zip(p, q)]
                p = [r / sum(res) for r in res]
        elif tree.children_drawn == "deterministic":
            point = lambda c, _p: [1.0 if t == tokens[c] else 0.0 for t in range(len(_p))]  # noqa: E731
            child, p = _ref_rrs(p, children, tokens, point, accept, lambda q, x: q)
        elif tree.children_drawn == "with_replacement":
            child, p = _ref_rrs(p, children, tokens, lambda c, _p: probs[c], accept, lambda q, x: q)
        else:
            shared = list(probs[children[0]]) if children else []

            def remove(q: list[float], x: int) -> list[float]:
                q[x] = 0.0
                total = sum(q)
                q[:] = [v / total for v in q] if total > 0 else q
                return q

            child, p = _ref_rrs(p, children, tokens, lambda c, _p: shared, accept, remove)
        if child is None:
            out.append(sample(p))
            return path, out
        out.append(tokens[child])
        path.append(child)
        node = child


def _ref_rho(p: list[float], q: list[float], k: int) -> float:
    """SpecTr's rho, restated: bisection on [1, k] for the smallest rho whose residual is a distribution."""
    def valid(rho: float) -> bool:
        beta = sum(min(a, b / rho) for a, b in zip(q, p))
        return beta <= 0 or (1 - (1 - beta) ** k) / beta <= rho * (1 + 1e-12)

    if valid(1.0):
        return 1.0
    lo, hi = 1.0, float(k)
    while hi - lo > 1e-13:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if valid(mid) else (mid, hi)
    return hi
