"""SWIFT (``plugins/swift``) through a real vLLM engine (CPU, decoder-29m): the target drafting for itself with
sublayers skipped, on its own paged KV cache. Greedy output is token-identical to vanilla in a concurrent batch and
one request at a time; with no sublayer skipped the draft *is* the target, so (nearly) every draft is accepted,
which shows the kept layers read the right keys and values; the layer-set search runs and its best set drafts;
sampled requests keep the target distribution (point-mass drafts through vLLM's rejection sampler)."""

from __future__ import annotations

import pytest
from engines import greedy_run
from spec_checks import check_greedy, check_sampling

pytestmark = [pytest.mark.engine, pytest.mark.vanilla("spec_bench_reduced", "scale_out", "stack_t1")]


def _skip_nothing(worker, on: bool) -> None:
    """Test-only: draft with every sublayer (the target itself), the search paused; ``on=False`` restores."""
    drafter = worker.model_runner.drafter
    if on:
        drafter._saved = (drafter.fixed, drafter.search)
        drafter.fixed, drafter.search = frozenset(), None
    else:
        drafter.fixed, drafter.search = drafter._saved


def _skip_nothing_rpc(llm, on: bool) -> None:
    llm.collective_rpc(_skip_nothing, args=(on,))


def test_swift_greedy_is_token_identical_in_a_batch_and_alone(vanilla, swift_engine):
    stats = check_greedy(vanilla, swift_engine, "swift")
    assert stats["draft_forwards"] > 0 and stats["search_iterations"] > 0, stats
    assert len(stats["skip_sublayers"]) == 7, stats  # round(0.45 * 16) sublayers skipped
    assert stats["confidence_stops"] > 0, stats  # the default threshold 0.8 ends chains
    assert 0.3 < stats["draft_cost_of_target_forward"] < 1.0, stats  # the weights the skipped forward reads


def test_swift_with_no_sublayer_skipped_is_the_target(vanilla, swift_engine):
    """The draft reads the target's own keys and values for the context and writes its drafted positions into the
    request's slots: with nothing skipped it computes what the target computes, so every draft is accepted (the
    residual stream is summed in another order than vLLM's fused kernels: allow a near-tie or two)."""
    base = vanilla("scale_out")
    swift_engine.run(_skip_nothing_rpc, True)
    try:
        out = swift_engine.run(greedy_run, base["prompts"], 32)
    finally:
        swift_engine.run(_skip_nothing_rpc, False)
    assert out["token_ids"] == base["token_ids"]
    spec = out["spec"]
    assert spec["num_draft_tokens"] > 50, spec
    assert spec["num_accepted_tokens"] >= 0.99 * spec["num_draft_tokens"], spec


def test_swift_sampling_keeps_the_target_distribution_and_a_biased_verifier_does_not(vanilla, swift_engine):
    """2,000 samples at temperature 1 against vanilla's: SWIFT's drafts are point masses, accepted by vLLM's
    rejection sampler with probability p(x), so the layer-skipped drafting (its writes into the request's KV slots
    included) must leave the distribution unchanged; the same engine accepting every draft must fail."""
    check_sampling(vanilla, swift_engine, "swift", biased_control=True)
