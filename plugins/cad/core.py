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

The mix itself (log-probabilities, masking rules) is the contrastive family's shared ``mix_logprobs``
(``declab.plugins.shared.contrastive``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from declab.integrations.sdk.rows import RowContext
from declab.plugins.shared.contrastive import ContrastiveProcessor, mix_logprobs

DEFAULT_ALPHA = 0.5  # the paper's summarization setting (cnndm_1.5_-0.5); it uses 1.0 for knowledge conflicts
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
