"""Checks every speculative proposer's engine tests share: token-identical greedy output in a batch and at batch 1
(``check_greedy``), and the target distribution when sampling, with a deliberately biased verifier failing the same
test (``check_sampling``); ``run_with_stats`` adds the proposer's counters over a scenario."""

from __future__ import annotations

from engines import (counter_delta, drafter_stats, greedy_run, sample_run, sample_run_accepting_every_draft,
                     sample_run_with_biased_tree_rule)
from helpers import assert_lossless
from stats import homogeneity


def run_with_stats(llm, scenario, *args) -> dict:
    """``scenario(llm, *args)`` and the proposer's counters over it."""
    before = drafter_stats(llm)
    out = scenario(llm, *args)
    out["stats"] = counter_delta(drafter_stats(llm), before)
    return out


def check_greedy(vanilla, engine, name: str) -> dict:
    base = vanilla("spec_bench_reduced")
    out = engine.run(run_with_stats, greedy_run, base["prompts"], 64, 6)
    assert_lossless(out["token_ids"], base["token_ids"], out["spec"]["num_accepted_tokens"], f"{name}, batch")
    assert_lossless(out["single_token_ids"], base["single_token_ids"], out["single_spec"]["num_accepted_tokens"],
                    f"{name}, batch 1")
    return out["stats"]


def check_sampling(vanilla, engine, name: str, *, biased_control: bool, tree_rule=None,
                   reference: str = "stack_t1", control_samples: int | None = None) -> None:
    """Two-sample test (``stats.homogeneity``) of the tokens at positions 1-4 against vanilla over 2,000 samples
    (``reference``: temperature 1, or 0.7 with top-p 0.9). With ``biased_control`` the same engine with a biased
    verifier must fail it: for a chain proposer one that accepts every draft; for a tree proposer (``tree_rule``: the ``tree_sampling`` rule matching how it
    draws children) one that accepts every node's first child (the tree's "accept every draft"; accepting the
    target's argmax child first, as Token Recycling's test does, is too close to recursive rejection sampling over a
    good draft to show in 2,000 samples: RSD's statistic was 26.7 at most, p = 8e-4 > alpha), and every sampled
    request must have been verified as a tree. ``control_samples``: the biased run's sample count when fewer than the
    2,000 of the tested run are enough to show the bias (the test's power is what the control demonstrates)."""
    base = vanilla(reference)
    args = (base["prompt"], base["n"], base["temperature"], base["max_tokens"], base["top_p"])
    out = engine.run(run_with_stats, sample_run, *args)
    control_args = (base["prompt"], control_samples or base["n"], *args[2:])
    assert out["spec"]["num_accepted_tokens"] > 200, out["spec"]  # the verifier decided many drafts
    biased = None
    if biased_control and tree_rule is not None:
        biased = engine.run(run_with_stats, sample_run_with_biased_tree_rule, "first_child", tree_rule, *control_args)
    elif biased_control:
        biased = engine.run(sample_run_accepting_every_draft, *control_args)
    if tree_rule is not None:
        for run in (out, biased):  # sampled requests drafted as trees (the sampling tree verifier accepts them)
            assert run["stats"]["tree_drafts"] > 0 and run["stats"]["chain_drafts"] == 0, run["stats"]
    assert len(out["token_ids"]) == base["n"] == 2000
    controls = []
    for pos in (1, 2, 3, 4):  # token 0 is sampled before any draft
        fit = homogeneity([x[pos] for x in base["token_ids"]], [x[pos] for x in out["token_ids"]])
        print(f"{name} {reference} position {pos}: {fit}")
        assert fit.passes, (name, pos, str(fit))
        if biased is not None:
            controls.append(homogeneity([x[pos] for x in base["token_ids"]], [x[pos] for x in biased["token_ids"]]))
            print(f"{name} {reference} position {pos}, biased verifier: {controls[-1]}")
    # The test is "every position passes": the biased verifier must fail it (where the target is nearly certain, as
    # at position 1 of this prompt, a bias can be invisible).
    if biased is not None:
        assert any(not c.passes for c in controls), (name, [str(c) for c in controls])
