"""Text-quality metrics shared by benchmarks (pure Python)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence


def rep_n(tokens: Sequence[int], n: int) -> float:
    """rep-n = 1 - |unique n-grams| / |n-grams| (Welleck et al. 2020; the degeneration papers' measure)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def is_looping(tokens: Sequence[int], min_period: int = 1, max_period: int = 64, min_repeats: int = 3) -> bool:
    """True if the output ends in a block repeated at least ``min_repeats`` times back to back."""
    n = len(tokens)
    for p in range(min_period, min(max_period, n // min_repeats) + 1):
        tail = tokens[n - p :]
        if all(list(tokens[n - (k + 1) * p : n - k * p]) == list(tail) for k in range(1, min_repeats)):
            return True
    return False


def repetition_stats(outputs: Sequence[Sequence[int]]) -> dict[str, float]:
    """Mean rep-2/3/4 over outputs, diversity = prod(1 - rep-n), share of outputs stuck in a loop."""
    k = max(1, len(outputs))
    stats = {f"rep_{n}": sum(rep_n(o, n) for o in outputs) / k for n in (2, 3, 4)}
    div = 1.0
    for n in (2, 3, 4):
        div *= 1.0 - stats[f"rep_{n}"]
    stats["diversity"] = div
    stats["loop_share"] = sum(is_looping(o) for o in outputs) / k
    return stats


def kl_divergence(p: Mapping, q: Mapping) -> float:
    """KL(p || q) in nats for distributions given as {outcome: probability}; inf if q misses mass of p."""
    total = 0.0
    for k, pk in p.items():
        if pk > 0:
            qk = q.get(k, 0.0)
            if qk <= 0:
                return math.inf
            total += pk * math.log(pk / qk)
    return max(total, 0.0)


def total_variation(p: Mapping, q: Mapping) -> float:
    """Total variation distance ``0.5 * sum |p - q|`` between two distributions given as {outcome: probability}."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def first_line_answer(text: str) -> str:
    """The answer of a fact-world item: the first non-empty line of the generation, stripped
    (``../shared/eval/README.md``)."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def answer_rates(answers: Sequence[str], items: Sequence[Mapping[str, str]], fields: Sequence[str]) -> dict[str, float]:
    """Share of ``answers`` equal to each item's ``field`` (e.g. context_answer / prior_answer)."""
    n = max(len(answers), 1)
    return {f: sum(first_line_answer(a) == it[f] for a, it in zip(answers, items)) / n for f in fields}
