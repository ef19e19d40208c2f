"""Token Recycling through a real vLLM engine (CPU, decoder-29m): lossless greedy, distribution-preserving sampling,
loud configuration errors. The bench (`declab bench spec`) runs all 480 Spec-Bench prompts; CI runs a reduced set.

Engines: ``tr_chain`` (K=6) and ``tr_tree`` (the paper's 80-node tree, verified inside the engine), compared with
the session's vanilla references; start-up checks in short-lived hosts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from engines import (MIXED_GREEDY_ROWS, EngineProfile, counter_delta, greedy_run, mixed_tree_batch, sample_run,
                     sample_run_unpatched_kernel, sample_run_with_biased_tree_rule, seeded_in_a_crowd)
from helpers import assert_lossless, assert_mixed_tree_batch
from profiles import TR_TREE, token_recycling
from stats import homogeneity

from declab.integrations.prompts import CODE_PROMPTS

pytestmark = [pytest.mark.engine, pytest.mark.vanilla("spec_bench_reduced")]
TR_ENV = {"DECLAB_PLUGINS": "token_recycling"}
TREE_ENV = {**TR_ENV, "DECLAB_TOKEN_RECYCLING": TR_TREE}
STATS_ENV = "DECLAB_TOKEN_RECYCLING_STATS"  # where the proposer writes its statistics (tree / chain drafts, ...)


@pytest.fixture(scope="session")
def greedy_runs(vanilla, tr_chain_engine):
    base = vanilla("spec_bench_reduced")
    tr = tr_chain_engine.run(greedy_run, base["prompts"], 64, 6)
    return base["prompts"], base, tr


def test_greedy_is_token_identical_in_a_concurrent_batch(greedy_runs):
    prompts, vanilla, tr = greedy_runs
    assert len(vanilla["token_ids"]) == len(prompts)
    assert_lossless(tr["token_ids"], vanilla["token_ids"], tr["spec"]["num_accepted_tokens"], "chain, batch")


def test_greedy_is_token_identical_at_batch_1(greedy_runs):
    _, vanilla, tr = greedy_runs
    assert len(vanilla["single_token_ids"]) == 6
    assert_lossless(tr["single_token_ids"], vanilla["single_token_ids"], tr["single_spec"]["num_accepted_tokens"],
                    "chain, batch 1")


def _write_stats(worker) -> None:
    worker.model_runner.drafter.write_stats()  # the Token Recycling proposer (vLLM's name for a runner's proposer)


def proposer_stats(llm) -> dict:
    """The proposer's statistics as the stats file receives them, written now (it writes every 16 steps)."""
    llm.collective_rpc(_write_stats)
    return json.loads(Path(os.environ[STATS_ENV]).read_text())


def tree_greedy(llm, prompts: list[str]) -> dict:
    """The vanilla reference's greedy run in tree mode, with the proposer's statistics over it."""
    before = proposer_stats(llm)
    out = greedy_run(llm, prompts, 64, 6)
    out["stats"] = counter_delta(proposer_stats(llm), before)
    return out


@pytest.fixture(scope="session")
def tree_runs(vanilla, tr_tree_engine):
    """Stage 2: the paper's whole 80-node tree verified inside the engine, on the same prompts."""
    base = vanilla("spec_bench_reduced")
    tree = tr_tree_engine.run(tree_greedy, base["prompts"])
    return base["prompts"], base, tree, tree["stats"]


def test_tree_mode_is_token_identical_in_a_concurrent_batch(tree_runs):
    prompts, vanilla, tree, stats = tree_runs
    assert len(vanilla["token_ids"]) == len(prompts)
    assert_lossless(tree["token_ids"], vanilla["token_ids"], tree["spec"]["num_accepted_tokens"], "tree, batch")
    assert_lossless(tree["single_token_ids"], vanilla["single_token_ids"], tree["single_spec"]["num_accepted_tokens"],
                    "tree, batch 1")  # and one request at a time
    # Whole trees were verified, and accepted paths off the rank-0 branch had their KV moved: without the
    # relocation the next steps would attend to the wrong keys and the outputs above would differ.
    assert stats["tree_drafts"] > 0 and stats["chain_drafts"] == 0
    assert stats["relocated_paths"] > 10, stats


def test_tree_mode_mixed_batch_finishes_correctly_and_frees_its_kv_blocks(vanilla, tr_tree_engine):
    base = vanilla("spec_bench_reduced")
    out = tr_tree_engine.run(mixed_tree_batch, base["prompts"][:8])
    assert_mixed_tree_batch(out, base["token_ids"], MIXED_GREEDY_ROWS)


