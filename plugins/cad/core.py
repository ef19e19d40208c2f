"""Context-aware decoding (CAD) as a contrastive row transform (pure torch, no vLLM import).

Paper: Weijia Shi, Xiaochuang Han, Mike Lewis, Yulia Tsvetkov, Luke Zettlemoyer, Scott Wen-tau Yih, "Trusting Your
Evidence: Hallucinate Less with Context-aware Decoding", arXiv 2305.14739 (NAACL 2024), section 2 ("Context-aware
decoding"): the output distribution is the product-of-experts ``p(y|c,x) * (p(y|c,x) / p(y|x))^alpha``, written
there as::

    y_t ~ softmax[(1 + alpha) * logit(y_t | c, x, y_<t) - alpha * logit(y_t | x, y_<t)]

(the equation number was not checked against the PDF here). Reading-list paper 53 is the reproduction study of CAD
(Zhichao Xu, "Context-aware Decoding Reduces Hallucination in Query-focused Summarization", arXiv 2312.14335), which
uses the same formula. Both reference implementations apply it to the raw next-token logits before any sampling
warper and without a plausibility filter:

* xhan77/context-aware-decoding, ``group_decode_fileio.py``: each model's last-position logits times its weight
  (``1.5`` / ``-0.5`` for alpha 0.5 in ``cnndm_1.5_-0.5.jsonl``, ``2`` / ``-1`` for alpha 1 in ``nqswap_2_-1``),
  summed by an all-reduce; its optional top-p pre-filters default to 1.0 (off);
* zhichaoxu-shufe/context-aware-decoding-qfs, ``generation/utils.py`` (greedy and sample loops):
  ``logits * (alpha + 1) - null_logits * alpha``, then the usual logits processors / warpers.

This file is a fresh implementation of that rule, not a copy of either.

Roles. The main request's prompt is the conditioned input ``(c, x)`` (context + query); ``contrast_prompt`` is the
unconditioned input ``x`` (query without the context). ``alpha = 0`` is plain decoding of the main prompt.

Log-probabilities instead of logits. ``mix_logprobs`` combines the rows' log-softmax values, not their raw logits.
For a row, ``log_softmax(z) = z - logsumexp(z)`` differs from ``z`` by one constant, so
``(1+a)*lp_main - a*lp_contrast`` differs from ``(1+a)*z_main - a*z_contrast`` by one constant over the vocabulary:
the same softmax at every temperature, the same argmax, the same top-k / top-p / min-p sets. Working in
log-probabilities keeps the numbers bounded whatever offset the engine's logits carry.

Masked and degenerate rows (vLLM may put ``-inf`` on tokens, e.g. the padded tail of the vocabulary):

* a token that is ``-inf`` (or NaN) in the main row stays ``-inf``: the contrast never revives a token the
  request's own row ruled out;
* a token that is finite in the main row but ``-inf`` in the contrast row gets the main row's log-probability
  (the contrast row has no opinion about it; with weights ``(1+a, -a)`` summing to 1 this is the mix with the
  contrast value replaced by the main one) instead of an infinite boost;
* log-probabilities are floored at ``LOGP_FLOOR`` (-1e4, far below anything float32 softmax can resolve) so that
  large weights can never overflow to ``inf``;
* a main row with no finite value falls back to the contrast row's log-probabilities, and to zeros if that has
  none either: the result is never all ``-inf`` and never contains NaN or ``+inf``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from declab.integrations.sdk.rows import RowContext
from declab.plugins.shared.contrastive import ContrastiveProcessor

DEFAULT_ALPHA = 0.5  # the paper's summarization setting (cnndm_1.5_-0.5); it uses 1.0 for knowledge conflicts
LOGP_FLOOR = -1.0e4


def log_probs(row: torch.Tensor) -> torch.Tensor:
    """float32 log-softmax of a logits row with NaN read as ``-inf`` and ``+inf`` as the largest float32.

    Entries that are ``-inf`` stay ``-inf``; finite entries are floored at ``LOGP_FLOOR``. A row with no finite
    entry comes back all ``-inf`` (callers check ``isfinite(...).any()``).
    """
    x = torch.nan_to_num(row.float(), nan=float("-inf"), posinf=torch.finfo(torch.float32).max,
                         neginf=float("-inf"))
    finite = torch.isfinite(x)
    if not bool(finite.any()):
        return torch.full_like(x, float("-inf"))
    lp = torch.log_softmax(x, dim=-1)
    # x = -huge finite can give lp = -inf; keep the "finite in, finite out" rule with the floor.
    lp = torch.where(finite, lp.nan_to_num(nan=LOGP_FLOOR, neginf=LOGP_FLOOR).clamp_min(LOGP_FLOOR), lp)
    return lp


def mix_logprobs(main_logits: torch.Tensor, contrast_logits: torch.Tensor, w_main: float,
                 w_contrast: float) -> torch.Tensor:
    """``w_main * log p_main + w_contrast * log p_contrast`` with the masking rules of the module docstring.

    The contrastive methods here all use weights that sum to 1 (CAD ``(1+a, -a)``, LQCD ``(-a, 1+a)``, M3ID
    ``(1+w, -w)``); a contrast ``-inf`` is replaced by the main row's value, which for such weights leaves that
    token at its main log-probability.
    """
    lm = log_probs(main_logits)
    lc = log_probs(contrast_logits)
    main_ok = torch.isfinite(lm)
    if not bool(main_ok.any()):
        return lc if bool(torch.isfinite(lc).any()) else torch.zeros_like(lm)
    lc = torch.where(torch.isfinite(lc), lc, lm)
    out = w_main * lm + w_contrast * lc
    out = torch.where(main_ok, out, torch.full_like(out, float("-inf")))
    # Weights are bounded by the declared parameter ranges and |lp| <= 1e4, so this is a guard, not a path.
    return torch.nan_to_num(out, nan=float("-inf"), posinf=torch.finfo(torch.float32).max, neginf=float("-inf"))


def cad_logits(main_logits: torch.Tensor, contrast_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """CAD: ``(1 + alpha) * log p(y | c, x) - alpha * log p(y | x)`` (main = with context, contrast = without)."""
    return mix_logprobs(main_logits, contrast_logits, 1.0 + alpha, -alpha)


class CADProcessor(ContrastiveProcessor):
    """One CAD request: amplify what the context (main prompt) adds over the context-free ``contrast_prompt``."""

    def __init__(self, params: Mapping[str, Any], prompt_ids: Sequence[int], output_ids: Sequence[int],
                 ctx: RowContext) -> None:
        super().__init__(params, prompt_ids, output_ids, ctx)
        self.alpha = float(self.params.get("alpha", DEFAULT_ALPHA))
        if self.alpha < 0:
            raise ValueError("alpha must be >= 0")

    def contrast(self, main_logits: torch.Tensor, contrast_logits: torch.Tensor, step: int) -> torch.Tensor:
        return cad_logits(main_logits, contrast_logits, self.alpha)
