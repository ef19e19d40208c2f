"""PEARL's serialised schedule (``declab.plugins.pearl.core``) driven by an exact greedy verifier with toy models:
the output is the target's greedy sequence whatever the draft, pre-verify hands over one token, post-verify the
window drafted ahead, and a perfect draft never returns to pre-verify."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from declab.plugins.pearl.core import POST, PRE, PearlSchedule, project_step_seconds

VOCAB = 7


def target_next(ctx: tuple[int, ...]) -> int:
    return (3 * ctx[-1] + len(ctx)) % VOCAB  # deterministic "greedy target"


def make_draft(error_rate: float, seed: int):
    rng = random.Random(seed)
    wrong = {}

    def draft_next(ctx: tuple[int, ...]) -> int:
        if ctx not in wrong:
            wrong[ctx] = rng.random() < error_rate
        return (target_next(ctx) + 1) % VOCAB if wrong[ctx] else target_next(ctx)

    return draft_next


def run(draft_next, window: int, k: int, length: int) -> tuple[list[int], list[tuple[str, int]]]:
    """An engine loop as vLLM runs it: verify the chain greedily (accepted prefix + the target's token), then let
    the schedule plan the next chain. Returns the generated tokens and (mode, chain length) per step."""
    ctx, steps, schedule = [0], [], PearlSchedule(window)
    committed = [target_next((0,))]  # the prefill step's token
    ctx += committed
    while len(ctx) < length:
        ahead = schedule.reconcile(committed)
        submit, count = schedule.plan(ahead, k)
        drafted, c = [], list(ctx) + submit
        for _ in range(count):
            drafted.append(draft_next(tuple(c)))
            c.append(drafted[-1])
        chain = schedule.hand_over(submit, drafted)[:k]
        steps.append((PearlSchedule.mode(ahead), len(chain)))
        committed = []
        for token in chain:  # greedy verification
            if token != target_next(tuple(ctx + committed)):
                break
            committed.append(token)
        committed.append(target_next(tuple(ctx + committed)))
        ctx += committed
    return ctx[1:length], steps


def greedy(length: int) -> list[int]:
    ctx = [0]
    while len(ctx) < length:
        ctx.append(target_next(tuple(ctx)))
    return ctx[1:]


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(1, 6), st.integers(0, 10**6))
def test_output_is_the_target_greedy_sequence_whatever_the_draft(error_rate, window, seed):
    tokens, steps = run(make_draft(error_rate, seed), window, k=window, length=80)
    assert tokens == greedy(80)
    for mode, n in steps:
        assert n == 1 if mode == PRE else 1 <= n <= window


def test_a_perfect_draft_stays_in_post_verify_and_a_useless_one_in_pre_verify():
    _, perfect = run(make_draft(0.0, 0), window=4, k=4, length=200)
    assert [m for m, _ in perfect[1:]] == [POST] * (len(perfect) - 1)
    # The target's own (bonus) token takes the window's first position each step: 4 tokens per forward, 3 of them
    # drafted (the first post-verify step has d3, d4 of the pre-verify window).
    assert [n for _, n in perfect[1:]] == [2] + [3] * (len(perfect) - 2)
    _, useless = run(make_draft(1.0, 0), window=4, k=4, length=50)
    assert {m for m, _ in useless} == {PRE}


def test_projection_overlaps_draft_and_verification():
    assert project_step_seconds(0.3, 1.0) == {"serial": 1.3, "overlapped": 1.0}
