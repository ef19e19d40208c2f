"""The draft-model proposers (PEARL, SpecDec++, RAPID; issue #14; the draft trees of RSD, SpecTr, DySpec, #15) through a real vLLM engine (CPU, decoder-29m as
target, ../shared/fixtures/draft-5m as draft): token-identical greedy output in a concurrent batch and at batch 1,
the target distribution at temperature 1 (a deliberately biased verifier fails the same test), each paper's
behaviour visible in its statistics, and bad settings refused at start-up naming the setting.

Engines: ``pearl`` (K=8, window 4), ``specdec_pp`` (K=8, threshold 0.7), ``rapid`` (K=4, draft context 64 tokens at their prompt positions),
``rsd`` / ``spectr`` / ``dyspec`` (24-node trees; sampled requests draft chains until a sampling tree verifier is
subscribed to the tree seam), compared with the session's vanilla references. ``declab bench spec`` runs every fitting Spec-Bench prompt.
"""

from __future__ import annotations

import pytest
from engines import MIXED_GREEDY_ROWS, EngineProfile, greedy_run, mixed_tree_batch, seeded_in_a_crowd
from helpers import assert_mixed_tree_batch
from profiles import draft_proposer
from spec_checks import check_greedy, check_sampling, run_with_stats

from declab.integrations.prompts import CODE_PROMPTS
from declab.integrations.sdk.tree_sampling import KSequentialRule, RecursiveRule

pytestmark = [pytest.mark.engine, pytest.mark.vanilla("spec_bench_reduced", "stack_t1")]


# -- PEARL ----------------------------------------------------------------------------------------------------------

def test_pearl_greedy_is_token_identical_and_switches_between_pre_and_post_verify(vanilla, pearl_engine):
    stats = check_greedy(vanilla, pearl_engine, "pearl")
    assert "/draft-5m-long-" in stats["draft_model"]  # the profile names the shipped delta draft (tests/profiles.py)
    assert stats["draft_name"] == "draft-5m-long"
    assert stats["pre_verify_steps"] > 0 and stats["post_verify_steps"] > 0, stats
    assert stats["draft_forwards"] > 0 and stats["drafted_tokens"] >= stats["handed_over_tokens"]


def test_pearl_sampling_keeps_the_target_distribution(vanilla, pearl_engine):
    check_sampling(vanilla, pearl_engine, "pearl", biased_control=True)


# -- SpecDec++ ------------------------------------------------------------------------------------------------------

def test_specdec_pp_greedy_is_token_identical_and_the_head_shortens_drafts(vanilla, specdec_pp_engine):
    stats = check_greedy(vanilla, specdec_pp_engine, "specdec_pp")
    assert stats["stopped_by_head"] > 0, stats
    assert stats["drafted_tokens"] < 8 * stats["draft_rows"], stats  # shorter than K on average


def test_specdec_pp_sampling_keeps_the_target_distribution(vanilla, specdec_pp_engine):
    check_sampling(vanilla, specdec_pp_engine, "specdec_pp", biased_control=True)


# -- RAPID ----------------------------------------------------------------------------------------------------------

def test_rapid_greedy_is_token_identical_with_a_shortened_draft_context(vanilla, rapid_engine):
    stats = check_greedy(vanilla, rapid_engine, "rapid")
    assert 0 < stats["draft_prompt_tokens"] < stats["prompt_tokens"], stats
    assert stats["keep_positions"] is True, stats


def test_rapid_sampling_keeps_the_target_distribution(vanilla, rapid_engine):
    check_sampling(vanilla, rapid_engine, "rapid", biased_control=True)


# -- draft trees: RSD, SpecTr, DySpec ------------------------------------------------------------------------------

def check_greedy_tree(vanilla, engine, name: str) -> None:
    stats = check_greedy(vanilla, engine, name)
    assert stats["tree_drafts"] > 0 and stats["chain_drafts"] == 0, stats  # greedy requests: trees, no chain
    assert stats["tree_nodes"] > stats["tree_depth_sum"], stats  # branched: more nodes than depth
    assert stats["tree_rounds"] < stats["tree_nodes"], stats  # several nodes per batched draft forward


def test_rsd_greedy_is_token_identical_with_trees_sampled_without_replacement(vanilla, rsd_engine):
    check_greedy_tree(vanilla, rsd_engine, "rsd")


def test_spectr_greedy_is_token_identical_with_k_drafts_as_one_tree(vanilla, spectr_engine):
    check_greedy_tree(vanilla, spectr_engine, "spectr")


def test_dyspec_greedy_is_token_identical_with_a_dynamic_tree(vanilla, dyspec_engine):
    check_greedy_tree(vanilla, dyspec_engine, "dyspec")


# Each draft tree's verification rule for the biased control (how the proposer draws children): RSD and DySpec draw
# without replacement, SpecTr its k chains i.i.d. Every test takes its engine as a fixture argument, which is how
# the session orders and shards engine tests (conftest._rank).
SAMPLING = pytest.mark.vanilla("stack_t1", "stack_t07_p09")
AT_T1_AND_T07_P09 = pytest.mark.parametrize("reference", ["stack_t1", "stack_t07_p09"])
# The tested runs draw 2,000 samples; the "first child" control fails by far with fewer. Measured with 1,000 control
# samples against these references (2026-12-01): chi-square statistic at position 1 of 248-276 at T = 1 and
# 954-1028 at T = 0.7 / top-p 0.9 (8 df; p < 1e-48), at least 36.2 at every position; 500 samples keep the
# statistic above about 0.6 of those. Each tree test spends about half as long on its control.
TREE_CONTROL_SAMPLES = 500