def tree_sample(llm, *args) -> dict:
    """``sample_run`` in tree mode, with the proposer's statistics over it."""
    before = proposer_stats(llm)
    out = sample_run(llm, *args)
    out["stats"] = counter_delta(proposer_stats(llm), before)
    return out


def tree_sample_biased(llm, *args) -> dict:
    """``tree_sample`` with a deliberately biased tree verifier: a child that is the target's argmax is accepted
    outright (otherwise the correct point-mass rule)."""
    from declab.integrations.sdk.tree_sampling import PointMassRule

    before = proposer_stats(llm)
    out = sample_run_with_biased_tree_rule(llm, "argmax_first", PointMassRule(), *args)
    out["stats"] = counter_delta(proposer_stats(llm), before)
    return out


# The tree of the 2,000-sample tests: 3 children at the root, depth 3, 7 draft nodes (ranks as in the paper's
# template). Verifying 81 tokens per request and step for 2,000 requests costs ~10x more; the verifier and its
# point-mass rule are the same for any tree, and the paper's tree at temperature > 0 runs in the mixed-batch and
# seeded tests and in `declab bench spec --temperature 1`.
SMALL_TREE = {(): 3, (0,): 2, (1,): 1, (0, 0): 1}


def _set_template(worker, counts) -> None:
    """Token Recycling's tree template: ``counts`` (``TreeTemplate.from_child_counts``) or, for None, the paper's."""
    from declab.plugins.token_recycling.core import PAPER_TREE, TreeTemplate

    worker.model_runner.drafter.template = PAPER_TREE if counts is None else TreeTemplate.from_child_counts(counts)


def with_small_tree(llm, scenario, *args) -> dict:
    llm.collective_rpc(_set_template, args=(SMALL_TREE,))
    try:
        return scenario(llm, *args)
    finally:
        llm.collective_rpc(_set_template, args=(None,))


@pytest.mark.vanilla("stack_t1", "stack_t07_p09")
@pytest.mark.parametrize("reference", ["stack_t1", "stack_t07_p09"])
def test_tree_sampling_preserves_the_distribution(vanilla, tr_tree_engine, reference):
    """Trees verified at temperature 1 and at 0.7 / top-p 0.9 (``SamplingTreeVerifier``): the tokens at positions
    1-4 of 2,000 samples pass the two-sample test against vanilla sampling; the same engine with a verifier that
    accepts the target's argmax among the children fails it."""
    base = vanilla(reference)
    args = (base["prompt"], base["n"], base["temperature"], base["max_tokens"], base["top_p"])
    tree = tr_tree_engine.run(with_small_tree, tree_sample, *args)
    biased = tr_tree_engine.run(with_small_tree, tree_sample_biased, *args)
    for out in (tree, biased):  # every request was verified as a tree, with many drafts accepted
        assert out["stats"]["tree_drafts"] > 0 and out["stats"]["chain_drafts"] == 0, out["stats"]
        assert out["spec"]["num_accepted_tokens"] > 200, out["spec"]
    v, t, b = base["token_ids"], tree["token_ids"], biased["token_ids"]
    assert len(v) == len(t) == len(b) == 2000
    for pos in (1, 2, 3, 4):
        fit = homogeneity([x[pos] for x in v], [x[pos] for x in t])
        control = homogeneity([x[pos] for x in v], [x[pos] for x in b])
        print(f"{reference} position {pos}: tree {fit}; argmax-accepting verifier {control}")
        assert fit.passes, (pos, str(fit))
        assert not control.passes, (pos, str(control))


@pytest.mark.vanilla("seeded_t1", "seeded_t07_p09")
@pytest.mark.parametrize("reference", ["seeded_t1", "seeded_t07_p09"])
def test_seeded_tree_sampling_draws_what_plain_seeded_sampling_draws_whatever_the_batch(vanilla, tr_tree_engine,
                                                                                       reference):
    """Point-mass verification draws one seed per committed token, as vLLM's CPU sampler does: seeded requests
    verified as trees commit the tokens vanilla seeded sampling draws, in a batch, alone, and among other requests."""
    base = vanilla(reference)
    prompts = list(CODE_PROMPTS[:8])
    temperature, top_p = (1.0, 1.0) if reference == "seeded_t1" else (0.7, 0.9)
    out = tr_tree_engine.run(seeded_in_a_crowd, prompts, 24, temperature, top_p)
    assert out["token_ids"] == base["token_ids"]
    assert out["single_token_ids"] == base["token_ids"][:2]
    assert out["crowd_token_ids"] == base["token_ids"]


