"""Shared core of the contrastive plugins (CAD, LQCD, M3ID, CFG): pure torch, no vLLM import.

A contrastive request is decoded with a *companion row*: the same model on a second prompt (``contrast_prompt``:
the prompt without the context / with the neutral query / without the image; CFG's ``negative_prompt``), kept in lockstep with the main
request inside vLLM's batch by the SDK's request-group seam. Each step the router hands the group's processor both
rows of logits; ``ContrastiveProcessor.choose`` contrasts them and draws the token with the main request's sampling
settings, and the router forces that one token on both rows, so both sequences grow by the same token.

A method implements only ``contrast(main_logits, contrast_logits, step)``; the formulas live in
``declab.plugins.<method>.core``; they share the mix ``mix_logprobs``.

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

from typing import Mapping

import torch

from declab.integrations.sdk.groups import ROLE_MAIN
from declab.integrations.sdk.rows import GroupRowProcessor
from declab.integrations.sdk.sampling import draw_token
from declab.plugins.shared.contrastive_args import CONTRAST_PROMPT_PARAM


class ContrastiveProcessor(GroupRowProcessor):
    """One contrastive request. ``contrast`` gets both rows' float32 logits ``[vocab]`` and returns new logits.

    ``step`` is the number of tokens generated so far (0 for the first token). Returned logits may be ``-inf``
    outside a plausible set but never all ``-inf``.
    """

    companion = CONTRAST_PROMPT_PARAM.name  # the parameter naming the companion row's prompt (its role)

    def contrast(self, main_logits: torch.Tensor, contrast_logits: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def choose(self, rows: Mapping[str, torch.Tensor], step: int) -> int:
        contrasted = self.contrast(rows[ROLE_MAIN], rows[self.companion], step)
        return draw_token(contrasted, self.settings, step)


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
    ``(1+w, -w)``, CFG ``(g, 1-g)``); a contrast ``-inf`` is replaced by the main row's value, which for such weights leaves that
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
