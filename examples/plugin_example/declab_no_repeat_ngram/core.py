"""No-repeat n-gram blocking as a per-request row transform (pure torch, no vLLM import).

Rule (HF transformers, ``NoRepeatNGramLogitsProcessor``, re-implemented here): with ``n = ngram_size`` and the
sequence ``s`` = prompt + output so far, every token ``v`` such that ``s[-(n-1):] + [v]`` already occurs in ``s``
gets ``-inf``. ``banned_tokens_naive`` states it directly (a scan of all n-grams per step); ``NGramIndex`` keeps the
same answer incrementally (each step indexes only the n-grams the new tokens complete) and rebuilds itself if the
sequence ever shrinks (a rolled-back step). A row whose every finite token would be banned is returned unchanged:
a processor must never return an all ``-inf`` row.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from declab.integrations.sdk import RowContext, RowProcessor


def banned_tokens_naive(tokens: Sequence[int], n: int) -> set[int]:
    """Reference: the tokens that would repeat an n-gram of ``tokens``."""
    if len(tokens) < n - 1:
        return set()
    prefix = tuple(tokens[len(tokens) - (n - 1):]) if n > 1 else ()
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == prefix}


class NGramIndex:
    """(n-1)-gram -> the tokens that followed it, over a growing sequence."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.following: dict[tuple[int, ...], set[int]] = {}
        self.indexed = 0  # tokens of the sequence whose n-grams (ending there) are indexed

    def banned(self, tokens: Sequence[int]) -> set[int]:
        if len(tokens) < self.indexed:  # the sequence was rolled back: rebuild
            self.following.clear()
            self.indexed = 0
        n = self.n
        for end in range(max(self.indexed, n - 1), len(tokens)):
            self.following.setdefault(tuple(tokens[end - n + 1:end]), set()).add(tokens[end])
        self.indexed = len(tokens)
        if len(tokens) < n - 1:
            return set()
        return self.following.get(tuple(tokens[len(tokens) - n + 1:]) if n > 1 else (), set())


class NoRepeatNGramProcessor(RowProcessor):
    def __init__(self, params: Mapping[str, Any], prompt_ids: Sequence[int], output_ids: Sequence[int],
                 ctx: RowContext) -> None:
        super().__init__(params, prompt_ids, output_ids, ctx)
        self.index = NGramIndex(int(self.params["ngram_size"]))
        self.prompt = list(prompt_ids)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        banned = self.index.banned(self.prompt + list(self.output_ids))
        if not banned:
            return logits
        ids = torch.tensor(sorted(banned), dtype=torch.long, device=logits.device)
        keep = torch.isfinite(logits)
        keep[ids] = False
        if not bool(keep.any()):
            return logits  # everything would be banned: leave the row as the model gave it
        logits[ids] = float("-inf")
        return logits
