"""Leading Query Contrastive Decoding (LQCD) as a contrastive row transform (pure torch, no vLLM import).

Paper: Yunpu Zhao, Rui Zhang, Junbin Xiao, Changxin Ke, Ruibo Hou, Yifan Hao, Qi Guo, Yunji Chen, "Towards Analyzing
and Mitigating Sycophancy in Large Vision-Language Models", arXiv 2408.11261 (v1, August 2024; a later version is
retitled "Sycophancy in Vision-Language Models: A Systematic Analysis and an Inference-Time Mitigation Framework").
Reading-list paper 25. No official code was found. LQCD suppresses the tokens that a leading cue in the query adds
(e.g. "I think the answer is X") by contrasting the next-token distribution under the leading query ``x_l`` with the
one under a neutral version ``x_n`` of the same query (same image ``v``)::

    p_LQCD(y | v, x_n, x_l) = softmax[(1 + alpha) * logit(y | v, x_n) - alpha * logit(y | v, x_l)]

i.e. the neutral query is amplified and the leading query is subtracted. Source of this exact form: the paper body
was not available here; the formula is the one the sycophancy survey (Malmqvist, "Sycophancy in Large Language
Models: Causes and Mitigations", arXiv 2411.15287, section on decoding strategies) quotes for LQCD, citing this
paper. It is the visual-contrastive-decoding (VCD) template with the two queries as the contrasted inputs.
Not confirmed: the equation number, the paper's default alpha, and whether the paper also applies VCD's adaptive
plausibility constraint (keep only tokens with ``p(y | v, x_n) >= beta * max_w p(w | v, x_n)``); this module offers
that constraint as ``beta`` with default 0 (off), so the default is the bare formula above.

Roles in this engine. The request is what the user asked, so the MAIN prompt is the leading query ``x_l`` and
``contrast_prompt`` is the neutral query ``x_n``. With ``a = alpha``::

    out = (1 + a) * log p(y | x_n) - a * log p(y | x_l)  =  (1 + a) * log p_contrast - a * log p_main

so ``alpha = 0`` decodes the *neutral* prompt (not the leading one): LQCD at alpha 0 answers as if the cue had never
been given, and alpha > 0 pushes further away from whatever the cue adds. (CAD, by contrast, amplifies the main row.)
Log-probabilities replace logits (one constant per row: the same distribution; see ``declab.plugins.cad.core``);
tokens ``-inf`` in the main row stay ``-inf``, a contrast ``-inf`` leaves the main value, and the result is never
all ``-inf``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from declab.integrations.sdk.rows import RowContext
from declab.plugins.shared.contrastive import ContrastiveProcessor, log_probs, mix_logprobs

DEFAULT_ALPHA = 0.5  # the project's setting (issue 4); the paper's own default could not be confirmed
DEFAULT_BETA = 0.0  # plausibility constraint off (not confirmed to be part of LQCD)


def plausibility_mask(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """Adaptive plausibility constraint (Li et al. 2023; VCD): True where ``p(y) >= beta * max p``.

    ``beta = 0`` keeps every token with a finite logit. The most likely token always stays.
    """
    lp = log_probs(logits)
    finite = torch.isfinite(lp)
    if beta <= 0.0 or not bool(finite.any()):
        return finite
    cutoff = float(lp.max()) + math.log(beta)
    return finite & (lp >= cutoff)


def lqcd_logits(leading_logits: torch.Tensor, neutral_logits: torch.Tensor, alpha: float,
                beta: float = DEFAULT_BETA) -> torch.Tensor:
    """LQCD: ``(1 + alpha) * log p(y | x_n) - alpha * log p(y | x_l)``; main = leading, contrast = neutral.

    With ``beta > 0`` tokens below ``beta`` times the neutral row's top probability are set to ``-inf`` (unless
    that would remove every finite token, in which case the constraint is skipped).
    """
    out = mix_logprobs(leading_logits, neutral_logits, -alpha, 1.0 + alpha)
    if beta > 0.0:
        keep = plausibility_mask(neutral_logits, beta) & torch.isfinite(out)
        if bool(keep.any()):
            out = torch.where(keep, out, torch.full_like(out, float("-inf")))
    return out


class LQCDProcessor(ContrastiveProcessor):
    """One LQCD request: the main prompt is the leading query, ``contrast_prompt`` the neutral one."""

    def __init__(self, params: Mapping[str, Any], prompt_ids: Sequence[int], output_ids: Sequence[int],
                 ctx: RowContext) -> None:
        super().__init__(params, prompt_ids, output_ids, ctx)
        self.alpha = float(self.params.get("alpha", DEFAULT_ALPHA))
        self.beta = float(self.params.get("beta", DEFAULT_BETA))
        if self.alpha < 0:
            raise ValueError("alpha must be >= 0")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError("beta must be in [0, 1]")

    def contrast(self, main_logits: torch.Tensor, contrast_logits: torch.Tensor, step: int) -> torch.Tensor:
        return lqcd_logits(main_logits, contrast_logits, self.alpha, self.beta)
