"""Goodness-of-fit tests shared by the suite's statistical tests, each used with a negative control.

A statistical test passes on noise alone, so each use pairs the sampler under test with the failure it guards
against, run through the same test: ``assert fit(good).passes`` and ``assert not fit(broken).passes``. A test that
cannot tell the broken sampler apart has no power and fails loudly instead of passing.

Both tests reject at ``ALPHA`` = 1e-5: a test module that makes up to ten such comparisons on a correct sampler
fails by chance with probability below 1e-4. The p-values come from the chi-square distribution (the asymptotic
law of both statistics), computed with ``torch.special.gammaincc`` (no SciPy in the environment).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

ALPHA = 1e-5
MIN_EXPECTED = 5.0  # categories expected fewer times than this are pooled into one bin (chi-square approximation)
OTHER = "<other>"


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X ~ chi-square with ``df`` degrees of freedom."""
    import torch

    if statistic <= 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


@dataclass(frozen=True)
class Fit:
    """One test's outcome: ``passes`` when the samples are compatible with the hypothesis at ``ALPHA``."""

    test: str
    statistic: float
    df: int
    p_value: float
    n: int

    @property
    def passes(self) -> bool:
        return self.p_value >= ALPHA

    def __str__(self) -> str:
        return f"{self.test}: statistic {self.statistic:.1f}, {self.df} df, p = {self.p_value:.2g} (n = {self.n})"


def goodness_of_fit(samples: Sequence[Hashable], expected: Mapping[Hashable, float], tolerance: float = 0.0) -> Fit:
    """G-test of ``samples`` against the exact distribution ``expected`` (outcome -> probability).

    G = 2 n KL(empirical || expected) on the pooled bins: categories expected fewer than ``MIN_EXPECTED`` times are
    pooled into one. An outcome ``expected`` gives no probability is impossible under the hypothesis: p = 0.
    ``tolerance`` (nats) allows a bias of that size: the p-value is that of G - 2 n tolerance (a distribution at KL
    ``b`` from ``expected`` raises G by about 2 n b), for samplers that only converge to ``expected``."""
    n = len(samples)
    counts = Counter(samples)
    if any(expected.get(s, 0.0) <= 0.0 for s in counts):
        return Fit("G-test", math.inf, 0, 0.0, n)
    big = {k for k, p in expected.items() if p * n >= MIN_EXPECTED}
    bins_observed = {k: counts.get(k, 0) for k in big}
    bins_expected = {k: expected[k] * n for k in big}
    rest = n - sum(bins_observed.values())
    rest_expected = n - sum(bins_expected.values())
    if rest_expected > 1e-9 * n:
        bins_observed[OTHER], bins_expected[OTHER] = rest, rest_expected
    g = 2.0 * sum(o * math.log(o / bins_expected[k]) for k, o in bins_observed.items() if o > 0)
    df = max(len(bins_observed) - 1, 1)
    name = f"G-test (tolerance {tolerance} nats)" if tolerance else "G-test"
    return Fit(name, g, df, chi2_sf(g - 2.0 * n * tolerance, df), n)


def homogeneity(a: Sequence[Hashable], b: Sequence[Hashable], bins: int = 8) -> Fit:
    """Pearson's two-sample chi-square test that ``a`` and ``b`` come from one distribution, over the ``bins`` most
    frequent values of both (pooled) plus one bin for the rest."""
    ca, cb = Counter(a), Counter(b)
    top = [t for t, _ in (ca + cb).most_common(bins)]
    bins_a = [ca[t] for t in top] + [len(a) - sum(ca[t] for t in top)]
    bins_b = [cb[t] for t in top] + [len(b) - sum(cb[t] for t in top)]
    na, nb = len(a), len(b)
    stat, used = 0.0, 0
    for x, y in zip(bins_a, bins_b, strict=True):
        if x + y == 0:
            continue
        used += 1
        ea, eb = na * (x + y) / (na + nb), nb * (x + y) / (na + nb)
        stat += (x - ea) ** 2 / ea + (y - eb) ** 2 / eb
    df = max(used - 1, 1)
    return Fit("chi-square homogeneity", stat, df, chi2_sf(stat, df), na + nb)
