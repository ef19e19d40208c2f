"""Superposed Decoding (Shen, Kusupati, et al., arXiv 2405.18400): k drafts from one forward pass per step (pure
torch / numpy, no vLLM import).

Algorithm (read from the paper's abstract and its reference implementation, ``superposed/llama/superpose.py`` of
RAIVNLab/SuperposedDecoding; not copied):

1. The model runs ONE sequence per request. Its input at a generated position is the *superposition* of the k
   drafts' newest token embeddings, weighted by the drafts' probabilities (``weights = softmax(draft scores)``;
   drafts that end in the same token add up).
2. From the next-token distribution ``p = softmax(logits / softmax_temperature)`` keep the ``n_token_sample`` most
   likely tokens and renormalize (the same candidates for every draft: one forward serves all of them).
3. Each draft d scores each candidate t by ``(1 - alpha) * log p(t) + alpha * log ngram_d(t)``, ``ngram_d`` the
   interpolated n-gram probability of t after draft d's own last tokens (prompt included); a draft for which every
   candidate has n-gram probability 0 gets ``(1 - alpha) * log p(t) - penalty`` instead.
4. Candidate draft score = draft score + that; the ``2k`` best of the ``k x n_token_sample`` candidates are ranked
   (at the first step only draft 0 exists, so its top ``2k`` tokens); those ending in EOS join the finished list,
   the ``k`` best of the rest are the new drafts.
5. At the end, the ``k`` best of finished + live drafts by score are returned, best first.

``SuperposedDrafts`` keeps the steps as back-pointers (parent draft, token, score per draft), so a step whose token
the engine discards (a partial prefill, a recomputation) is simply redone: ``step(s, ...)`` first drops every step
>= ``s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

# The reference's default configuration (params/p15_d3_mixed.json): alpha 0.54, temperature 0.06, 9 candidates,
# interpolation weights 0.01..0.12 for context lengths 1..5, penalty 200.
DEFAULT_ALPHA = 0.54
DEFAULT_SOFTMAX_TEMPERATURE = 0.06
DEFAULT_N_TOKEN_SAMPLE = 9
DEFAULT_NGRAM_WEIGHTS = (0.01, 0.04, 0.15, 0.18, 0.12)
DEFAULT_PENALTY = 200.0
_LOG_ZERO = -1e4  # log(0) stand-in: keeps arithmetic finite (no NaN), far below any real score


@dataclass
class Step:
    """One decoding step: for each new draft, its parent among the previous drafts, its new token and its score."""

    parents: list[int]
    tokens: list[int]
    scores: list[float]
    weights: list[float]  # superposition weights of the new drafts (their input embedding mix at this position)
    finished: list[tuple[float, int, int]] = field(default_factory=list)  # (score, parent draft, EOS token)


class SuperposedDrafts:
    """The k drafts of one request. ``ngram(context, candidates) -> scores`` is the interpolated n-gram model, or
    None to decode without the filter (alpha is then ignored)."""

    def __init__(self, k: int, prompt_ids: Sequence[int], eos_token_id: int | None, *, alpha: float = DEFAULT_ALPHA,
                 softmax_temperature: float = DEFAULT_SOFTMAX_TEMPERATURE,
                 n_token_sample: int = DEFAULT_N_TOKEN_SAMPLE, penalty: float = DEFAULT_PENALTY, ngram=None) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = k
        self.prompt_ids = list(prompt_ids)
        self.eos = eos_token_id
        self.alpha = alpha
        self.temperature = softmax_temperature
        self.n_token_sample = max(n_token_sample, 2 * k)  # the first step keeps draft 0's top 2k tokens
        self.penalty = penalty
        self.ngram = ngram
        self.steps: list[Step] = []

    # ------------------------------------------------------------------------------------------------ drafts
    def draft(self, index: int, upto: int | None = None, tail: int | None = None) -> list[int]:
        """Tokens of live draft ``index`` after ``upto`` steps (default: all), the last ``tail`` only if given."""
        n = len(self.steps) if upto is None else upto
        out: list[int] = []
        d = index
        for s in range(n - 1, -1, -1):
            step = self.steps[s]
            out.append(step.tokens[d])
            d = step.parents[d]
            if tail is not None and len(out) >= tail:
                break
        out.reverse()
        return out

    def _context(self, index: int, length: int) -> list[int]:
        gen = self.draft(index, tail=length)
        if len(gen) < length:
            gen = self.prompt_ids[-(length - len(gen)):] + gen
        return gen

    # ------------------------------------------------------------------------------------------------ one step
    def step(self, s: int, logits: torch.Tensor) -> Step:
        """Extend the drafts from the next-token logits of superposed position ``s`` (``s`` steps done before)."""
        del self.steps[s:]
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        top_p, top_t = torch.topk(probs, min(self.n_token_sample, probs.numel()))
        top_p = top_p / top_p.sum()
        llm_log = torch.log(top_p).clamp_min(_LOG_ZERO).double()
        tokens = top_t.tolist()
        n_live = 1 if s == 0 else self.k
        prev_scores = [0.0] if s == 0 else self.steps[s - 1].scores
        rows = []
        for d in range(n_live):
            rows.append(self._draft_log_probs(d, s, tokens, llm_log))
        cand = torch.stack(rows) + torch.tensor(prev_scores[:n_live], dtype=torch.float64).unsqueeze(1)
        flat = cand.flatten()
        order = torch.argsort(flat, descending=True, stable=True)[: 2 * self.k].tolist()
        live: list[tuple[float, int, int]] = []
        finished: list[tuple[float, int, int]] = []
        for idx in order:
            d, j = divmod(idx, len(tokens))
            entry = (float(flat[idx]), d, tokens[j])
            (finished if tokens[j] == self.eos else live).append(entry)
        live = live[: self.k]
        while len(live) < self.k:  # fewer candidates than drafts (tiny vocabularies): repeat the last one
            live.append((live[-1][0] + _LOG_ZERO, live[-1][1], live[-1][2]))
        scores = [e[0] for e in live]
        top = max(scores)
        w = [math.exp(x - top) for x in scores]
        total = sum(w)
        step = Step(parents=[e[1] for e in live], tokens=[e[2] for e in live], scores=scores,
                    weights=[x / total for x in w], finished=finished)
        self.steps.append(step)
        return step

    def _draft_log_probs(self, d: int, s: int, tokens: list[int], llm_log: torch.Tensor) -> torch.Tensor:
        if self.ngram is None or self.alpha == 0:
            return llm_log
        ng = torch.as_tensor(self.ngram(self._context(d, 8) if s else self.prompt_ids[-8:], tokens),
                             dtype=torch.float64)
        if not bool((ng > 0).any()):
            return (1 - self.alpha) * llm_log - self.penalty
        ng_log = torch.log(ng).clamp_min(_LOG_ZERO)
        return (1 - self.alpha) * llm_log + self.alpha * ng_log

    # ------------------------------------------------------------------------------------------------ results
    def all_finished(self) -> bool:
        """True when k finished drafts outrank every live draft (scores only fall, so none can catch up)."""
        fin = sorted((f[0] for st in self.steps for f in st.finished), reverse=True)
        return bool(self.steps) and len(fin) >= self.k and fin[self.k - 1] >= max(self.steps[-1].scores)

    def completions(self) -> list[tuple[list[int], float, bool]]:
        """The k best of finished + live drafts, best first: (tokens, score, ended with EOS)."""
        pool: list[tuple[float, list[int], bool]] = []
        for s, st in enumerate(self.steps):
            for score, parent, eos in st.finished:
                pool.append((score, (self.draft(parent, upto=s) if s else []) + [eos], True))
        if self.steps:
            for d, score in enumerate(self.steps[-1].scores):
                pool.append((score, self.draft(d), False))
        pool.sort(key=lambda e: e[0], reverse=True)
        return [(toks, score, ended) for score, toks, ended in pool[: self.k]]

    def mixture(self, s: int) -> tuple[list[int], list[float]]:
        """Token ids and weights of the superposed input at generated position ``s``."""
        st = self.steps[s]
        return st.tokens, st.weights

    def placeholder(self) -> int:
        """The token the engine records for the request's row at the last step: draft 0's newest token (never EOS),
        or EOS once the finished drafts can no longer be overtaken."""
        if self.eos is not None and self.all_finished():
            return self.eos
        return self.steps[-1].tokens[0]
