"""PEARL's per-request schedule, serialised for an engine that runs the drafter after the target (pure Python).

Liu et al., "PEARL: Parallel Speculative Decoding with Adaptive Draft Length" (arXiv 2408.11850), Sec. 3. With a
window of gamma tokens the paper runs draft and target at the same time:

* **pre-verify** (after a rejection): the draft writes d1..d_gamma while the target verifies d1 alone, so a wrong
  first token costs one target forward and no wasted window;
* **post-verify** (while drafts are accepted): the target verifies the window the draft wrote during the previous
  forward, while the draft already writes the next window after it. If the whole window is accepted, the next
  window is ready and the draft never waits; otherwise it is discarded and the schedule returns to pre-verify.

So the number of draft tokens per target forward adapts: 1 after a rejection, a whole window while the draft is
right. In vLLM each engine step is one target forward that verifies one chain and commits the accepted drafts plus
a bonus token from the target; ``PearlSchedule`` maps PEARL onto that: what the target verifies this step
(``submit``) and what the draft writes ahead of it (``pending``), with ``reconcile`` deciding after the step whether
the window written ahead is still a continuation of what the target committed (the bonus token included).
Acceptance is the engine's (vLLM's rejection sampler), so the output is the target's.

``project_step_seconds`` is the timeline of one step with the overlap (``max`` of draft and verification time)
against the serial one (their sum): the speed-up PEARL's parallelism would add on hardware that runs the two models
concurrently. A projection, not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

PRE, POST = "pre_verify", "post_verify"


@dataclass
class PearlSchedule:
    """One request's PEARL state: the chain handed to the target last step and the window drafted after it."""

    window: int
    submitted: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)

    def reconcile(self, committed_since: Sequence[int]) -> list[int]:
        """The tokens the target committed since the last hand-over (accepted drafts + its own token) -> the part of
        the drafted continuation that still follows them ([] after a rejection: back to pre-verify)."""
        chain = self.submitted + self.pending
        n = len(committed_since)
        ahead = chain[n:] if n <= len(chain) and list(committed_since) == chain[:n] else []
        self.submitted, self.pending = [], []
        return ahead

    @staticmethod
    def mode(ahead: Sequence[int]) -> str:
        return POST if ahead else PRE

    def plan(self, ahead: Sequence[int], budget: int) -> tuple[list[int], int]:
        """(tokens handed to the target before drafting, tokens the draft writes after them). Post-verify hands
        over the window written ahead and drafts the next one; pre-verify drafts a window and hands over its first
        token (``hand_over`` then takes it)."""
        if ahead:
            return list(ahead[:budget]), self.window
        return [], self.window

    def hand_over(self, ahead_submitted: list[int], drafted: list[int]) -> list[int]:
        """Record the step: post-verify submits ``ahead_submitted`` and keeps ``drafted`` as the next window;
        pre-verify submits ``drafted[:1]`` and keeps the rest. Returns the chain for the target."""
        if ahead_submitted:
            self.submitted, self.pending = ahead_submitted, list(drafted)
        else:
            self.submitted, self.pending = list(drafted[:1]), list(drafted[1:])
        return list(self.submitted)


def project_step_seconds(draft_seconds: float, verify_seconds: float) -> dict[str, float]:
    """One step's time serial (vLLM: draft after target) and overlapped (PEARL: draft during target)."""
    return {"serial": draft_seconds + verify_seconds, "overlapped": max(draft_seconds, verify_seconds)}
