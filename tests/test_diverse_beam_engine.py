"""Diverse Beam Search on a real vLLM engine (decoder-29m, CPU): vLLM's beam search and our search loop on the same
engine (the ``installed`` profile: the search loop needs no plugin selected)."""

from __future__ import annotations

import json

import pytest

from declab.plugins.diverse_beam.bench import beam_searches  # also `declab bench diverse-beam`

pytestmark = pytest.mark.engine


@pytest.fixture(scope="session")
def result(installed_engine) -> dict:
    out = installed_engine.run(beam_searches)
    print(json.dumps(out["summary"], indent=1))
    return out


def test_one_group_no_penalty_equals_vllm_beam_search(result):
    assert all(result["vllm_prompt_prefix_ok"])  # our tokenization of the prompts is vLLM's
    ours = result["dbs"]["G1_lambda0.0"]["beams"]
    assert len(ours) == len(result["vllm"]) == 4
    for mine, ref in zip(ours, result["vllm"]):
        assert len(mine) == len(ref) == 4
        assert [b["token_ids"] for b in mine] == [b["token_ids"] for b in ref]
        for a, b in zip(mine, ref):
            assert a["cum_logprob"] == pytest.approx(b["cum_logprob"], abs=1e-4)


def test_diverse_groups_raise_distinct_2(result):
    s = result["summary"]
    plain, diverse = s["vllm_beam_search"], s["G4_lambda1.0"]
    assert diverse["distinct_2"] > plain["distinct_2"]
    assert diverse["distinct_first_tokens"] >= plain["distinct_first_tokens"]
    for beams in result["dbs"]["G4_lambda1.0"]["beams"]:
        assert sorted(b["group"] for b in beams) == [0, 1, 2, 3]
        assert [b["score"] for b in beams] == sorted((b["score"] for b in beams), reverse=True)
    # both best-beam log-probs are reported (printed with the summary); they are finite negatives
    assert plain["best_cum_logprob"] < 0 and diverse["best_cum_logprob"] < 0
