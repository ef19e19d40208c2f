"""Superposed Decoding in a real engine (the ``all_logits`` engine: every logits plugin selected, so the two seams
run beside the router's other plugins and the request-group seam).

* A batch mixing superposed requests (``n = k = 3``) with plain greedy rows: the plain rows are token-identical to
  vLLM without plugins (the ``scale_out`` vanilla reference), each superposed request returns k distinct,
  well-formed completions (max_tokens or EOS, finish reasons, text decoding its tokens).
* The engine's completions equal the plain-transformers reference of the same algorithm (``reference.py``: the mixed
  embeddings fed through HF's ``inputs_embeds`` with its own KV cache), and a superposed request alone gives what it
  gives in the mixed batch.
* Bad parameters are refused with a ValueError naming the parameter, offline and over HTTP (400).
"""

from __future__ import annotations

import pytest
import requests

from declab.integrations.prompts import CODE_PROMPTS

pytestmark = pytest.mark.vanilla("scale_out")

K = 3
MAX_TOKENS = 16
SUPERPOSED = {"method": "superposed", "k": K}
SP_PROMPTS = (CODE_PROMPTS[3], CODE_PROMPTS[6])


def mixed_batch(llm) -> dict:
    """Plain greedy rows (the vanilla reference's prompts, 32 tokens) and superposed requests in one batch; then one
    superposed request alone; then the plain-transformers reference on the superposed prompts."""
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    from declab.plugins.superposed.core import DEFAULT_NGRAM_WEIGHTS
    from declab.plugins.superposed.ngram import stdlib_tables
    from declab.plugins.superposed.processor import vocab_fingerprint
    from declab.plugins.superposed.reference import reference_completions

    plain = SamplingParams(temperature=0.0, max_tokens=32)
    sup = SamplingParams(n=K, temperature=1.0, max_tokens=MAX_TOKENS, extra_args={"declab": dict(SUPERPOSED)})
    prompts = [*CODE_PROMPTS[:3], *SP_PROMPTS]
    outs = llm.generate(prompts, [plain] * 3 + [sup] * len(SP_PROMPTS), use_tqdm=False)
    alone = llm.generate([SP_PROMPTS[0]], sup, use_tqdm=False)[0]
    tokenizer = llm.get_tokenizer()

    def completions(out):
        return [{"token_ids": list(c.token_ids), "text": c.text, "finish_reason": c.finish_reason,
                 "decoded": tokenizer.decode(list(c.token_ids), skip_special_tokens=True)}
                for c in sorted(out.outputs, key=lambda c: c.index)]

    model = llm.llm_engine.model_config.model
    hf = AutoModelForCausalLM.from_pretrained(model, torch_dtype="float32").eval()
    tables, _ = stdlib_tables(lambda s: list(tokenizer.encode(s, add_special_tokens=False)),
                              vocab_fingerprint(tokenizer))
    reference = [[toks for toks, _ in reference_completions(
        hf, list(tokenizer.encode(p)), k=K, max_tokens=MAX_TOKENS, eos_token_id=tokenizer.eos_token_id,
        ngram=lambda ctx, cands: tables.interpolated(ctx, cands, DEFAULT_NGRAM_WEIGHTS), alpha=0.54,
        softmax_temperature=0.06, n_token_sample=9, penalty=200.0)] for p in SP_PROMPTS]
    return {"plain": [list(o.outputs[0].token_ids) for o in outs[:3]],
            "superposed": [completions(o) for o in outs[3:]], "alone": completions(alone),
            "reference": reference, "eos": tokenizer.eos_token_id}


def refusals(llm) -> dict:
    from vllm import SamplingParams

    cases = {
        "k_out_of_range": SamplingParams(n=1, temperature=1.0, extra_args={"declab": {"method": "superposed", "k": 1}}),
        "n_differs": SamplingParams(n=2, temperature=1.0, extra_args={"declab": dict(SUPERPOSED)}),
        "alpha": SamplingParams(n=K, temperature=1.0, extra_args={"declab": {**SUPERPOSED, "alpha": 2.0}}),
        "logprobs": SamplingParams(n=K, temperature=1.0, logprobs=2, extra_args={"declab": dict(SUPERPOSED)}),
        "penalty_option": SamplingParams(n=K, temperature=1.0, repetition_penalty=1.2,
                                         extra_args={"declab": dict(SUPERPOSED)}),
    }
    out = {}
    for name, params in cases.items():
        try:
            llm.generate(["def f():\n    "], params, use_tqdm=False)
            out[name] = None
        except Exception as e:  # noqa: BLE001 - the type and message are what the test checks
            out[name] = (type(e).__name__, isinstance(e, ValueError) or "Validation" in type(e).__name__, str(e))
    return out


@pytest.fixture(scope="module")
def batch(all_logits_engine) -> dict:
    return all_logits_engine.run(mixed_batch)


def test_plain_rows_beside_superposed_requests_are_vanilla(batch, vanilla):
    assert batch["plain"] == vanilla("scale_out")["token_ids"][:3]


def test_superposed_requests_return_k_distinct_well_formed_completions(batch):
    for completions in batch["superposed"]:
        assert len(completions) == K
        ids = [tuple(c["token_ids"]) for c in completions]
        assert len(set(ids)) == K, ids
        for c in completions:
            assert 1 <= len(c["token_ids"]) <= MAX_TOKENS
            ended = c["token_ids"][-1] == batch["eos"]
            assert c["finish_reason"] == ("stop" if ended else "length")
            assert ended or len(c["token_ids"]) == MAX_TOKENS
            assert c["text"] == c["decoded"] and c["text"].strip()


def test_completions_equal_the_transformers_reference_and_do_not_depend_on_the_batch(batch):
    assert [[c["token_ids"] for c in comps] for comps in batch["superposed"]] == batch["reference"]
    assert batch["alone"] == batch["superposed"][0]


def test_bad_parameters_are_refused_naming_them(all_logits_engine):
    out = all_logits_engine.run(refusals)
    expected = {"k_out_of_range": "declab.k", "n_differs": "declab.k", "alpha": "declab.alpha",
                "logprobs": "logprobs", "penalty_option": "repetition_penalty"}
    for name, named in expected.items():
        assert out[name] is not None, f"{name} was accepted"
        _, is_value_error, message = out[name]
        assert is_value_error and named in message, out[name]


def test_http_returns_k_choices_and_400_for_bad_parameters(all_logits_server):
    url = f"{all_logits_server}/v1/completions"
    model = requests.get(f"{all_logits_server}/v1/models", timeout=30).json()["data"][0]["id"]
    body = {"model": model, "prompt": SP_PROMPTS[0], "max_tokens": MAX_TOKENS, "n": K, "temperature": 1.0,
            "vllm_xargs": {"declab.method": "superposed", "declab.k": K}}
    r = requests.post(url, json=body, timeout=300)
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == list(range(K)) and len({c["text"] for c in choices}) == K
    for xargs, n, named in (({"declab.k": 99}, K, "declab.k"), ({"declab.k": K}, 2, "declab.k"),
                            ({"declab.k": K, "declab.n_token_sample": "many"}, K, "declab.n_token_sample")):
        bad = {**body, "n": n, "vllm_xargs": {"declab.method": "superposed", **xargs}}
        r = requests.post(url, json=bad, timeout=60)
        assert r.status_code == 400 and named in r.text, (r.status_code, r.text)
    assert requests.post(url, json=body, timeout=300).status_code == 200  # still serving
