"""LOL (LOwer Layer Matters) and its training-free half as row transforms (pure torch; no vLLM import).

Paper 29: "Lower Layer Matters: Alleviating Hallucination via Multi-Layer Fusion Contrastive Decoding with
Truthfulness Refocused". Its code was announced ("coming soon") but not found; this follows the abstract and the
methods it builds on, fresh code:

* the amateur contrast of ICD (induce-then-contrast): ``(1 + alpha) * log p_orig - alpha * log p_amateur``, the
  amateur being the model fine-tuned to hallucinate (``amateur.py``), restricted to the adaptive plausibility set
  ``{y : p_orig(y) >= beta * max p_orig}`` of the original model's final layer;
* multi-layer fusion: the same contrast between the two models' *lower* layers (early-exit logits after
  ``lower_layer`` decoder layers, through the final norm and the vocabulary projection), added with weight
  ``lower_weight``::

      score(y) = [(1+a) log p_o^N(y) - a log p_a^N(y)] + w * [(1+a) log p_o^L(y) - a log p_a^L(y)]   on V_head

* ``mode="layers"``, the training-free part: the original model's final layer contrasted with its own lower layer
  (DoLa with a fixed premature layer): ``log p_o^N(y) - log p_o^L(y)`` on ``V_head``;
* ``mode="amateur"``: the final-layer amateur contrast alone (ICD; the LOL ablation without the lower layer).

Not built: the paper's "truthfulness refocused" module (contextual guidance that strengthens factual encoding);
the constants (which lower layer, the fusion weight) are this plugin's defaults, not the paper's.

Scores outside ``V_head`` are ``-inf`` (the top token of the original model is always inside), so greedy picks the
argmax of ``score`` and sampling draws from ``softmax(score)``, as the reference implementations of DoLa and ICD do.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Mapping, Sequence

import torch

from declab.integrations.sdk.rows import RowContext, RowProcessor

MODES = ("lol", "layers", "amateur")


def plausible(final_logprobs: torch.Tensor, beta: float) -> torch.Tensor:
    """The adaptive plausibility set: ``p(y) >= beta * max p`` (a bool mask; ``beta = 0`` keeps every token)."""
    if beta <= 0:
        return torch.isfinite(final_logprobs)
    return final_logprobs >= final_logprobs.max() + math.log(beta)


def contrast(orig_logprobs: torch.Tensor, amateur_logprobs: torch.Tensor, alpha: float) -> torch.Tensor:
    """ICD's amateur contrast: ``(1 + alpha) * log p_orig - alpha * log p_amateur``."""
    return (1.0 + alpha) * orig_logprobs - alpha * amateur_logprobs


def lol_scores(orig_final: torch.Tensor, orig_lower: torch.Tensor | None, amateur_final: torch.Tensor | None,
               amateur_lower: torch.Tensor | None, *, mode: str, alpha: float, lower_weight: float,
               beta: float) -> torch.Tensor:
    """The next-token scores of one row from the four logit rows (float32 ``[vocab]``; the ones a mode does not
    use may be None). Tokens outside the plausibility set of ``orig_final`` get ``-inf``."""
    of = torch.log_softmax(orig_final.float(), dim=-1)
    if mode == "layers":
        score = of - torch.log_softmax(orig_lower.float(), dim=-1)
    else:
        score = contrast(of, torch.log_softmax(amateur_final.float(), dim=-1), alpha)
        if mode == "lol" and lower_weight:
            score = score + lower_weight * contrast(torch.log_softmax(orig_lower.float(), dim=-1),
                                                    torch.log_softmax(amateur_lower.float(), dim=-1), alpha)
    keep = plausible(of, beta)
    return torch.where(keep & torch.isfinite(score), score, torch.full_like(score, float("-inf")))


class AmateurHolder:
    """The worker's one amateur model (loaded on the first LOL request that needs it)."""

    _lock = threading.Lock()
    _model = None

    @classmethod
    def get(cls, base_folder: str):
        with cls._lock:
            if cls._model is None:
                from declab.plugins.lol.amateur import load_amateur

                cls._model = load_amateur(base_folder)
            return cls._model


class LOLProcessor(RowProcessor):
    """One LOL request: the served model's final and early-exit rows (layer-capture seam), the amateur's from its own
    per-request cache, combined by ``lol_scores``."""

    def __init__(self, params: Mapping[str, Any], prompt_ids: Sequence[int], output_ids: Sequence[int],
                 ctx: RowContext) -> None:
        super().__init__(params, prompt_ids, output_ids, ctx)
        self.mode = str(self.params.get("mode", "lol"))
        if self.mode not in MODES:
            raise ValueError(f"declab.mode must be one of {list(MODES)}, got {self.mode!r}")
        self.alpha = float(self.params.get("alpha", 1.0))
        self.lower_weight = float(self.params.get("lower_weight", 0.5))
        self.beta = float(self.params.get("beta", 0.1))
        self.lower_layer = int(self.params.get("lower_layer", 4))
        self._cache = None

    def _layer(self, num_layers: int) -> int:
        # A lower_layer at or past the model's depth means its last lower layer (the range is checked at admission
        # without knowing the served model).
        return max(1, min(self.lower_layer, num_layers - 1))

    def _amateur_rows(self, capture, layer: int | None):
        amateur = AmateurHolder.get(capture.model_path)
        if self._cache is None:
            self._cache = amateur.new_cache()
        tokens = list(self.prompt_ids) + list(self.output_ids)
        new = self._cache.sync(tokens)
        if not new:  # the same position again (a recomputed step): re-encode the last token
            self._cache.truncate(len(tokens) - 1)
            new = tokens[-1:]
        out = amateur.forward([self._cache], [new], exit_layer=layer)
        lower = out.exit_logits[0] if out.exit_logits is not None else None
        return out.logits[0, : self.ctx.vocab_size], lower

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        from declab.integrations.sdk import early_exit

        capture = early_exit.current()
        layer = self._layer(capture.num_layers)
        needs_lower = self.mode == "layers" or (self.mode == "lol" and self.lower_weight != 0)
        orig_lower = capture.logits(self.batch_row, layer) if needs_lower else None
        amateur_final = amateur_lower = None
        if self.mode != "layers":
            amateur_final, amateur_lower = self._amateur_rows(capture, layer if self.mode == "lol" and needs_lower
                                                              else None)
        return lol_scores(logits, orig_lower, amateur_final, amateur_lower, mode=self.mode, alpha=self.alpha,
                          lower_weight=self.lower_weight, beta=self.beta).to(logits.dtype)
