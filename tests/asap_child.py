"""Child-process program for the ASAp engine tests: ``python tests/asap_child.py NAME [N]`` prints one JSON line.

``kl_experiment``: for each finite grammar of ``EXPERIMENTS`` it computes, with transformers (float32), the exact
grammar-conditioned distribution over strings (every token sequence the grammar allows, EOS included, enumerated
with the xgrammar matcher; the probabilities of the tokenizations of one string are summed) and plain GCD's exact
distribution, then samples ``N`` outputs through one vLLM engine with ``asap`` and with ``gcd`` at temperature 1.
The reference and the sampling loop live in ``declab.plugins.asap.grammar_reference`` (shared with
``declab bench grammar``).

``engine_checks``: a mixed batch (plain, asap and gcd rows), concurrent requests sharing one trie, and request aborts
on one engine; it returns the outputs and the exported tries for the test to check.
"""

from __future__ import annotations

import json
import sys
import time

from declab.plugins.asap.grammar_reference import (
    ASAP_CHUNK,
    EXPERIMENTS,
    GCD_CHUNK,
    exact_reference,
    public,
    sample_strings,
    tokenizer_and_model,
)


def kl_experiment(n: int = 1000) -> dict:
    from vllm import LLM

    from declab.integrations.engine_run import CPU_ENGINE_KWARGS
    from declab.integrations.models import default_model

    model_path = default_model()
    tok, model = tokenizer_and_model(model_path)
    t0 = time.perf_counter()
    refs = {name: exact_reference(model_path, prompt, grammar, tok=tok, model=model)
            for name, prompt, grammar in EXPERIMENTS}
    exact_s = time.perf_counter() - t0
    del model
    llm = LLM(model=model_path, **{**CPU_ENGINE_KWARGS, "seed": 0})
    result = {"n": n, "exact_s": exact_s, "experiments": {}}
    for name, _, grammar in EXPERIMENTS:
        ref = refs[name]
        t = time.perf_counter()
        gcd = sample_strings(llm, tok, ref["prompt_ids"], grammar, "gcd", n, chunk=GCD_CHUNK)
        gcd_s = time.perf_counter() - t
        t = time.perf_counter()
        asap = sample_strings(llm, tok, ref["prompt_ids"], grammar, "asap", n, chunk=ASAP_CHUNK,
                              namespace=f"test-{name}")
        asap_s = time.perf_counter() - t
        result["experiments"][name] = {**public(ref), "gcd_samples": gcd, "asap_samples": asap, "gcd_s": gcd_s,
                                       "asap_s": asap_s}
    # Admission: an invalid grammar is rejected naming the parameter once request_args calls the spec's validate
    # hook. Without it the worker would raise on the request, so it is only sent when the front-end rejects it.
    from vllm import SamplingParams

    from declab.integrations.request_args import parse_request_args

    bad = {"declab": {"method": "asap", "grammar": "root ::= ("}}
    try:
        parse_request_args(bad)
        wired = False
    except ValueError:
        wired = True
    if not wired:
        result["bad_grammar_error"] = "not-wired"
    else:
        try:
            llm.generate(["x"], SamplingParams(max_tokens=2, extra_args=bad), use_tqdm=False)
            result["bad_grammar_error"] = None
        except Exception as e:  # noqa: BLE001
            result["bad_grammar_error"] = f"{type(e).__name__}: {e}"
    after = llm.generate(["x"], SamplingParams(max_tokens=2), use_tqdm=False)
    result["after_error_tokens"] = len(after[0].outputs[0].token_ids)
    return result


