"""Speculative Jacobi decoding's window (pure torch, no vLLM).

Paper: Yao Teng, Han Shi, Xian Liu, Xuefei Ning, Guohao Dai, Yu Wang, Zhenguo Li, Xihui Liu, "Accelerating
Auto-regressive Text-to-Image Generation with Training-free Speculative Jacobi Decoding", arXiv 2410.01699 (2024);
reading list paper 34. Fresh implementation from the paper's description.

Jacobi decoding guesses a window of the next K tokens and refines the whole window with one target pass per
iteration; a position's new guess is drawn from the target's distribution there, computed on the previous guesses of
the positions before it. SJD makes it lossless for *sampling*: the guess ``x`` at a position was drawn from a
distribution ``q`` (the previous iteration's), the target now gives ``p`` there conditioned on the accepted prefix,
and ``x`` is accepted with probability ``min(1, p(x)/q(x))``; at the first rejection a token is drawn from the
residual ``norm(max(0, p - q))`` and the rest of the window is re-guessed. This is speculative sampling's rule, so
the committed tokens follow the target distribution exactly. vLLM's rejection sampler implements that rule when it
receives the draft distributions; the engine adapter hands them over (``proposer.py``).

``JacobiWindow`` holds, per request, the distributions of the previous iteration past the accepted prefix
(``carry``) and draws the next window from them (``draw``): stale rows first, then new positions initialised with
random tokens (the paper's default; point masses ``q = onehot``, which the same rule accepts exactly).
"""

from __future__ import annotations

import torch

__all__ = ["JacobiWindow", "stale_rows"]


def stale_rows(rows: torch.Tensor, accepted: int) -> torch.Tensor:
    """The rows of a request's verified block that the next iteration reuses.

    ``rows``: the target's logits ``[1 + d, V]`` at the request's root and its ``d`` drafts (row ``j`` predicts the
    position after draft ``j``); ``accepted``: drafts accepted. Row ``accepted`` gave the committed bonus token; rows
    ``accepted + 1 ..`` predicted the positions after it on the previous guesses: the previous Jacobi iteration."""
    return rows[accepted + 1 :]


class JacobiWindow:
    """One request's Jacobi state: the stale logits of the previous iteration (``[n, V]``, n <= K)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = int(vocab_size)
        self.stale = torch.empty((0, self.vocab_size))

    def carry(self, rows: torch.Tensor, accepted: int) -> None:
        self.stale = stale_rows(rows, accepted).detach().float()[:, : self.vocab_size].clone()

    def draw(self, k: int, temperature: float, generator: torch.Generator, init: str = "random"
             ) -> tuple[list[int], torch.Tensor]:
        """The next window: ``(tokens, q)`` with ``q`` ``[k, V]`` the distribution each token was drawn from.

        Stale positions: ``q = softmax(logits / T)`` sampled (``T <= 0``: the argmax, ``q`` one-hot); new positions:
        uniform random tokens (``init="random"``) or the last token repeated (``"repeat"``), ``q`` one-hot."""
        n = min(k, self.stale.shape[0])
        q = torch.zeros((k, self.vocab_size))
        tokens: list[int] = []
        if n:
            logits = self.stale[:n]
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                drawn = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                q[:n] = probs
            else:
                drawn = logits.argmax(dim=-1)
                q[torch.arange(n), drawn] = 1.0
            tokens = drawn.tolist()
        for i in range(n, k):
            if init == "repeat" and tokens:
                t = tokens[-1]
            else:
                t = int(torch.randint(self.vocab_size, (1,), generator=generator))
            tokens.append(t)
            q[i, t] = 1.0
        return tokens, q
