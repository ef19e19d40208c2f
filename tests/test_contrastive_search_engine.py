"""Contrastive search (``plugins/contrastive_search``; issue #18) through a real vLLM engine and server (CPU,
decoder-29m, ``top_k`` 4, ``alpha`` 0.6): token-identical to the transformers reference
(``contrastive_search_reference.py``) alone and in a batch mixed with plain rows, which stay token-identical to
vanilla greedy; bad values and what the method cannot honour refused naming the parameter, offline and as HTTP 400.
The 100-prompt run is ``declab bench contrastive-search`` (``plugins/contrastive_search/measurements``).
"""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.vanilla("spec_bench_reduced")

METHOD = {"method": "contrastive_search", "top_k": 4, "alpha": 0.6}
MAX_TOKENS = 16


def subset(prompts: list[str]) -> list[str]:
    """Two Spec-Bench first turns and two code prompts of the reduced Spec-Bench set."""
    return prompts[:2] + prompts[-2:]


@pytest.fixture(scope="module")
def reference(vanilla) -> list[list[int]]:
    import torch
    from contrastive_search_reference import contrastive_search, load

    from declab.integrations.models import default_model

    torch.set_num_threads(1)
    tok, model = load(default_model())
    return [contrastive_search(model, tok(p).input_ids, top_k=METHOD["top_k"], alpha=METHOD["alpha"],
                               max_tokens=MAX_TOKENS) for p in subset(vanilla("spec_bench_reduced")["prompts"])]


def mixed_and_alone(llm, searched: list[str], plain: list[str], max_tokens: int, plain_tokens: int) -> dict:
    """``searched`` with contrastive search and ``plain`` greedy in one batch, then each searched prompt alone."""
    from vllm import SamplingParams

    cs = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, extra_args={"declab": METHOD})
    greedy = SamplingParams(temperature=0.0, max_tokens=plain_tokens)
    outs = llm.generate(searched + plain, [cs] * len(searched) + [greedy] * len(plain), use_tqdm=False)
    ids = [list(o.outputs[0].token_ids) for o in outs]
    alone = [list(llm.generate([p], cs, use_tqdm=False)[0].outputs[0].token_ids) for p in searched]
    return {"mixed": ids[: len(searched)], "plain": ids[len(searched):], "alone": alone}


@pytest.mark.engine
def test_token_identical_to_the_reference_alone_and_mixed_with_plain_rows(vanilla, reference,
                                                                          contrastive_search_engine):
    base = vanilla("spec_bench_reduced")
    out = contrastive_search_engine.run(mixed_and_alone, subset(base["prompts"]), base["prompts"], MAX_TOKENS, 64)
    assert out["alone"] == reference
    assert out["mixed"] == reference
    assert out["plain"] == base["token_ids"]  # plain rows next to contrastive ones: vanilla greedy


def refusals(llm, cases: list[tuple[dict, dict]]) -> list[str]:
    from vllm import SamplingParams

    messages = []
    for options, args in cases:
        params = SamplingParams(max_tokens=4, **{"temperature": 0.0, **options},
                                extra_args={"declab": {**METHOD, **args}})
        try:
            llm.generate(["def f(x):\n"], params, use_tqdm=False)
            messages.append("accepted")
        except Exception as e:  # vLLM's VLLMValidationError (not a ValueError subclass offline)
            messages.append(str(e))
    messages.append(str(llm.generate(["def f(x):\n"], SamplingParams(temperature=0.0, max_tokens=2,
                                                                      extra_args={"declab": METHOD}),
                                     use_tqdm=False)[0].outputs[0].finish_reason))
    return messages


REFUSED = [  # (SamplingParams options, declab arguments) -> what the error names
    (({"temperature": 0.7}, {}), "temperature"),
    (({"logprobs": 1}, {}), "logprobs"),
    (({"repetition_penalty": 1.2}, {}), "repetition_penalty"),
    (({}, {"top_k": 9}), "declab.top_k must be <= 8"),
    (({}, {"top_k": 0}), "declab.top_k"),
    (({}, {"top_k": 2.5}), "declab.top_k"),
    (({}, {"alpha": 1.5}), "declab.alpha"),
    (({}, {"alpha": -0.1}), "declab.alpha"),
]


@pytest.mark.engine
def test_refusals_name_the_parameter_and_the_engine_lives_on(contrastive_search_engine):
    messages = contrastive_search_engine.run(refusals, [case for case, _ in REFUSED])
    for (case, named), message in zip(REFUSED, messages):
        assert named in message, (case, message)
    assert messages[-1] == "length"  # a valid request after them still completes


@pytest.mark.server
def test_http_completion_equals_offline_and_bad_values_are_400(vanilla, reference, contrastive_search_server):
    prompt = subset(vanilla("spec_bench_reduced")["prompts"])[-1]
    body = {"model": "decoder-29m", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True,
            "vllm_xargs": {f"declab.{k}": v for k, v in METHOD.items()}}
    url = f"{contrastive_search_server}/v1/completions"
    models = requests.get(f"{contrastive_search_server}/v1/models", timeout=30).json()
    body["model"] = models["data"][0]["id"]
    r = requests.post(url, json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["token_ids"] == reference[-1]
    for key, value in (("declab.alpha", 2), ("declab.top_k", 0), ("temperature", 1.0), ("n", 2)):
        bad = dict(body, vllm_xargs=dict(body["vllm_xargs"]))
        if key.startswith("declab."):
            bad["vllm_xargs"][key] = value
        else:
            bad[key] = value
        r = requests.post(url, json=bad, timeout=120)
        assert r.status_code == 400, (key, r.status_code, r.text)
        assert key.split(".")[-1] in r.text, (key, r.text)
    assert requests.post(url, json=body, timeout=120).status_code == 200  # still serving