# Engine checks of issue #5 (acceptance 4). The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, set
# by the test) so the worker's trie store is read directly.
JSON_SCHEMA = json.dumps({"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                                           "n": {"type": "integer"}}, "required": ["name", "n"]})
CODE = ("def fibonacci(n):\n    ", "import os\nimport sys\n\n\ndef main():\n    ",
        "class Stack:\n    def __init__(self):\n        ", "def read_file(path):\n    with open(path) as f:\n        ")


def _trie(namespace: str):
    from declab.plugins.asap.core import LOCK, STORE

    with LOCK:
        found = [STORE.get(k) for k in STORE.keys() if STORE.get(k).meta.get("namespace") == namespace]
        assert len(found) == 1, (namespace, len(found))
        return found[0].to_dict()


def _outs(res) -> list[dict]:
    return [{"token_ids": list(o.outputs[0].token_ids), "text": o.outputs[0].text,
             "finish_reason": o.outputs[0].finish_reason} for o in res]


def engine_checks() -> dict:
    """Mixed batch, one trie shared by concurrent requests, aborts: one engine, three experiments."""
    from vllm import SamplingParams

    from declab.plugins.asap.grammar_reference import EXPERIMENTS
    from declab.plugins.asap.core import store_stats

    llm = _llm()
    bits, pets = EXPERIMENTS[0][2], EXPERIMENTS[1][2]
    result: dict = {"eos": llm.get_tokenizer().eos_token_id}
    greedy = SamplingParams(temperature=0.0, max_tokens=24)

    def sp(method, **grammar):
        extra = {"method": method, **grammar}
        return SamplingParams(temperature=1.0, max_tokens=48, extra_args={"declab": extra})

    # 1. Mixed batch: plain greedy rows beside asap and gcd rows (EBNF and JSON Schema), against the plain rows alone.
    result["plain_alone"] = _outs(llm.generate(list(CODE), [greedy] * len(CODE), use_tqdm=False))
    prompts, params, kinds = [], [], []
    for i, code in enumerate(CODE):
        grammar = [{"grammar": bits}, {"grammar": pets}, {"json_schema": JSON_SCHEMA}][i % 3]
        for kind, p in (("plain", greedy), ("asap", sp("asap", namespace="mixed", **grammar)),
                        ("gcd", sp("gcd", **grammar))):
            prompts.append(code if kind == "plain" else f"Answer: {i}")
            params.append(p)
            kinds.append((kind, next(iter(grammar))))
    result["mixed"] = [{**o, "kind": k, "grammar": g}
                       for o, (k, g) in zip(_outs(llm.generate(prompts, params, use_tqdm=False)), kinds)]

    # 2. Concurrent requests sharing one (prompt, grammar): one batch, one trie.
    shared = llm.generate(["I saw a"] * 24, [sp("asap", grammar=pets, namespace="shared")] * 24, use_tqdm=False)
    result["shared"] = {"outputs": _outs(shared), "trie": _trie("shared")}

    # 3. Aborts: 16 requests on one trie through the engine loop, half of them aborted after two steps; then 8 more.
    engine = llm.llm_engine
    abort_params = sp("asap", json_schema=JSON_SCHEMA, namespace="abort")
    ids = [f"abort-{i}" for i in range(16)]
    for rid in ids:
        engine.add_request(rid, "Write a JSON value:\n", abort_params)
    seen: dict[str, dict] = {}
    steps = 0
    aborted = ids[::2]
    while engine.has_unfinished_requests():
        for o in engine.step():
            seen[o.request_id] = {"token_ids": list(o.outputs[0].token_ids), "text": o.outputs[0].text,
                                  "finish_reason": o.outputs[0].finish_reason, "finished": o.finished}
        steps += 1
        if steps == 2:
            engine.abort_request(aborted)
    result["abort"] = {"aborted": aborted, "outputs": seen, "trie_after_aborts": _trie("abort")}
    later = llm.generate(["Write a JSON value:\n"] * 8, [abort_params] * 8, use_tqdm=False)
    other = llm.generate(["I saw a"] * 4, [sp("gcd", grammar=pets)] * 4, use_tqdm=False)
    result["abort"].update({"later": _outs(later), "trie_after_later": _trie("abort"), "other": _outs(other)})
    result["store"] = store_stats()
    return result


def _llm():
    from vllm import LLM

    from declab.integrations.engine_run import CPU_ENGINE_KWARGS
    from declab.integrations.models import default_model

    return LLM(model=default_model(), **CPU_ENGINE_KWARGS)


if __name__ == "__main__":
    name = sys.argv[1]
    args = [int(a) for a in sys.argv[2:]]
    out = globals()[name](*args)
    print("RESULT " + json.dumps(out), flush=True)