@SAMPLING
@AT_T1_AND_T07_P09
def test_rsd_sampling_keeps_the_target_distribution(vanilla, rsd_engine, reference):
    check_sampling(vanilla, rsd_engine, "rsd", biased_control=True, tree_rule=RecursiveRule(update_q=True),
                   reference=reference, control_samples=TREE_CONTROL_SAMPLES)


@SAMPLING
@AT_T1_AND_T07_P09
def test_spectr_sampling_keeps_the_target_distribution(vanilla, spectr_engine, reference):
    check_sampling(vanilla, spectr_engine, "spectr", biased_control=True, tree_rule=KSequentialRule(),
                   reference=reference, control_samples=TREE_CONTROL_SAMPLES)


@SAMPLING
@AT_T1_AND_T07_P09
def test_dyspec_sampling_keeps_the_target_distribution(vanilla, dyspec_engine, reference):
    check_sampling(vanilla, dyspec_engine, "dyspec", biased_control=True, tree_rule=RecursiveRule(update_q=True),
                   reference=reference, control_samples=TREE_CONTROL_SAMPLES)


def test_drafts_are_cut_to_what_max_tokens_leaves_room_for(vanilla, spectr_engine):
    """A request with r tokens left can use r - 1 drafts (``DeclabProposer.draft_room``): with ``max_tokens=2`` nothing
    is drafted after the prefill's token; with ``max_tokens=4`` the trees (24 nodes, 6 deep) are verified cut to
    the levels left (fewer draft tokens reach the target than were drafted). Outputs: vanilla's first tokens."""
    base = vanilla("spec_bench_reduced")
    prompts, expected = base["prompts"][:8], base["token_ids"][:8]
    two = spectr_engine.run(run_with_stats, greedy_run, prompts, 2)
    assert two["token_ids"] == [t[:2] for t in expected]
    assert two["stats"]["tree_drafts"] == 0 and two["spec"].get("num_draft_tokens", 0) == 0, (two["stats"], two["spec"])
    four = spectr_engine.run(run_with_stats, greedy_run, prompts, 4)
    assert four["token_ids"] == [t[:4] for t in expected]
    assert 0 < four["spec"]["num_draft_tokens"] < four["stats"]["tree_nodes"], (four["stats"], four["spec"])


def check_mixed_tree_batch(vanilla, engine) -> None:
    """Greedy and sampled tree rows, a logprob row and a penalty row (chains), two rows aborted midway: correct greedy
    outputs, finished sampled rows, no request or KV block left."""
    base = vanilla("spec_bench_reduced")
    assert_mixed_tree_batch(engine.run(mixed_tree_batch, base["prompts"][:8]), base["token_ids"], MIXED_GREEDY_ROWS)


def test_rsd_mixed_batch_finishes_correctly_and_frees_its_kv_blocks(vanilla, rsd_engine):
    check_mixed_tree_batch(vanilla, rsd_engine)


def test_spectr_mixed_batch_finishes_correctly_and_frees_its_kv_blocks(vanilla, spectr_engine):
    check_mixed_tree_batch(vanilla, spectr_engine)


def test_dyspec_mixed_batch_finishes_correctly_and_frees_its_kv_blocks(vanilla, dyspec_engine):
    check_mixed_tree_batch(vanilla, dyspec_engine)


def check_seeded_reproducible(engine) -> None:
    """Seeded sampled requests drafted and verified as trees (temperature 0.7, top-p 0.9) commit the same tokens in
    a batch of 8, alone, and interleaved with 8 unseeded greedy and sampled requests: the drafts come from the
    request's own generator, the verifier's draws from its own seed."""
    out = engine.run(seeded_in_a_crowd, list(CODE_PROMPTS[:8]), 24, 0.7, 0.9)
    assert out["single_token_ids"] == out["token_ids"][:2]
    assert out["crowd_token_ids"] == out["token_ids"]
    assert len({tuple(t) for t in out["token_ids"]}) > 1 and all(len(t) == 24 for t in out["token_ids"])


def test_rsd_seeded_requests_are_reproducible_whatever_the_batch(rsd_engine):
    check_seeded_reproducible(rsd_engine)


def test_spectr_seeded_requests_are_reproducible_whatever_the_batch(spectr_engine):
    check_seeded_reproducible(spectr_engine)


def test_dyspec_seeded_requests_are_reproducible_whatever_the_batch(dyspec_engine):
    check_seeded_reproducible(dyspec_engine)


# -- start-up errors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("plugin,k,settings,message", [
    ("pearl", 2, {"window": 4}, "pearl.window (4) must not exceed num_speculative_tokens (2)"),
    ("rapid", 4, {"draft_model": "/nonexistent/draft"}, "draft_model: '/nonexistent/draft' is not a model folder"),
    ("rsd", 8, {"branching": "3,x"}, "rsd.branching must be comma-separated integers"),
    # The shipped acceptance head reads draft-5m's hidden states; another draft is refused, not silently misread.
    ("specdec_pp", 4, {"draft_model": "draft-5m-long"}, "specdec_pp.head: "),
])
def test_bad_settings_fail_at_start_up_naming_the_setting(engine_startup_error, plugin, k, settings, message):
    failure = engine_startup_error(EngineProfile(f"{plugin}_bad_{next(iter(settings))}", plugins=plugin,
                                                 engine_kwargs=draft_proposer(plugin, k, **settings)))
    assert failure is not None
    assert message in failure.log, failure.log[-3000:]