@pytest.mark.vanilla("stack_t1", "stack_t07")
def test_temperature_1_sampling_preserves_the_distribution(vanilla, tr_chain_engine):
    """Two-sample chi-square test (``stats.homogeneity``) of the token at positions 1-4 against vanilla, with two
    negative controls that must fail it: vanilla at temperature 0.7 (a wrong distribution), and Token Recycling with
    the unpatched CPU expand kernel (the failure the cpu_expand_kernel patch guards against)."""
    base, control = vanilla("stack_t1"), vanilla("stack_t07")
    args = (base["prompt"], base["n"], base["temperature"], base["max_tokens"])
    tr = tr_chain_engine.run(sample_run, *args)
    unpatched = tr_chain_engine.run(sample_run_unpatched_kernel, *args)
    assert tr["spec"]["num_accepted_tokens"] > 200  # the verifier decided many drafts
    v, t, c, u = base["token_ids"], tr["token_ids"], control["token_ids"], unpatched["token_ids"]
    assert len(v) == len(t) == len(c) == len(u) == 2000
    for pos in (1, 2, 3, 4):  # positions decided by the verifier (token 0 is sampled before any draft)
        fit = homogeneity([x[pos] for x in v], [x[pos] for x in t])
        controls = {"T=0.7": homogeneity([x[pos] for x in v], [x[pos] for x in c]),
                    "unpatched kernel": homogeneity([x[pos] for x in v], [x[pos] for x in u])}
        print(f"position {pos}: TR {fit}; " + "; ".join(f"{k} {f}" for k, f in controls.items()))
        assert fit.passes, (pos, str(fit))
        # Each wrong sampler fails the same test (measured: statistics 96-558 against a critical value of 37).
        assert not any(f.passes for f in controls.values()), (pos, {k: str(f) for k, f in controls.items()})


@pytest.mark.parametrize("k,env,message", [
    ("17", TR_ENV, "num_speculative_tokens must be in 1..16"),
    ("6", {}, "plugin is not selected"),
    ("6", {**TR_ENV, "DECLAB_TOKEN_RECYCLING": '{"successors": 0}'}, "successors must be >= 1"),
    ("6", TREE_ENV, "num_speculative_tokens must be 80 for token_recycling in tree mode"),
    ("80", {**TR_ENV, "DECLAB_TOKEN_RECYCLING": '{"mode": "tree", "template": "wide"}'},
     "template must be one of ['paper']"),
    ("80", {**TR_ENV, "DECLAB_TOKEN_RECYCLING": '{"mode": "tree", "successors": 4}'}, "needs successors >= 8"),
])
def test_bad_configuration_fails_at_start_up_with_a_clear_message(engine_startup_error, k, env, message):
    config = {"DECLAB_TOKEN_RECYCLING": env.get("DECLAB_TOKEN_RECYCLING")}
    failure = engine_startup_error(EngineProfile(f"tr_bad_k{k}", plugins=env.get("DECLAB_PLUGINS"), env=config,
                                                 engine_kwargs={"speculative_config": token_recycling(int(k))}))
    assert failure is not None
    assert message in failure.log, failure.log[-3000:]


def _overlay_mode(worker, on: bool) -> None:
    """Cold matrix, and per-request overlays on (the default) or off (the paper's single matrix), between runs."""
    drafter = worker.model_runner.drafter
    drafter.declab_bench_reset()
    drafter.overlay_rows = 4096 if on else None


def overlay_vs_global(llm, prompts: list[str]) -> dict:
    """The same concurrent greedy batch from a cold matrix, with the paper's single matrix and with overlays."""
    out = {}
    for on in (False, True):
        llm.collective_rpc(_overlay_mode, args=(on,))
        out[on] = greedy_run(llm, prompts, 64)
    llm.collective_rpc(_overlay_mode, args=(True,))
    return {"global": out[False], "overlay": out[True]}


def test_overlays_accept_at_least_as_many_drafts_as_the_shared_matrix_in_a_concurrent_batch(vanilla, tr_chain_engine):
    """Concurrent streams overwrite each other's rows of the shared matrix; each request's overlay keeps its own.
    Same prompts, same greedy outputs (lossless both ways), so more accepted tokens = fewer target forwards."""
    base = vanilla("spec_bench_reduced")
    out = tr_chain_engine.run(overlay_vs_global, base["prompts"])
    for name in ("global", "overlay"):
        assert_lossless(out[name]["token_ids"], base["token_ids"], out[name]["spec"]["num_accepted_tokens"], name)
    accepted = {name: out[name]["spec"]["num_accepted_tokens"] for name in out}
    print("accepted tokens in the batch:", accepted)
    assert accepted["overlay"] >= accepted["global"], accepted
