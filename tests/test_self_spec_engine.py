"""Training-free self-speculation of issue 16 through a real vLLM engine (CPU, decoder-29m): the hybrid drafter and
ADED are token-identical to vanilla greedy, in a concurrent batch and one request at a time, and really speculate.
The bench (`declab bench spec`) runs every fitting Spec-Bench prompt plus the code prompts; CI runs a reduced set."""

from __future__ import annotations

import pytest
from engines import greedy_run
from helpers import assert_lossless

pytestmark = [pytest.mark.engine, pytest.mark.vanilla("spec_bench_reduced", "scale_out")]


def _drafter_stats(worker) -> dict:
    return dict(worker.model_runner.drafter.stats)


def greedy_with_stats(llm, prompts: list[str], max_tokens: int, batch1: int) -> dict:
    out = greedy_run(llm, prompts, max_tokens, batch1)
    out["stats"] = llm.collective_rpc(_drafter_stats)[0]
    return out


def check_lossless(vanilla, engine, what: str) -> dict:
    base = vanilla("spec_bench_reduced")
    out = engine.run(greedy_with_stats, base["prompts"], 64, 6)
    assert_lossless(out["token_ids"], base["token_ids"], out["spec"]["num_accepted_tokens"], f"{what}, batch")
    assert_lossless(out["single_token_ids"], base["single_token_ids"], out["single_spec"]["num_accepted_tokens"],
                    f"{what}, batch 1")
    return out["stats"]


def test_hybrid_greedy_is_token_identical_in_a_batch_and_alone(vanilla, hybrid_engine):
    stats = check_lossless(vanilla, hybrid_engine, "hybrid")
    # Both sources drafted: the request's own context and the recycled successors.
    assert stats["context_drafts"] > 0 and stats["recycled_drafts"] > 0, stats


def test_aded_greedy_is_token_identical_in_a_batch_and_alone(vanilla, aded_engine):
    stats = check_lossless(vanilla, aded_engine, "aded")
    assert stats["chain_drafts"] > 0 and stats["observed_tokens"] > 0, stats


def test_aded_search_tree_is_token_identical_on_the_tree_seam(vanilla, aded_tree_engine):
    base = vanilla("scale_out")
    out = aded_tree_engine.run(greedy_with_stats, base["prompts"], 32, 1)
    assert_lossless(out["token_ids"], base["token_ids"], out["spec"]["num_accepted_tokens"], "aded tree, batch")
    assert_lossless(out["single_token_ids"], base["single_token_ids"], out["single_spec"]["num_accepted_tokens"],
                    "aded tree, batch 1")
    assert out["stats"]["tree_drafts"] > 0 and out["stats"]["chain_drafts"] == 0, out["stats"]
