"""Diverse Beam Search on a real vLLM engine (decoder-29m, CPU): vLLM's beam search and our search loop on the same
engine (the ``installed`` profile: the search loop needs no plugin selected); the HTTP client against a running
``declab serve`` (the ``momentum`` server: plain requests run unchanged there) gives the offline search's beams."""

from __future__ import annotations

import json

import pytest

from declab.plugins.diverse_beam.bench import beam_searches  # also `declab bench diverse-beam`

pytestmark = pytest.mark.engine


def searches_and_rescores(llm) -> dict:
    """The bench's searches (vLLM's beam search and ours) plus every beam re-scored offline (``rescore``)."""
    out = beam_searches(llm)
    tokenizer = llm.get_tokenizer()
    prompt_ids = [list(tokenizer.encode(p)) for p in out["prompts"]]
    out["rescored"] = {name: rescore(llm, prompt_ids, r["beams"]) for name, r in out["dbs"].items()}
    return out


def rescore(llm, prompt_ids: list[list[int]], beams: list[list[dict]]) -> list[list[float]]:
    """The log-probability of each beam's tokens after its prompt, scored offline in one forward pass per beam
    (``prompt_logprobs``), not step by step as the search does."""
    from vllm import SamplingParams, TokensPrompt

    seqs = [(ids, b["token_ids"]) for ids, per_prompt in zip(prompt_ids, beams, strict=True) for b in per_prompt]
    outs = llm.generate([TokensPrompt(prompt_token_ids=ids + toks) for ids, toks in seqs],
                        SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False), use_tqdm=False)
    scores = [sum(step[t].logprob for step, t in zip(o.prompt_logprobs[len(ids):], toks, strict=True))
              for (ids, toks), o in zip(seqs, outs, strict=True)]
    it = iter(scores)
    return [[next(it) for _ in per_prompt] for per_prompt in beams]


@pytest.fixture(scope="session")
def result(installed_engine) -> dict:
    out = installed_engine.run(searches_and_rescores)
    print(json.dumps(out["summary"], indent=1))
    return out


def test_one_group_no_penalty_equals_vllm_beam_search(result):
    assert all(result["vllm_prompt_prefix_ok"])  # our tokenization of the prompts is vLLM's
    ours = result["dbs"]["G1_lambda0.0"]["beams"]
    assert len(ours) == len(result["vllm"]) == 4
    for mine, ref in zip(ours, result["vllm"], strict=True):
        assert len(mine) == len(ref) == 4
        assert [b["token_ids"] for b in mine] == [b["token_ids"] for b in ref]
        for a, b in zip(mine, ref, strict=True):
            assert a["cum_logprob"] == pytest.approx(b["cum_logprob"], abs=1e-4)


def test_diverse_groups_raise_distinct_2(result):
    s = result["summary"]
    plain, diverse = s["vllm_beam_search"], s["G4_lambda1.0"]
    assert diverse["distinct_2"] > plain["distinct_2"]
    assert diverse["distinct_first_tokens"] >= plain["distinct_first_tokens"]
    for beams in result["dbs"]["G4_lambda1.0"]["beams"]:
        assert sorted(b["group"] for b in beams) == [0, 1, 2, 3]
        assert [b["score"] for b in beams] == sorted((b["score"] for b in beams), reverse=True)


def test_reported_log_probs_are_the_models(result):
    """Every beam's cum_logprob (the diversity penalty only ranks candidates) equals the model's log-probability of
    its tokens, re-scored offline in one forward pass."""
    for name, run in result["dbs"].items():
        for beams, scores in zip(run["beams"], result["rescored"][name], strict=True):
            assert len(beams) == 4
            for b, offline in zip(beams, scores, strict=True):
                assert b["cum_logprob"] == pytest.approx(offline, abs=2e-3), (name, b)


HTTP_RUNS = (("G4_lambda1.0", 4, 1.0), ("G2_lambda0.5", 2, 0.5))  # (offline run, groups, penalty) of beam_searches


def test_http_client_on_declab_serve_equals_the_offline_search(result, momentum_server):
    from declab.plugins.diverse_beam.search import diverse_beam_search_http

    for name, groups, penalty in HTTP_RUNS:
        for prompt, offline in zip(result["prompts"], result["dbs"][name]["beams"], strict=True):
            beams = [b.as_dict() for b in diverse_beam_search_http(
                momentum_server, "decoder-29m", prompt, beam_width=4, num_groups=groups, diversity_penalty=penalty,
                max_tokens=16)]  # the EOS id comes from the served model folder (/v1/models)
            assert [(b["token_ids"], b["group"], b["finish_reason"]) for b in beams] == \
                [(b["token_ids"], b["group"], b["finish_reason"]) for b in offline], (name, prompt)
            for b, o in zip(beams, offline, strict=True):
                assert b["cum_logprob"] == pytest.approx(o["cum_logprob"], abs=1e-4), (name, prompt)
                if b["finish_reason"] == "length":  # /detokenize keeps a final EOS, the offline text skips it
                    assert b["text"] == o["text"], (name, prompt)


def test_http_client_errors_on_declab_serve(momentum_server):
    from declab.plugins.diverse_beam.search import diverse_beam_search_http

    kw = dict(num_groups=1, diversity_penalty=0.0, max_tokens=2)
    with pytest.raises(ValueError, match="max allowed"):  # 22 log-probs per step: the server's 400 as ValueError
        diverse_beam_search_http(momentum_server, "decoder-29m", [1, 2], beam_width=11, **kw)
    beams = diverse_beam_search_http(momentum_server, "decoder-29m", [1, 2], beam_width=2, ignore_eos=True, **kw)
    assert len(beams) == 2 and all(len(b.token_ids) == 2 for b in beams)
