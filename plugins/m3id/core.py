"""Multi-Modal Mutual-Information Decoding (M3ID) as a contrastive row transform (pure torch, no vLLM import).

Paper: Alessandro Favero, Luca Zancato, Matthew Trager, Siddharth Choudhary, Pramuditha Perera, Alessandro Achille,
Ashwin Swaminathan, Stefano Soatto, "Multi-Modal Hallucination Control by Visual Information Grounding", CVPR 2024,
arXiv 2403.14003. Reading-list paper 1. No official code was found.

As more tokens are generated a VLM relies less on the image (the conditioning "fades"), so M3ID amplifies the
conditioned direction ``l_c - l_u`` (with / without the conditioning) with a weight that grows with the position,
and only where the conditioned model is unsure::

    gamma_t = exp(-lambda * t)                          t = 1 for the first generated token
    l_t     = l_c + 1[max_y p_c(y) < alpha] * ((1 - gamma_t) / gamma_t) * (l_c - l_u)

where ``l_c = log p(y | c, x, y_<t)`` and ``l_u = log p(y | x, y_<t)`` are the log-probabilities with and without
the conditioning ``c`` (the image), ``lambda`` the forgetting rate and ``alpha`` a confidence threshold on the
conditioned model's top probability. ``(1 - gamma_t) / gamma_t = exp(lambda * t) - 1`` starts near 0 and grows
exponentially. Source of this form and of the defaults: the paper body (its decoding rule and Algorithm 1) was not
available here; this is the rule as written by two independent re-implementations that agree on it
(``mitigv.algorithms.m3id``: "gamma_t = exp(-lambda*t), weight = (1-gamma_t)/gamma_t, l_c + 1[max p_c < alpha] *
weight * (l_c - l_u)", t = 1 for the first token following Algorithm 1, paper defaults alpha = 0.3 and lambda = 0.02
with scans {0.2, 0.3, 0.5} and {0.001, 0.02, 0.03}; and an adaptive-MI decoding study that writes
``l_hat = l_c + 1[max_k p_c(k) < alpha] * (1-gamma_t)/gamma_t * (l_c - l_u)``). Several hallucination-decoding code
bases (the AvisC family) use the same ``gamma_t = exp(-0.02 t)`` weight but replace the confidence gate with VCD's
plausibility cutoff (beta 0.1); that variant is not the paper's and is not offered. Equation numbers: unconfirmed.

Roles. The main prompt is the conditioned input (with the image or, in this text-only engine path, any
conditioning prefix such as a context passage); ``contrast_prompt`` is the unconditioned input. ``step`` (tokens
generated so far) maps to ``t = step + 1``. In the module's parameter names the paper's ``lambda`` is ``lam`` and
the paper's confidence threshold ``alpha`` is ``threshold`` (``alpha`` is the contrast strength in the other
contrastive plugins). ``lam = 0`` or ``threshold = 0`` is plain decoding of the main prompt.

Equivalently M3ID is CAD with a position-dependent strength ``a_t = gate_t * (exp(lam * t) - 1)``; it is computed
with the same masked log-probability mix as CAD (``declab.plugins.shared.contrastive.mix_logprobs``: ``-inf`` in the main row
stays ``-inf``, never all ``-inf``, no NaN). The weight is capped at ``MAX_WEIGHT`` (1e6) so that long generations
with a large ``lam`` cannot overflow; at that size the rule is already the pointwise mutual information
``l_c - l_u`` up to a vanishing ``l_c`` tie-breaker.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from declab.integrations.sdk.rows import RowContext
from declab.plugins.shared.contrastive import ContrastiveProcessor, log_probs, mix_logprobs

DEFAULT_LAM = 0.02  # forgetting rate lambda (paper default as reported by re-implementations)
DEFAULT_THRESHOLD = 0.3  # confidence threshold alpha on max_y p_c(y) (idem)
MAX_WEIGHT = 1.0e6


def m3id_weight(step: int, lam: float) -> float:
    """``(1 - gamma_t) / gamma_t = exp(lam * t) - 1`` with ``t = step + 1``, capped at ``MAX_WEIGHT``.

    Non-decreasing in ``step`` for ``lam >= 0``; 0 for ``lam = 0``.
    """
    if lam <= 0.0:
        return 0.0
    exponent = lam * (step + 1)
    if exponent >= math.log1p(MAX_WEIGHT):
        return MAX_WEIGHT
    return math.expm1(exponent)


def m3id_gate(conditioned_logits: torch.Tensor, threshold: float) -> bool:
    """The confidence gate ``max_y p_c(y) < threshold`` (False for a row with no finite logit)."""
    lp = log_probs(conditioned_logits)
    if threshold <= 0.0 or not bool(torch.isfinite(lp).any()):
        return False
    return float(lp.max()) < math.log(threshold)


def m3id_logits(conditioned_logits: torch.Tensor, unconditioned_logits: torch.Tensor, step: int,
                lam: float = DEFAULT_LAM, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """M3ID: ``l_c + 1[max p_c < threshold] * (exp(lam * t) - 1) * (l_c - l_u)``, ``t = step + 1``."""
    w = m3id_weight(step, lam) if m3id_gate(conditioned_logits, threshold) else 0.0
    return mix_logprobs(conditioned_logits, unconditioned_logits, 1.0 + w, -w)


class M3IDProcessor(ContrastiveProcessor):
    """One M3ID request: main = conditioned prompt, ``contrast_prompt`` = unconditioned prompt."""

    def __init__(self, params: Mapping[str, Any], prompt_ids: Sequence[int], output_ids: Sequence[int],
                 ctx: RowContext) -> None:
        super().__init__(params, prompt_ids, output_ids, ctx)
        self.lam = float(self.params.get("lam", DEFAULT_LAM))
        self.threshold = float(self.params.get("threshold", DEFAULT_THRESHOLD))
        if self.lam < 0:
            raise ValueError("lam must be >= 0")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1]")

    def contrast(self, main_logits: torch.Tensor, contrast_logits: torch.Tensor, step: int) -> torch.Tensor:
        return m3id_logits(main_logits, contrast_logits, step, self.lam, self.threshold)
