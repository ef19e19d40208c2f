"""Issue #13's "5xx instead of a 4xx" and "200 with a wrong result" cases, each through the served path (a running
``declab serve``) and offline (``vllm.LLM``): a 400 / ``VLLMValidationError`` naming what was wrong, and the server
still serving afterwards. The engine-free half (the pure checks) is ``test_admission_core.py``."""

from __future__ import annotations

import re

import pytest
import requests

from test_admission_core import EMPTY_GRAMMARS

BITS = 'root ::= ("0" | "1")+'
PASSAGE = "Marrator is a city on the coast. It was founded in 1820."
METHOD_ARGS = {
    "asap": {"declab.method": "asap", "declab.grammar": BITS},
    "gcd": {"declab.method": "gcd", "declab.grammar": BITS},
    "extractive": {"declab.method": "extractive", "declab.passage": PASSAGE},
}
STRUCTURED = {
    "response_format": {"response_format": {"type": "json_object"}},
    "structured_outputs": {"structured_outputs": {"regex": "[0-9]+"}},
}


@pytest.fixture
def server(all_logits_server):
    """``declab serve --plugins asap,gcd,extractive,momentum`` (profiles.SERVERS)."""
    return all_logits_server


def _post(base, path="completions", **extra):
    body = {"model": "decoder-29m", "max_tokens": 8, "temperature": 0}
    body.update({"prompt": "Bits: "} if path == "completions" else {"messages": [{"role": "user", "content": "Bits"}]})
    body.update(extra)
    return requests.post(f"{base}/v1/{path}", json=body, timeout=120)


def _assert_400_naming(response, name):
    assert response.status_code == 400, response.text
    assert name in response.json()["error"]["message"], response.text


def _still_serving(base):
    assert requests.get(f"{base}/health", timeout=10).status_code == 200
    assert _post(base).status_code == 200


# -- 5xx instead of a 4xx --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("structured", STRUCTURED, ids=STRUCTURED.keys())
@pytest.mark.parametrize("method", METHOD_ARGS)
def test_a_structured_output_with_a_token_choosing_method_is_a_400(server, method, structured):
    # Was "Internal server error" (xgrammar "Failed to advance FSM": the request terminated) for json_object.
    _assert_400_naming(_post(server, vllm_xargs=METHOD_ARGS[method], **STRUCTURED[structured]), "structured_outputs")
    _still_serving(server)


def test_a_structured_output_with_a_grammar_method_is_a_400_on_chat_too(server):
    r = _post(server, "chat/completions", vllm_xargs=METHOD_ARGS["asap"], response_format={"type": "json_object"})
    _assert_400_naming(r, "structured_outputs")


# -- 200 with a wrong result ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["completions", "chat/completions"])
@pytest.mark.parametrize("key,value", [("declab.alpha", True), ("declab.alpha", False), ("declab.top_k", True)])
def test_a_json_boolean_is_not_a_number(server, path, key, value):
    # Was a 200 running with alpha 1.0: the OpenAI server narrowed JSON true to 1 before admission saw it.
    r = _post(server, path, vllm_xargs={"declab.method": "momentum", key: value})
    _assert_400_naming(r, key)
    ok = _post(server, path, vllm_xargs={"declab.method": "momentum", "declab.alpha": 1, "declab.top_k": 3.0})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("method", ["asap", "gcd"])
@pytest.mark.parametrize("grammar", [EMPTY_GRAMMARS[k] for k in ("left recursion only",
                                                                  "mutual recursion without base case",
                                                                  "empty character class")])
def test_a_grammar_whose_language_is_empty_is_a_400(server, method, grammar):
    # Was a 200 with "" and finish_reason stop.
    _assert_400_naming(_post(server, vllm_xargs={"declab.method": method, "declab.grammar": grammar}), "declab.grammar")


@pytest.mark.parametrize(
    "method,option",
    [("asap", {"allowed_token_ids": [15, 16, 17]}), ("gcd", {"allowed_token_ids": [15, 16, 17]}),
     ("asap", {"bad_words": ["0", "1"]}), ("gcd", {"bad_words": ["0", "1"]}), ("asap", {"min_tokens": 4})],
)
def test_a_vllm_token_constraint_the_grammar_would_override_is_a_400(server, method, option):
    # Were 200s: asap produced tokens outside allowed_token_ids, gcd produced "01" despite bad_words, asap stopped
    # after 2 tokens despite min_tokens 4 (the grammar processor's fallback undid vLLM's masks).
    _assert_400_naming(_post(server, vllm_xargs=METHOD_ARGS[method], **option), next(iter(option)))
    _still_serving(server)


