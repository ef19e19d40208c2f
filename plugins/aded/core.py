"""ADED: the adaptive tri-gram representation of the model and the tree search that drafts from it (pure Python).

Paper: Xukun Liu, Bowen Lei, Ruqi Zhang, Dongkuan Xu, "Adaptive Draft-Verification for Efficient Large Language
Model Decoding", arXiv 2407.12021 (2024); reading list paper 8. A fresh implementation from the paper's description
(no code copied); where the description leaves a choice open, the choice is marked *ours*.

Representation (the paper's "tri-gram matrix-based LLM representation"). For every context of two tokens ``(a, b)``
a small table of successor weights ``w[a, b][c]``; the draft distribution after ``a b`` is ``w[a, b][.]``
normalised. It is *adaptive*: it is updated from the model's own outputs as decoding goes (every committed
tri-gram ``a b c`` adds 1 to ``w[a, b][c]``), and older evidence fades: before an update the whole row is
multiplied by ``decay`` (*ours*: a per-row exponential forgetting, so a row follows the model's recent
continuations of that context). A row keeps its ``row_size`` heaviest successors (*ours*), and the table at most
``max_rows`` contexts, the least recently updated dropped first (*ours*; bounded memory). The paper initialises the
representation from a corpus; there is none here, so each request's prompt is observed when it starts (*ours*).
A context never seen falls back to the bigram row ``(-1, b)`` (*ours*), which the same updates maintain.

Draft construction (the paper's search that balances exploration and exploitation). A Monte-Carlo tree search over
continuations of the context: a node is a draft token with its prior ``P`` (its probability under the tri-gram
row of its two predecessors), visit count ``N`` and total value ``W``. Each of ``iterations`` simulations descends
from the root by the PUCT rule ``W/N + c * P * sqrt(N_parent) / (1 + N)`` (unvisited: ``W/N = 0``), expands the
leaf it reaches with its ``branch`` most likely successors (when it is shallower than ``depth``), and backs up the
reward ``prod(P)`` along the path, the tri-gram estimate that the whole path is what the model will write. Ties go
to the higher prior, then to the lower token id (deterministic). The draft is the most-visited chain
(``best_chain``, for vLLM's chain verifier) or the ``k`` most visited nodes as a tree (``best_tree``, for the tree
seam). ``naive_search`` is the same rule over a dict of paths, recomputed from scratch each simulation: the
reference the property tests compare with.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["TrigramTable", "SearchNode", "search", "best_chain", "best_tree", "naive_search", "tree_paths"]

BIGRAM = -1  # first token of a bigram row's key: (BIGRAM, b)


class TrigramTable:
    """``(a, b) -> {c: weight}``, updated from observed token streams (see the module docstring)."""

    def __init__(self, decay: float = 0.9, row_size: int = 8, max_rows: int = 1 << 18) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if row_size < 1 or max_rows < 1:
            raise ValueError("row_size and max_rows must be >= 1")
        self.decay, self.row_size, self.max_rows = float(decay), int(row_size), int(max_rows)
        self.rows: OrderedDict[tuple[int, int], dict[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.rows)

    def _add(self, key: tuple[int, int], c: int) -> None:
        row = self.rows.pop(key, None)
        if row is None:
            row = {}
            if len(self.rows) >= self.max_rows:
                self.rows.popitem(last=False)  # least recently updated context
        elif self.decay != 1.0:
            for t in row:
                row[t] *= self.decay
        row[c] = row.get(c, 0.0) + 1.0
        if len(row) > self.row_size:  # drop the lightest (ties: the larger token id)
            del row[min(row, key=lambda t: (row[t], -t))]
        self.rows[key] = row

    def observe(self, a: int, b: int, c: int) -> None:
        """The model wrote ``c`` after ``a b``: the tri-gram row and the bigram row of ``b`` learn it."""
        self._add((int(a), int(b)), int(c))
        self._add((BIGRAM, int(b)), int(c))

    def observe_stream(self, tokens: Sequence[int], start: int = 2) -> None:
        """Observe the tri-grams of ``tokens`` ending at positions ``start..len-1`` (``start >= 2``)."""
        for i in range(max(2, start), len(tokens)):
            self.observe(tokens[i - 2], tokens[i - 1], tokens[i])

    def successors(self, a: int, b: int, m: int) -> list[tuple[int, float]]:
        """The ``m`` most likely successors after ``a b`` with their probabilities (the bigram row of ``b`` when
        ``(a, b)`` was never observed; ``[]`` when neither was). Order: probability down, then token id up."""
        row = self.rows.get((int(a), int(b))) or self.rows.get((BIGRAM, int(b)))
        if not row:
            return []
        total = sum(row.values())
        ranked = sorted(row.items(), key=lambda item: (-item[1], item[0]))[:m]
        return [(t, w / total) for t, w in ranked]

    @property
    def nbytes(self) -> int:
        """Approximate bytes held (CPython ``getsizeof`` of the table, its keys, rows and their entries)."""
        total = sys.getsizeof(self.rows)
        for key, row in self.rows.items():
            total += sys.getsizeof(key) + sys.getsizeof(row) + 2 * 28 * len(row)  # int key + float value each
        return total


@dataclass
class SearchNode:
    token: int
    parent: int  # index in the node list; -1 for the root
    prior: float
    depth: int
    visits: int = 0
    value: float = 0.0
    children: list[int] = field(default_factory=list)
    expanded: bool = False


def _context(nodes: list[SearchNode], i: int, a: int) -> tuple[int, int]:
    """The two tokens before node ``i``'s successors: (its parent's token, its own token)."""
    p = nodes[i].parent
    return (nodes[p].token if p >= 0 else a), nodes[i].token


def _score(parent: SearchNode, child: SearchNode, c_puct: float) -> tuple[float, float, int]:
    q = child.value / child.visits if child.visits else 0.0
    u = c_puct * child.prior * math.sqrt(parent.visits) / (1 + child.visits)
    return (q + u, child.prior, -child.token)


def search(table: TrigramTable, a: int, b: int, iterations: int, branch: int, depth: int,
           c_puct: float = 1.0) -> list[SearchNode]:
    """The search tree after ``iterations`` simulations from context ``a b`` (node 0 = the root, token ``b``)."""
    nodes = [SearchNode(int(b), -1, 1.0, 0)]
    for _ in range(iterations):
        path, i = [0], 0
        while nodes[i].expanded and nodes[i].children:
            i = max(nodes[i].children, key=lambda j, p=nodes[i]: _score(p, nodes[j], c_puct))
            path.append(i)
        node = nodes[i]
        if not node.expanded and node.depth < depth:
            node.expanded = True
            for t, p in table.successors(*_context(nodes, i, a), branch):
                node.children.append(len(nodes))
                nodes.append(SearchNode(t, i, p, node.depth + 1))
        reward = 1.0
        for j in path[1:]:
            reward *= nodes[j].prior
        for j in path:
            nodes[j].visits += 1
            nodes[j].value += reward
    return nodes


def _rank(nodes: list[SearchNode], j: int) -> tuple[int, float, int]:
    return (nodes[j].visits, nodes[j].prior, -nodes[j].token)


def best_chain(nodes: list[SearchNode], k: int) -> list[int]:
    """The most-visited path from the root, at most ``k`` tokens, ending before an unvisited node."""
    out, i = [], 0
    while len(out) < k:
        visited = [j for j in nodes[i].children if nodes[j].visits]
        if not visited:
            break
        i = max(visited, key=lambda j: _rank(nodes, j))
        out.append(nodes[i].token)
    return out


def best_tree(nodes: list[SearchNode], k: int) -> tuple[list[int], tuple[int, ...]]:
    """The ``k`` most visited nodes (and the root) as a tree in BFS order: ``(tokens, parents)``, root first.
    A child never has more visits than its parent, and ties go to the shallower node, so every chosen node's
    parent is chosen too."""
    visited = [j for j in range(1, len(nodes)) if nodes[j].visits]
    chosen = sorted(visited, key=lambda j: (-nodes[j].visits, nodes[j].depth, -nodes[j].prior, nodes[j].token, j))[:k]
    keep = set(chosen) | {0}
    order = sorted(keep, key=lambda j: (nodes[j].depth, j))
    index = {j: n for n, j in enumerate(order)}
    return [nodes[j].token for j in order], tuple(-1 if j == 0 else index[nodes[j].parent] for j in order)


def naive_search(table: TrigramTable, a: int, b: int, iterations: int, branch: int, depth: int,
                 c_puct: float = 1.0) -> dict[tuple[int, ...], tuple[int, float]]:
    """Reference of ``search``: path of tokens -> (visits, value), recomputed from the paths each simulation."""
    stats: dict[tuple[int, ...], list] = {(): [0, 0.0]}
    priors: dict[tuple[int, ...], float] = {(): 1.0}
    children: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for _ in range(iterations):
        path: tuple[int, ...] = ()
        walk = [()]
        while children.get(path):
            n_parent = stats[path][0]

            def score(q: tuple[int, ...]) -> tuple[float, float, int]:
                n, w = stats[q]
                return ((w / n if n else 0.0) + c_puct * priors[q] * math.sqrt(n_parent) / (1 + n), priors[q], -q[-1])

            path = max(children[path], key=score)
            walk.append(path)
        if path not in children and len(path) < depth:
            ctx = (a, b) if not path else ((path[-2] if len(path) > 1 else b), path[-1])
            kids = []
            for t, p in table.successors(ctx[0], ctx[1], branch):
                q = path + (t,)
                priors[q], stats[q] = p, [0, 0.0]
                kids.append(q)
            children[path] = kids
        reward = math.prod(priors[path[:d]] for d in range(1, len(path) + 1))
        for q in walk:
            stats[q][0] += 1
            stats[q][1] += reward
    return {q: (n, w) for q, (n, w) in stats.items()}


def tree_paths(nodes: list[SearchNode]) -> dict[tuple[int, ...], tuple[int, float]]:
    """``search``'s tree as ``naive_search`` reports it: path of tokens -> (visits, value)."""
    paths: list[tuple[int, ...]] = []
    for node in nodes:
        paths.append(() if node.parent < 0 else paths[node.parent] + (node.token,))
    return {paths[i]: (n.visits, n.value) for i, n in enumerate(nodes)}

