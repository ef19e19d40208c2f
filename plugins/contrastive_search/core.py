"""Contrastive search (Su et al. 2022), the pure step (torch only, no vLLM).

At each step the ``k`` most probable next tokens ``v`` of the model's distribution ``p`` are candidates, each scored

    score(v) = (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j)

with ``h_v`` the last-layer hidden state (after the final norm) of the sequence extended by ``v``, and ``h_j`` the
hidden states of every earlier token of the context, the prompt included. The best score wins; ties go to the
more probable candidate (``torch.argmax`` returns the first maximum; candidates are in descending probability).
``alpha = 0`` is greedy decoding; ``k = 1`` too.

``ContextStates`` keeps one request's ``h_j`` (unit vectors, one per position), ``candidates`` draws the
``k`` candidates from a logits row, ``choose`` scores them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Candidates:
    """The ``k`` candidates of one step: token ids and their probabilities, most probable first."""

    token_ids: list[int]
    probs: torch.Tensor  # [k] float32


def candidates(logits: torch.Tensor, k: int) -> Candidates:
    """Top-``k`` of ``softmax(logits)`` (one row, float32)."""
    probs, ids = torch.softmax(logits.float(), dim=-1).topk(k)
    return Candidates(ids.tolist(), probs)


def choose(cands: Candidates, cand_hidden: torch.Tensor, context_hidden: torch.Tensor, alpha: float) -> int:
    """Index (into ``cands``) of the winner. ``cand_hidden``: ``[k, H]``; ``context_hidden``: ``[T, H]``, unit rows
    (``ContextStates.view``), ``T >= 1``."""
    penalty = (F.normalize(cand_hidden.float(), dim=-1) @ context_hidden.T).max(dim=-1).values
    score = (1.0 - alpha) * cands.probs - alpha * penalty
    return int(score.argmax())


class ContextStates:
    """One request's context hidden states by position (unit vectors), grown as positions are computed."""

    def __init__(self, hidden_size: int, capacity: int = 256) -> None:
        self._rows = torch.empty((capacity, hidden_size), dtype=torch.float32)
        self.length = 0  # positions 0 .. length - 1 are known

    def put(self, start: int, hidden: torch.Tensor) -> None:
        """Hidden states of positions ``start .. start + len(hidden) - 1``; positions already known are kept (the
        state a token had when it was chosen, as in the reference), so only ``start <= length`` is accepted."""
        if start > self.length:
            raise ValueError(f"hidden states from position {start} leave a gap after {self.length} known positions")
        new = hidden[self.length - start:]
        end = self.length + new.shape[0]
        if end > self._rows.shape[0]:
            grown = torch.empty((max(end, 2 * self._rows.shape[0]), self._rows.shape[1]), dtype=torch.float32)
            grown[: self.length] = self._rows[: self.length]
            self._rows = grown
        self._rows[self.length : end] = F.normalize(new.float(), dim=-1)
        self.length = end

    def view(self, length: int) -> torch.Tensor:
        """The first ``length`` positions."""
        if length > self.length:
            raise ValueError(f"{length} context positions asked, {self.length} known")
        return self._rows[:length]