def test_gcd_honours_min_tokens_while_the_grammar_can_continue(server):
    """vLLM bans EOS for the first min_tokens tokens before the grammar mask applies; gcd keeps that ban. A strong
    bias towards EOS makes plain gcd stop after one token; with min_tokens it cannot."""
    eos = requests.post(f"{server}/tokenize", json={"model": "decoder-29m", "prompt": "<|endoftext|>",
                                                    "add_special_tokens": False}, timeout=30).json()["tokens"]
    assert len(eos) == 1
    bias = {"logit_bias": {str(eos[0]): 100.0}}
    short = _post(server, vllm_xargs=METHOD_ARGS["gcd"], max_tokens=12, **bias).json()
    long = _post(server, vllm_xargs=METHOD_ARGS["gcd"], max_tokens=12, min_tokens=5, **bias).json()
    assert short["usage"]["completion_tokens"] <= 2, short
    assert long["usage"]["completion_tokens"] >= 5, long
    assert re.fullmatch("[01]+", long["choices"][0]["text"]), long
    # A grammar that must end earlier still ends (README: the grammar's end wins over min_tokens).
    one = _post(server, vllm_xargs={"declab.method": "gcd", "declab.grammar": 'root ::= "0"'}, min_tokens=4).json()
    assert one["choices"][0]["text"] == "0", one


@pytest.mark.parametrize("xargs,named,meant", [
    ({"Declab.method": "momentum"}, "Declab.method", "declab.method"),
    ({"DECLAB.method": "momentum"}, "DECLAB.method", "declab.method"),
    ({"declab.Method": "momentum"}, "declab.Method", "declab.method"),
    ({"declab.method": "momentum", "declab.ALPHA": 0.3}, "declab.ALPHA", "declab.alpha"),
])
def test_a_declab_key_with_another_capitalisation_is_a_400(server, xargs, named, meant):
    # Was silently ignored (a plain request).
    r = _post(server, vllm_xargs=xargs)
    _assert_400_naming(r, named)
    assert f"did you mean {meant}?" in r.text


# -- offline: the same cases raise vLLM's VLLMValidationError naming the parameter ---------------------------------
def offline_refusals(llm, cases):
    """Each ``(extra_args, sampling options)`` through ``llm.generate``: ``(exception type names, message)``."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    out = []
    for extra_args, options in cases:
        if options.get("structured_outputs"):
            options = {**options, "structured_outputs": StructuredOutputsParams(**options["structured_outputs"])}
        try:
            llm.generate(["Bits: "], SamplingParams(max_tokens=4, temperature=0, extra_args=extra_args, **options),
                         use_tqdm=False)
            out.append((None, ""))
        except Exception as e:  # noqa: BLE001 - the test checks the type
            out.append(([c.__name__ for c in type(e).__mro__], str(e)))
    return out


def _check_offline(results, names):
    for (types, message), name in zip(results, names):
        assert types is not None, f"accepted, expected a refusal naming {name}"
        assert "VLLMValidationError" in types, (types, message)
        assert name in message, message


def test_offline_grammar_cases_are_refused_naming_the_parameter(asap_engine):
    cases = [({"declab": {"method": m, "grammar": g}}, {}) for m in ("asap", "gcd") for g in EMPTY_GRAMMARS.values()]
    cases += [({"declab": {"method": "gcd", "grammar": BITS}}, {"structured_outputs": {"json_object": True}}),
              ({"declab": {"method": "asap", "grammar": BITS}}, {"allowed_token_ids": [15, 16]}),
              ({"declab": {"method": "gcd", "grammar": BITS}}, {"bad_words": ["0", "1"]}),
              ({"declab": {"method": "asap", "grammar": BITS}}, {"min_tokens": 4})]
    names = ["declab.grammar"] * (2 * len(EMPTY_GRAMMARS)) + ["structured_outputs", "allowed_token_ids", "bad_words",
                                                              "min_tokens"]
    _check_offline(asap_engine.run(offline_refusals, cases), names)


def test_offline_booleans_and_capitalisation_are_refused_naming_the_parameter(router_engine):
    cases = [({"declab": {"method": "momentum", "alpha": True}}, {}),
             ({"Declab": {"method": "momentum"}}, {}),
             ({"declab.Method": "momentum"}, {}),
             ({"declab": {"method": "extractive", "passage": PASSAGE}}, {"structured_outputs": {"json_object": True}})]
    _check_offline(router_engine.run(offline_refusals, cases),
                   ["declab.alpha", "Declab", "declab.Method", "structured_outputs"])
