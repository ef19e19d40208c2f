"""Sampling the way vLLM's sampler would, for methods that choose a row's token themselves.

A request group (a request and its companion rows, ``GroupRowProcessor``) is decoded greedily by the engine over a
one-hot row: the group's processor picks the token from its own distribution with the main request's sampling
settings (``SamplingSettings``, moved into ``extra_args`` by the request-group seam) and ``force_token`` makes it the
only choice of every member row. Pure torch, no vLLM import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

# vLLM's threshold below which a temperature means greedy (vllm.sampling_params._SAMPLING_EPS).
GREEDY_EPS = 1e-5


@dataclass(frozen=True)
class SamplingSettings:
    """A request's own sampling settings, as a row processor sees them (``RowContext.sampling``). For a request
    group the engine decodes every row greedily over a one-hot row, so the main request's temperature / top-k /
    top-p / min-p / seed are applied by the group's processor (``draw_token``)."""

    temperature: float = 1.0
    top_k: int = 0  # 0 or -1: off
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p,
                "seed": self.seed}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SamplingSettings":
        return cls(**{k: d[k] for k in ("temperature", "top_k", "top_p", "min_p", "seed") if k in d})

    @classmethod
    def from_sampling_params(cls, sp: Any) -> "SamplingSettings":
        """From vLLM ``SamplingParams``."""
        return cls(temperature=float(sp.temperature), top_k=int(sp.top_k or 0), top_p=float(sp.top_p),
                   min_p=float(sp.min_p), seed=sp.seed)


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
