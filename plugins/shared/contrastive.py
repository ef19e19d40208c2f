"""Shared core of the contrastive plugins (CAD, LQCD, M3ID): pure torch, no vLLM import.

A contrastive request is decoded with a *companion row*: the same model on a second prompt (``contrast_prompt``:
the prompt without the context / with the neutral query / without the image), kept in lockstep with the main
request inside vLLM's batch (``declab.patches.contrastive_pairs``). Each step the router hands a
``ContrastiveProcessor`` both rows of logits; the processor returns the contrasted logits, the router draws the
token from them with the main request's sampling settings (``SamplingSettings``/``draw_token``) and forces that one
token on both rows, so both sequences grow by the same token.

A method implements only ``contrast(main_logits, contrast_logits, step)``; the formulas live in
``declab.plugins.<method>.core``.
"""

from __future__ import annotations

import torch

from declab.integrations.sdk.rows import RowProcessor
from declab.plugins.shared.contrastive_args import SamplingSettings


class ContrastiveProcessor(RowProcessor):
    """One contrastive request. ``contrast`` gets both rows' float32 logits ``[vocab]`` and returns new logits.

    ``step`` is the number of tokens generated so far (0 for the first token). Returned logits may be ``-inf``
    outside a plausible set but never all ``-inf``.
    """

    paired = True

    def contrast(self, main_logits: torch.Tensor, contrast_logits: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        # Never called for a paired row: the router calls ``contrast`` with both rows. A row whose companion is
        # missing this step keeps its logits; the pair scheduler discards that step's token.
        return logits


_MASK64 = (1 << 63) - 1


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends only on (seed, step): a seeded request draws the same token at the same position
    whatever the batch around it and however often the scheduler retried the step."""
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 1) & _MASK64)
    return g


def sampling_probs(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """The distribution a non-greedy draw uses (float32 ``[vocab]``, sums to 1), in vLLM's order
    (``vllm.v1.sample.sampler.Sampler.sample``): divide by the temperature, then min-p (a built-in argmax-invariant
    logits processor, relative to the top probability), then top-k (ties with the k-th value kept), then the top-p
    nucleus (``apply_top_k_top_p``: a token stays while the mass strictly more likely than it is below top_p; the
    most likely token always stays)."""
    scaled = logits.float() / settings.temperature
    if settings.min_p > 0.0:
        p0 = torch.softmax(scaled, dim=-1)
        scaled = scaled.masked_fill(p0 < settings.min_p * p0.max(), float("-inf"))
    if settings.top_k and 0 < settings.top_k < scaled.numel():
        kth = torch.topk(scaled, settings.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if settings.top_p < 1.0:
        # Rank by the logits (ties: lower token id first, as argmax): the most likely token is the greedy one even
        # where float32 probabilities tie.
        order = torch.sort(logits.float(), descending=True, stable=True).indices
        sorted_probs = probs[order]
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = before >= settings.top_p
        drop_sorted[0] = False
        probs = probs.clone()
        probs[order[drop_sorted]] = 0.0
    return probs / probs.sum()


def draw_token(logits: torch.Tensor, settings: SamplingSettings, step: int) -> int:
    """Pick the next token from ``logits`` (``[vocab]``) the way vLLM's sampler would for these settings.

    Greedy: argmax. Otherwise: draw from ``sampling_probs`` (temperature, min-p, top-k, top-p) with
    ``torch.multinomial`` (CPU), seeded by ``step_generator(seed, step)`` when the request has a seed.
    """
    logits = logits.float()
    if settings.greedy:
        return int(torch.argmax(logits))
    probs = sampling_probs(logits, settings)
    generator = step_generator(settings.seed, step) if settings.seed is not None else None
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def force_token(row: torch.Tensor, token: int) -> None:
    """Make ``token`` the only choice of this row (in place): every sampler mode then returns it."""
    row.fill_(float("-inf"))
    row[token] = 0.0
