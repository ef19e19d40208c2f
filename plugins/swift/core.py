"""SWIFT's on-the-fly choice of the skipped layers (pure numpy, no torch, no vLLM).

Paper: Heming Xia, Yongqi Li, Jun Zhang, Cunxiao Du, Wenjie Li, "SWIFT: On-the-Fly Self-Speculative Decoding for
LLM Inference Acceleration", arXiv 2410.06916 (ICLR 2025); reading list paper 49. Reference code: hemingkx/SWIFT
(Apache-2.0; ``model/swift/utils.py``), read for its defaults (``skip_ratio 0.45``, ``context_window 32``,
``bayes_interval 25``, ``max_opt_iter 1000``, ``max_tolerance_iter 300``, ``max_score 0.95``), not copied.

The draft is the target with a set ``S`` of its intermediate sublayers skipped (each layer's attention and MLP are
separate candidates; the first and last layers are always kept), ``|S| = round(skip_ratio * 2 L)``. Which set drafts
well depends on the model *and* the task, so SWIFT chooses ``S`` while serving, from the text just generated:

    matchness(S) = (1 / w) * sum_{i in window} [ argmax p_S(. | x_<i) == x_i ]

over the last ``w`` generated tokens of a request (``context_window``; windows reaching into the prompt are not
scored, as in the reference), where ``p_S`` is the skipped model read in one parallel
pass over the window (teacher forcing: no drafting needed to score a set). Candidates come from random search,
with every ``bayes_interval``-th candidate proposed by Bayesian optimisation: a Gaussian process over the sets seen
(the kernel ``exp(-hamming(a, b) / (2 ell^2))`` on the 0/1 skip masks) and, among random sets, the one with the
highest upper confidence bound ``mu + kappa * sigma`` (kappa 2.5 and noise 1e-2, as the reference). The search
stops after ``max_iters`` candidates, after ``patience`` candidates without a better one, or once the best reaches
``target_score``.

One change from the reference, for serving: the context differs from step to step (another request, another
passage), and a set scored on an easy window would beat a better set scored on a hard one. So each candidate is
scored *paired*: the candidate and the current best on the same window (two passes), and it replaces the best when
it matches more; the GP sees every (set, score) pair. ``tests/test_swift_core.py`` checks the search against naive
references (exhaustive scoring of a known objective, the GP posterior by explicit inversion).

Confidence-based early stop (the paper's confidence-aware drafting): drafting a request stops after a token whose
draft probability is below ``stop_threshold`` (that token is still proposed: its verification costs one more row of
the verify pass, nearly free on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LayerSetSearch", "SearchState", "eligible_sublayers", "gp_posterior", "gp_posterior_naive",
           "matchness", "skip_count", "uniform_skip_set"]


def eligible_sublayers(num_layers: int) -> list[int]:
    """The sublayers SWIFT may skip: attention (``2 i``) and MLP (``2 i + 1``) of layers 1 .. L-2."""
    return [s for i in range(1, num_layers - 1) for s in (2 * i, 2 * i + 1)]


def skip_count(num_layers: int, skip_ratio: float) -> int:
    """``round(skip_ratio * 2 L)`` sublayers, at most the eligible ones, at least 1."""
    if not 0.0 < skip_ratio < 1.0:
        raise ValueError(f"skip_ratio must be in (0, 1), got {skip_ratio}")
    return max(1, min(len(eligible_sublayers(num_layers)), round(skip_ratio * 2 * num_layers)))


def uniform_skip_set(num_layers: int, count: int) -> frozenset[int]:
    """A fixed set of ``count`` sublayers spread evenly over the eligible ones (the non-adaptive baseline)."""
    eligible = eligible_sublayers(num_layers)
    if not 1 <= count <= len(eligible):
        raise ValueError(f"cannot skip {count} of {len(eligible)} eligible sublayers")
    picks = np.linspace(0, len(eligible) - 1, count).round().astype(int)
    return frozenset(eligible[i] for i in picks)


def matchness(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Share of positions where the skipped model's top-1 equals the committed token."""
    predicted, actual = np.asarray(predicted), np.asarray(actual)
    if predicted.shape != actual.shape or predicted.size == 0:
        raise ValueError(f"matchness needs two equal, non-empty arrays, got {predicted.shape} and {actual.shape}")
    return float((predicted == actual).mean())


# -- the Gaussian process over skip masks ------------------------------------------------------------------------


def _kernel(a: np.ndarray, b: np.ndarray, length_scale: float) -> np.ndarray:
    hamming = (a[:, None, :] != b[None, :, :]).sum(-1)
    return np.exp(-hamming / (2.0 * length_scale ** 2))


