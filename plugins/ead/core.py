"""EAD's per-request switch between the draft and the target (pure Python: no torch, no vLLM).

Entropy Adaptive Decoding (reading list paper 10) generates with a small model and hands generation to the large
one while the *rolling entropy* (the mean of the last ``window`` next-token entropies, in nats, of whichever model
is active) is high, and back to the small one when it drops. ``EntropySwitch`` is that rule for one request:

* in ``DRAFT`` mode each drafted position's entropy is observed; if the rolling mean reaches the threshold
  (``>= threshold``) the token is *not* the draft's: the switch goes to ``TARGET`` and the target produces it;
* in ``TARGET`` mode each token the target produces is observed with its entropy; once the rolling mean falls
  below the threshold (``< threshold``) the next token is the draft's again.

The window is kept across switches (one rolling history per request, whichever model wrote it), so a switch back
needs the target to see enough low-entropy positions to outweigh the draft's high ones: the hysteresis that keeps
the switch from flapping. The comparisons are strict where it matters for the edge cases: ``threshold = 0`` never
drafts (every entropy is >= 0: plain target decoding), a threshold above ln(vocabulary) never hands over.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

DRAFT, TARGET = "draft", "target"


class EntropySwitch:
    """The rolling-entropy switch of one request: ``mode`` and the last ``window`` entropies."""

    def __init__(self, threshold: float, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.threshold = float(threshold)
        self.window = int(window)
        self.entropies: deque[float] = deque(maxlen=self.window)
        self.mode = DRAFT

    def rolling(self) -> float:
        """Mean of the window (0 while empty)."""
        return sum(self.entropies) / len(self.entropies) if self.entropies else 0.0

    def observe(self, entropy: float) -> str:
        """Record the active model's entropy at one position; return the mode for that position's token (in draft
        mode: ``TARGET`` means the draft must not write it) and, from then on, for the next ones."""
        self.entropies.append(float(entropy))
        mean = self.rolling()
        if self.mode == DRAFT and mean >= self.threshold:
            self.mode = TARGET
        elif self.mode == TARGET and mean < self.threshold:
            self.mode = DRAFT
        return self.mode


def reference_modes(entropies: Iterable[float], threshold: float, window: int) -> list[str]:
    """The naive reference: for each observed entropy, the mode after observing it, the rolling mean recomputed
    from the whole history every time (what ``EntropySwitch.observe`` returns, one call per entropy)."""
    history: list[float] = []
    mode, modes = DRAFT, []
    for e in entropies:
        history.append(float(e))
        last = history[-window:]
        mean = sum(last) / len(last)
        if mode == DRAFT:
            mode = TARGET if mean >= threshold else DRAFT
        else:
            mode = DRAFT if mean < threshold else TARGET
        modes.append(mode)
    return modes
