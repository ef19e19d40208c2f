"""Classifier-free guidance (CFG) as a contrastive row transform (pure torch, no vLLM import).

Paper: Guillaume Sanchez, Honglu Fan, Alexander Spangher, Elad Levi, Pawan Sasanka Ammanamanchi, Stella Biderman,
"Stay on topic with Classifier-Free Guidance", arXiv 2306.17806. Semantics and names are HF
transformers' (``generate(guidance_scale=g, negative_prompt_ids=...)``, ``UnbatchedClassifierFreeGuidance
LogitsProcessor`` in ``transformers/generation/logits_process.py``, read for this implementation, not copied)::

    scores = uncond + g * (cond - uncond)      (cond, uncond: log-softmax of the two streams' next-token logits)

applied before the sampling warpers. ``g = 1`` is plain decoding of the prompt (HF then skips the second stream;
here the companion row still runs and the mix returns the prompt's own log-probabilities: the same tokens).

Roles. The main request's prompt is the conditioned stream; ``negative_prompt`` is the unconditional one. An empty
``negative_prompt`` means HF's default: the unconditional stream starts from the prompt's last token alone
(``input_ids[:, -1:]`` on the first call) and grows with the generated tokens; the request-group seam builds that
companion row (``LogitsHook.empty_companion = "last_prompt_token"``).

``uncond + g * (cond - uncond) = g * cond + (1 - g) * uncond``: CAD's mix with ``alpha = g - 1``, so it is the
contrastive family's ``mix_logprobs`` with weights ``(g, 1 - g)`` (its masking rules apply: a token the prompt's row
rules out stays out at every ``g``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from declab.integrations.sdk.rows import RowContext
from declab.plugins.cfg.spec import NEGATIVE_PROMPT_PARAM
from declab.plugins.shared.contrastive import ContrastiveProcessor, mix_logprobs

DEFAULT_GUIDANCE_SCALE = 1.5


def cfg_logits(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """CFG: ``g * log p(y | prompt) + (1 - g) * log p(y | negative)`` (= ``uncond + g * (cond - uncond)``)."""
    return mix_logprobs(cond_logits, uncond_logits, guidance_scale, 1.0 - guidance_scale)


class CFGProcessor(ContrastiveProcessor):
    """One CFG request: guide the prompt's stream away from the ``negative_prompt`` stream by ``guidance_scale``."""

    companion = NEGATIVE_PROMPT_PARAM.name

    def __init__(self, params: Mapping[str, Any], prompt_ids: Sequence[int], output_ids: Sequence[int],
                 ctx: RowContext) -> None:
        super().__init__(params, prompt_ids, output_ids, ctx)
        self.guidance_scale = float(self.params.get("guidance_scale", DEFAULT_GUIDANCE_SCALE))
        if self.guidance_scale < 0:
            raise ValueError("guidance_scale must be >= 0")

    def contrast(self, main_logits: torch.Tensor, contrast_logits: torch.Tensor, step: int) -> torch.Tensor:
        return cfg_logits(main_logits, contrast_logits, self.guidance_scale)