def gp_posterior(observed: np.ndarray, scores: np.ndarray, query: np.ndarray, *, length_scale: float = 1.0,
                 noise: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation at ``query`` masks ``[Q, D]`` of a zero-mean GP (on scores centred by
    their mean) fitted to ``observed`` masks ``[N, D]`` and their ``scores`` (Cholesky solve)."""
    centre = float(scores.mean())
    k = _kernel(observed, observed, length_scale) + noise * np.eye(len(observed))
    chol = np.linalg.cholesky(k)
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, scores - centre))
    k_star = _kernel(query, observed, length_scale)
    mean = centre + k_star @ alpha
    v = np.linalg.solve(chol, k_star.T)
    var = np.clip(1.0 - (v * v).sum(0), 0.0, None)
    return mean, np.sqrt(var)


def gp_posterior_naive(observed, scores, query, *, length_scale: float = 1.0, noise: float = 1e-2):
    """The same posterior by explicit matrix inversion, element by element (the reference for tests)."""
    centre = float(np.mean(scores))
    n = len(observed)
    k = np.array([[np.exp(-np.sum(observed[i] != observed[j]) / (2 * length_scale ** 2)) + (noise if i == j else 0)
                   for j in range(n)] for i in range(n)])
    inv = np.linalg.inv(k)
    means, stds = [], []
    for q in query:
        ks = np.array([np.exp(-np.sum(q != observed[i]) / (2 * length_scale ** 2)) for i in range(n)])
        means.append(centre + ks @ inv @ (np.asarray(scores) - centre))
        stds.append(np.sqrt(max(0.0, 1.0 - ks @ inv @ ks)))
    return np.array(means), np.array(stds)


# -- the search ------------------------------------------------------------------------------------------------


@dataclass
class SearchState:
    """What the search has seen (for reports): candidates scored, and the best set's mean score."""

    iterations: int = 0
    bayes_proposals: int = 0
    replacements: int = 0
    since_improvement: int = 0
    best_score: float = 0.0
    # every set scored -> (sum of its scores, times scored): the GP fits each set's mean score
    scored: dict[frozenset[int], list[float]] = field(default_factory=dict)
    sources: dict[frozenset[int], set] = field(default_factory=dict)  # set -> the requests its windows came from


class LayerSetSearch:
    """Random search with periodic Bayesian optimisation over skip sets of a fixed size (module docstring).

    Protocol per optimisation step: ``candidate = search.propose()``; score it and ``search.best`` on the same window;
    ``search.observe(candidate, candidate_score, best_score)``. ``search.done`` ends the search; ``search.best`` is
    what drafts (also during the search)."""

    # Before the best set's mean can end the search it must have been scored on this many windows, from this many
    # requests: a small model's looping output is predicted by almost any set (one run ended at 0.96 on one loop).
    MIN_SCORED = 8
    MIN_SOURCES = 4
    GP_POINTS = 256  # the GP fits the last this many distinct sets scored (its cost grows as the cube)

    def __init__(self, num_layers: int, count: int, *, seed: int = 0, bayes_interval: int = 25,
                 max_iters: int = 1000, patience: int = 300, target_score: float = 0.95,
                 bayes_pool: int = 256, kappa: float = 2.5, start: frozenset[int] | None = None) -> None:
        self.eligible = eligible_sublayers(num_layers)
        if not 1 <= count <= len(self.eligible):
            raise ValueError(f"cannot skip {count} of {len(self.eligible)} eligible sublayers")
        self.num_layers, self.count = num_layers, count
        self.rng = np.random.default_rng(seed)
        self.bayes_interval, self.max_iters, self.patience = bayes_interval, max_iters, patience
        self.target_score, self.bayes_pool, self.kappa = target_score, bayes_pool, kappa
        self.best: frozenset[int] = start if start is not None else uniform_skip_set(num_layers, count)
        self.state = SearchState()

    @property
    def done(self) -> bool:
        s = self.state
        # a mean over enough windows, from enough requests
        settled = (s.scored.get(self.best, (0.0, 0))[1] >= self.MIN_SCORED
                   and len(s.sources.get(self.best, ())) >= self.MIN_SOURCES)
        return (s.iterations >= self.max_iters or s.since_improvement >= self.patience
                or (settled and s.best_score >= self.target_score))

    def _mask(self, skipped: frozenset[int]) -> np.ndarray:
        return np.array([s in skipped for s in self.eligible], dtype=np.int8)

    def _random(self) -> frozenset[int]:
        return frozenset(int(x) for x in self.rng.choice(self.eligible, self.count, replace=False))

    def propose(self) -> frozenset[int]:
        """The next candidate: a random set, or every ``bayes_interval``-th time (once two sets are scored) the
        random set of a pool with the highest UCB under the GP."""
        s = self.state
        if (s.iterations + 1) % self.bayes_interval == 0 and len(s.scored) >= 2:
            fitted = list(s.scored.items())[-self.GP_POINTS:]
            pool = [c for c in (self._random() for _ in range(self.bayes_pool)) if c not in s.scored]
            pool = pool or [self._random()]
            observed = np.stack([self._mask(h) for h, _ in fitted])
            scores = np.array([total / n for _, (total, n) in fitted])
            mean, std = gp_posterior(observed, scores, np.stack([self._mask(c) for c in pool]))
            s.bayes_proposals += 1
            return pool[int(np.argmax(mean + self.kappa * std))]
        return self._random()

    def observe(self, candidate: frozenset[int], candidate_score: float, best_score: float,
                sources: frozenset = frozenset()) -> bool:
        """Record a paired comparison on one window (``sources``: the requests it came from); True when the
        candidate became the best."""
        s = self.state
        s.iterations += 1
        for skipped, score in ((candidate, candidate_score), (self.best, best_score)):
            total = s.scored.setdefault(skipped, [0.0, 0])
            total[0] += float(score)
            total[1] += 1
            s.sources.setdefault(skipped, set()).update(sources)
        replaced = candidate_score > best_score
        if replaced:
            self.best = candidate
            s.replacements += 1
            s.since_improvement = 0
        else:
            s.since_improvement += 1
        # The best set's mean over every window it was scored on (MIN_SCORED of them, from MIN_SOURCES requests,
        # before it counts): one easy window (a repeated passage) must not end the search at target_score.
        total, n = s.scored[self.best]
        s.best_score = total / n
        return replaced
