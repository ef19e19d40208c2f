"""Momentum Decoding as a per-request logits transform (pure torch, no vLLM import).

Paper: Tian Lan, Yixuan Su, Shuhang Liu, Heyan Huang, Xian-Ling Mao, "Momentum Decoding: Open-ended Text
Generation As Graph Exploration", arXiv 2212.02175 (2022). Reading list paper 15. Reference code:
github.com/gmftbyGMFTBY/MomentumDecoding, ``models/utlis_ngram.py`` (``ResistanceDecodingNGram``,
``find_max_repetition_length``, ``ngram_lookup_table_*``). This file is a fresh implementation of the rule, not a
copy of that code.

Graph. Generation is a walk on a directed graph whose nodes are token ids and whose edges are the bigrams
already written: ``x_i -> x_{i+1}`` for every adjacent pair of the history ``h = prompt + generated`` (the
reference code builds the graph from the whole prefix at the first step and adds every generated token, so the
*prompt counts*). Taking a token that is already a node closes a circular loop; the longer the stretch of the
history that the step would re-walk, the deeper the loop.

Loop depth. For a candidate ``v`` and a cap ``D = max_ngram``::

    d(v) = 0                                            if v is not a node (never seen in h)
    d(v) = max{ n in 2..D : (h[-(n-1):], v) is an n-gram that occurs in h }   if such an n exists
    d(v) = 1                                            otherwise (v is a node, but no loop of length >= 2)

Selection rule, the paper's momentum-decoding update (arXiv 2212.02175, method section; the exact form, the
candidate pool and the constants are those of the authors' reference code, ``ResistanceDecodingNGram``, which is
what this implements: the paper body itself was not available when this was written, only its abstract)::

    V_k   = the k tokens with the highest logits                   (k = top_k)
    s(v)  = p(v | x_<t) - alpha * R(d(v))        for v in V_k       (p = softmax of the unmodified row)
    x_t   = argmax_{v in V_k} s(v)

i.e. the LM greedily walks to new nodes (R(0) = 0: plain greedy among unseen tokens) and may return to existing
nodes only with its probability "momentum" reduced by the resistance ``alpha * R(d)``.

Resistance functions ``R(d)`` (``R(0) = 0`` for all of them), from ``ngram_lookup_table_*`` of the reference:

* ``"ours"`` (default): R(1..5) = 1, 3, 4, 5, 5, the table at commit cac238b (2022-12-05, the day arXiv v1 was
  posted; the first commit had R(5) = 6, a later one changed the default to an n-gram blocking ablation table).
  Depths above 5 (only reachable with ``max_ngram > 5``, the reference caps at 5) keep R = 5. (The later
  n-gram-blocking table, R = 0 for d <= 3, 5 for d = 4, inf beyond, run with a pool of 2000, is an ablation
  and is not offered: an infinite resistance could empty the pool.)
* ``"linear"``: R(d) = d (the table the reference later keeps, commented, "for GPT2-XL").
* ``"constant"``: R(d) = 2.
* ``"log"``: R(d) = log_6(1 + d) / 0.2.
* ``"exp"``: R(d) = 1.5**d / 2.

Parameters (per request, declared in ``spec.py``):

* ``top_k`` (int, default 5): size of the candidate pool ``V_k`` (reference ``beam_width``; 5 in ``test.py``).
* ``alpha`` (float, default 0.2): resistance scale (reference ``scale_alpha``; 0.2 in ``inference.py`` and
  ``test.py``). ``alpha = 0`` gives plain greedy decoding.
* ``max_ngram`` (int, default 5): cap ``D`` on the loop depth (reference ``max_length=5``).
* ``resistance`` (str, default ``"ours"``): the resistance function, one of the names above.

Output row. Tokens outside ``V_k`` get ``-inf``; each candidate gets its score ``s(v)`` (probability units, not
a logit). Greedy decoding (temperature 0) on the returned row therefore picks exactly the paper's ``x_t``; ties in
``s`` go to the candidate with the higher logit, as in the reference (the winner is nudged one float32 ulp above
any candidate that float32 rounding would tie with it). The paper is deterministic: with a temperature ``T > 0``
the engine samples from ``softmax(s / T)`` over ``V_k``, a relaxation that is not in the paper and tends to the
paper's choice as ``T -> 0``. The row is never all ``-inf`` (a row with no finite logit comes back as zeros).

State. Each processor keeps the set of every n-gram (n = 1..D) of its history, each packed exactly into one
Python int (32 bits per token), plus the last ``D`` tokens. Every call ingests only the tokens appended to
``output_ids`` since the previous call (O(D) each) and looks up O(k * D) n-grams, so the work per step does not
grow with the history. If ``output_ids`` ever gets shorter (e.g. the engine rolled tokens back) the state is
rebuilt from scratch.

Measured numbers (repetition, diversity, speed against greedy) live in the plugin's README.md, not here.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch

from declab.integrations.sdk.rows import RowContext, RowProcessor

DEFAULT_TOP_K = 5
DEFAULT_ALPHA = 0.2
DEFAULT_MAX_NGRAM = 5
DEFAULT_RESISTANCE = "ours"

_BITS = 32  # bits per token in a packed n-gram; token ids are < 2**32 - 1
_OURS_TABLE = (0.0, 1.0, 3.0, 4.0, 5.0, 5.0)  # R(0..5) at reference commit cac238b


def _r_ours(d: int) -> float:
    return _OURS_TABLE[min(d, len(_OURS_TABLE) - 1)]


def _r_linear(d: int) -> float:
    return float(d)


def _r_constant(d: int) -> float:
    return 0.0 if d == 0 else 2.0


def _r_log(d: int) -> float:
    return 0.0 if d == 0 else math.log(1 + d, 6) / 0.2


def _r_exp(d: int) -> float:
    return 0.0 if d == 0 else 1.5**d / 2


RESISTANCE_FUNCTIONS: dict[str, Callable[[int], float]] = {
    "ours": _r_ours,
    "linear": _r_linear,
    "constant": _r_constant,
    "log": _r_log,
    "exp": _r_exp,
}


def pack(tokens: Sequence[int]) -> int:
    """Exact, collision-free int key of an n-gram (each token stored as ``id + 1`` in its own 32-bit field)."""
    key = 0
    for t in tokens:
        key = (key << _BITS) | (int(t) + 1)
    return key


def loop_depth_naive(history: Sequence[int], candidate: int, max_ngram: int) -> int:
    """``d(candidate)`` recomputed from scratch by scanning ``history`` (reference for tests; O(len * D))."""
    h = [int(t) for t in history]
    if candidate not in h:
        return 0
    best = 1
    for n in range(2, max_ngram + 1):
        if len(h) < n:  # the n-gram must fit inside the history
            break
        gram = h[len(h) - (n - 1):] + [candidate]
        if any(h[i:i + n] == gram for i in range(len(h) - n + 1)):
            best = n
    return best


class NgramGraph:
    """Incremental n-gram index (n = 1..max_ngram) of a growing token history."""

    def __init__(self, max_ngram: int) -> None:
        if max_ngram < 1:
            raise ValueError("max_ngram must be >= 1")
        self.max_ngram = max_ngram
        self.grams: set[int] = set()
        self.tail: list[int] = []  # the last max_ngram tokens
        self.length = 0

    def append(self, token: int) -> None:
        tail = self.tail
        tail.append(int(token))
        if len(tail) > self.max_ngram:
            del tail[0]
        key, shift = 0, 0
        for t in reversed(tail):  # n-grams ending at the new token, n = 1..len(tail)
            key |= (t + 1) << shift
            shift += _BITS
            self.grams.add(key)
        self.length += 1

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.append(t)

    def depth(self, candidate: int) -> int:
        """Loop depth ``d(candidate)`` (see the module docstring), O(max_ngram)."""
        v = int(candidate) + 1
        if v not in self.grams:
            return 0
        d = 1
        ctx, shift = 0, 0
        # The (n-1)-token context is the suffix of the history. Occurrence is nested (an n-gram that occurs has
        # an occurring (n-1)-suffix), so the first miss ends the search.
        context = self.tail[max(0, len(self.tail) - (self.max_ngram - 1)):] if self.max_ngram > 1 else []
        for t in reversed(context):
            ctx |= (t + 1) << shift
            shift += _BITS
            if ((ctx << _BITS) | v) in self.grams:
                d += 1
            else:
                break
        return d


class MomentumProcessor(RowProcessor):
    """Momentum decoding for one request: keep the top-k, score ``p - alpha * R(loop depth)``."""

    def __init__(
        self,
        params: Mapping[str, Any],
        prompt_ids: Sequence[int],
        output_ids: Sequence[int],
        ctx: RowContext,
    ) -> None:
        super().__init__(params, prompt_ids, output_ids, ctx)
        self.top_k = int(self.params.get("top_k", DEFAULT_TOP_K))
        self.alpha = float(self.params.get("alpha", DEFAULT_ALPHA))
        self.max_ngram = int(self.params.get("max_ngram", DEFAULT_MAX_NGRAM))
        name = self.params.get("resistance", DEFAULT_RESISTANCE)
        if name not in RESISTANCE_FUNCTIONS:
            raise ValueError(f"unknown resistance function {name!r}; known: {sorted(RESISTANCE_FUNCTIONS)}")
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        self.resistance = RESISTANCE_FUNCTIONS[name]
        self.graph: NgramGraph | None = None  # built lazily at the first call
        self._n_out = 0  # how many output tokens the graph holds

    # -- state ---------------------------------------------------------------------------------------------
    def _rebuild(self) -> None:
        self.graph = NgramGraph(self.max_ngram)
        self.graph.extend(self.prompt_ids or ())
        self._n_out = 0

    def sync(self) -> NgramGraph:
        """Bring the graph up to date with ``prompt_ids + output_ids`` (ingests only the new tokens)."""
        n = len(self.output_ids)
        if self.graph is None or n < self._n_out:
            self._rebuild()
        graph = self.graph
        assert graph is not None
        if n > self._n_out:
            graph.extend(self.output_ids[self._n_out:n])
            self._n_out = n
        return graph

    def loop_depths(self, candidates: Sequence[int]) -> list[int]:
        graph = self.sync()
        return [graph.depth(c) for c in candidates]

    # -- the transform -------------------------------------------------------------------------------------
    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        graph = self.sync()
        row = logits
        safe = torch.nan_to_num(
            row.float(), nan=float("-inf"), posinf=torch.finfo(torch.float32).max, neginf=float("-inf")
        )
        top_vals, top_ids = torch.topk(safe, min(self.top_k, safe.shape[-1]))
        # p(v | x_<t) over the full vocabulary; the log-normaliser in float64 so that p - alpha*R is exact enough
        # not to reorder candidates. One host transfer for the k values and the normaliser.
        lse = torch.logsumexp(safe.double(), dim=-1, keepdim=True)
        host = torch.cat([top_vals.double(), lse]).tolist()
        vals, log_z = host[:-1], host[-1]
        k = sum(1 for v in vals if v != float("-inf"))  # -inf (banned upstream) are never candidates
        if k == 0:
            row.zero_()  # degenerate input without a usable logit: never hand back an all -inf row
            return row
        ids = top_ids[:k].tolist()
        scores = [math.exp(v - log_z) - self.alpha * self.resistance(graph.depth(t)) for v, t in zip(vals, ids)]
        win = max(range(k), key=lambda j: (scores[j], -j))  # first maximum = higher logit wins ties (reference)
        s32 = torch.tensor(scores, dtype=torch.float32)
        if k > 1:
            best_other = float(torch.cat([s32[:win], s32[win + 1:]]).max())
            if float(s32[win]) <= best_other:  # float32 rounding tied the winner: make argmax unambiguous
                s32[win] = torch.nextafter(torch.tensor(best_other), torch.tensor(float("inf")))
        row.fill_(float("-inf"))
        row[top_ids[:k]] = s32.to(device=row.device, dtype=row.dtype)
        return row
