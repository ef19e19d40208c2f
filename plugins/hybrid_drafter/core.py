"""The request's own context as a drafter: an incremental index of its n-grams (pure Python, no torch, no vLLM).

``ContextIndex`` holds one request's committed tokens and, for every ``n`` in ``min_n..max_n``, the end position of
the latest occurrence of each n-gram *before* the current last token. ``match(k)`` takes the longest suffix of the
history (``max_n`` down to ``min_n`` tokens) that occurred earlier and returns the up to ``k`` tokens that followed
its latest earlier occurrence: prompt lookup decoding (Saxena 2023; vLLM's ``ngram`` method) with the longest
window first and the most recent match, kept incrementally so each new token costs ``max_n - min_n + 1`` dict
writes instead of a scan of the history per step. ``naive_match`` is the same rule as a scan (the reference the
property tests compare with).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

__all__ = ["ContextIndex", "SourceHindsight", "naive_match"]


class ContextIndex:
    """One request's committed tokens and the latest earlier end position of each of their n-grams.

    Invariant: ``last_end[g]`` is the largest ``p < len(tokens) - 1`` such that ``tokens[p-n+1 : p+1] == g``
    (n = len(g)); the n-grams ending at the last token are indexed when the next token arrives, so a lookup of the
    current suffix never finds itself."""

    def __init__(self, min_n: int = 2, max_n: int = 4) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.min_n, self.max_n = int(min_n), int(max_n)
        self.tokens: list[int] = []
        self.last_end: dict[tuple[int, ...], int] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append committed tokens (indexing the n-grams that end before the new last token)."""
        for t in tokens:
            p = len(self.tokens) - 1
            for n in range(self.min_n, min(self.max_n, p + 1) + 1):
                self.last_end[tuple(self.tokens[p - n + 1 : p + 1])] = p
            self.tokens.append(int(t))

    def match(self, k: int) -> tuple[int, list[int]]:
        """``(n, continuation)``: the longest suffix of ``n`` tokens seen earlier and the up to ``k`` tokens after its
        latest earlier occurrence; ``(0, [])`` when no suffix of ``min_n`` tokens or more occurred before."""
        size = len(self.tokens)
        for n in range(min(self.max_n, size), self.min_n - 1, -1):
            end = self.last_end.get(tuple(self.tokens[size - n :]))
            if end is not None:
                return n, self.tokens[end + 1 : end + 1 + k]
        return 0, []

    @property
    def nbytes(self) -> int:
        """Approximate bytes held: the token list, the dict's table and its tuple keys (CPython ``getsizeof``)."""
        keys = sum(sys.getsizeof(g) for g in self.last_end)
        return sys.getsizeof(self.tokens) + sys.getsizeof(self.last_end) + keys


def naive_match(tokens: Sequence[int], k: int, min_n: int, max_n: int) -> tuple[int, list[int]]:
    """Reference of ``ContextIndex.match`` by scanning: for n = max_n..min_n, the latest start ``s < len - n`` with
    ``tokens[s:s+n] == tokens[-n:]`` gives ``tokens[s+n : s+n+k]``."""
    size = len(tokens)
    for n in range(min(max_n, size), min_n - 1, -1):
        suffix = list(tokens[size - n :])
        for s in range(size - n - 1, -1, -1):
            if list(tokens[s : s + n]) == suffix:
                return n, list(tokens[s + n : s + n + k])
    return 0, []


class SourceHindsight:
    """Greedy hindsight over draft sources: per drafting step, how many tokens each source's candidate would have had
    accepted, and the best of them (a diagnostic for ``declab bench spec``, off by default).

    Under greedy decoding a chain draft is accepted up to its first disagreement with the target's greedy
    continuation, and that continuation is exactly what the request commits next. So every candidate drafted at
    committed length ``start`` is scored, once the request has committed ``start + len(candidate)`` tokens (or has
    finished), as its common prefix with ``tokens[start:]``. Summed over steps: ``1 + best / steps`` is the tokens
    per target forward of a drafter that always picked the best source for the step (the steps of the real run;
    a different pick would shift later steps, so this is the per-step bound, not a simulation)."""

    def __init__(self, sources: Sequence[str]) -> None:
        self.sources = tuple(sources)
        self.pending: dict[str, list[tuple[int, dict[str, list[int]]]]] = {}
        self.totals = {"steps": 0, "best": 0, **{s: 0 for s in self.sources}}

    def record(self, req_id: str, start: int, candidates: dict[str, list[int]]) -> None:
        self.pending.setdefault(req_id, []).append((start, candidates))

    def settle(self, req_id: str, tokens: Sequence[int], final: bool = False) -> None:
        """Score the request's candidates whose continuation is committed (all of them when ``final``: the tail
        then scores against what is known, a lower bound for every source alike)."""
        entries = self.pending.get(req_id)
        if not entries:
            self.pending.pop(req_id, None)
            return
        keep = []
        for start, candidates in entries:
            if not final and start + max(map(len, candidates.values()), default=0) > len(tokens):
                keep.append((start, candidates))
                continue
            scores = {s: common_prefix(candidates.get(s, ()), tokens[start:]) for s in self.sources}
            self.totals["steps"] += 1
            self.totals["best"] += max(scores.values(), default=0)
            for s, v in scores.items():
                self.totals[s] += v
        if keep and not final:
            self.pending[req_id] = keep
        else:
            self.pending.pop(req_id, None)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
