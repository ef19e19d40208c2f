"""ASAp through a real vLLM engine on decoder-29m (CPU), one engine (the ``asap`` profile: ``asap,gcd`` selected).

* Exactness (the paper's central claim): on finite grammars, sampling with ``asap`` converges to the LLM's
  distribution conditioned on the grammar, while plain grammar-constrained decoding (``gcd``) stays distorted. For
  each finite grammar of ``EXPERIMENTS`` the exact grammar-conditioned distribution over strings and plain GCD's
  exact distribution are computed in transformers (float32, ``declab.plugins.asap.grammar_reference``, shared with
  ``declab bench grammar``), then ``N`` outputs are sampled through the engine with each method at temperature 1.
  ASAp's samples after a burn-in go through a goodness-of-fit test against the exact target (``stats.py``), which
  GCD's samples and a sampler with a persistent 0.3-nat bias must fail (negative controls).
* Engine behaviour (issue #5, acceptance 4): a mixed batch of asap, gcd and plain rows; concurrent requests sharing
  one (prompt, grammar) update one trie consistently; the trie survives aborts. The engine runs inside its host, so
  the scenarios read the worker's trie store directly."""

from __future__ import annotations

import json
import math
import time

import pytest

from stats import goodness_of_fit

from declab.integrations import registry
from declab.plugins.asap.grammar_reference import (
    ASAP_CHUNK,
    EXPERIMENTS,
    GCD_CHUNK,
    empirical,
    exact_reference,
    public,
    sample_strings,
    tokenizer_and_model,
)
from declab.integrations.sdk.metrics import kl_divergence
from declab.integrations.models import default_model
from declab.integrations.request_args import parse_request_args
from declab.plugins.asap.core import AsapTrie, GrammarCache, GrammarSource, _logsumexp

pytestmark = pytest.mark.engine
N = 2000
CHECKPOINTS = (100, 300, 1000, 2000)
# ASAp converges: its first samples are biased by design (unexplored prefixes keep EFG 1). The fit is tested on the
# samples after BURN_IN, allowing a residual bias of TOLERANCE nats. Measured on samples 1000-2000 (vLLM CPU,
# decoder-29m): KL 0.008 (bits3) and 0.006 (pets), G 1.3 (3 df) and 10.8 (5 df); GCD's KL to the target is 1.5-2.9.
BURN_IN = 1000
TOLERANCE = 0.01
BIAS_NATS = 0.3  # the persistent bias of the synthetic negative control
JSON_SCHEMA = json.dumps({"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                                           "n": {"type": "integer"}}, "required": ["name", "n"]})
CODE = ("def fibonacci(n):\n    ", "import os\nimport sys\n\n\ndef main():\n    ",
        "class Stack:\n    def __init__(self):\n        ", "def read_file(path):\n    with open(path) as f:\n        ")


def kl_sampling(llm, prompt_ids: dict[str, list[int]], n: int) -> dict:
    """``n`` samples of gcd, then of asap, per grammar; then an invalid grammar at admission."""
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    tok = AutoTokenizer.from_pretrained(default_model())
    result: dict = {"experiments": {}}
    for name, _, grammar in EXPERIMENTS:
        t = time.perf_counter()
        gcd = sample_strings(llm, tok, prompt_ids[name], grammar, "gcd", n, chunk=GCD_CHUNK)
        gcd_s = time.perf_counter() - t
        t = time.perf_counter()
        asap = sample_strings(llm, tok, prompt_ids[name], grammar, "asap", n, chunk=ASAP_CHUNK,
                              namespace=f"test-{name}")
        asap_s = time.perf_counter() - t
        result["experiments"][name] = {"gcd_samples": gcd, "asap_samples": asap, "gcd_s": gcd_s, "asap_s": asap_s}
    # Admission: the front-end (request_args, which the HTTP server calls too) rejects an invalid grammar naming the
    # parameter. Were it not to, the worker would raise on the request, so it is only sent when the front-end
    # rejects it (and the test fails on ``front_end_error``).
    bad = {"declab": {"method": "asap", "grammar": "root ::= ("}}
    try:
        parse_request_args(bad)
        result["front_end_error"] = None
    except ValueError as e:
        result["front_end_error"] = f"{type(e).__name__}: {e}"
    result["bad_grammar_error"] = None
    if result["front_end_error"]:
        try:
            llm.generate(["x"], SamplingParams(max_tokens=2, extra_args=bad), use_tqdm=False)
        except Exception as e:  # noqa: BLE001
            result["bad_grammar_error"] = f"{type(e).__name__}: {e}"
    after = llm.generate(["x"], SamplingParams(max_tokens=2), use_tqdm=False)
    result["after_error_tokens"] = len(after[0].outputs[0].token_ids)
    return result


@pytest.fixture(scope="session")
def experiment(asap_engine, model_path):
    assert {"asap", "gcd"} <= set(registry.all_specs())
    tok, model = tokenizer_and_model(model_path)
    t0 = time.perf_counter()
    refs = {name: public(exact_reference(model_path, prompt, grammar, tok=tok, model=model))
            for name, prompt, grammar in EXPERIMENTS}
    exact_s = time.perf_counter() - t0
    del model
    result = asap_engine.run(kl_sampling, {name: ref["prompt_ids"] for name, ref in refs.items()}, N)
    result.update(n=N, exact_s=exact_s)
    for name, e in result["experiments"].items():
        e.update(refs[name])
    # The numbers, for the report / README (pytest -s shows them).
    for name, e in result["experiments"].items():
        print(f"\n{name}: " + json.dumps(_kls(e)))
    return result


def _kls(e: dict) -> dict:
    target = e["target"]
    return {
        "asap": {n: round(kl_divergence(empirical(e["asap_samples"][:n]), target), 4) for n in CHECKPOINTS},
        "gcd": {n: round(kl_divergence(empirical(e["gcd_samples"][:n]), target), 4) for n in CHECKPOINTS},
        "gcd_exact": round(kl_divergence(e["gcd"], target), 4),
        "gcd_vs_its_exact": round(kl_divergence(empirical(e["gcd_samples"]), e["gcd"]), 4),
        "asap_s": round(e["asap_s"], 1),
        "gcd_s": round(e["gcd_s"], 1),
    }


@pytest.fixture(params=["bits3", "pets"])
def exp(request, experiment):
    return experiment["experiments"][request.param]


def test_every_sample_is_grammatical(exp):
    language = set(exp["target"])
    for method in ("asap", "gcd"):
        samples = exp[f"{method}_samples"]
        assert len(samples) == N
        bad = [s for s in samples if s not in language]
        assert not bad, (method, bad[:5])


def test_gcd_samples_its_own_distorted_distribution(exp):
    """vLLM + the gcd plugin sample what the exact (transformers) GCD distribution predicts, which is far from the
    grammar-conditioned target: the distortion ASAp removes."""
    own, target = goodness_of_fit(exp["gcd_samples"], exp["gcd"]), goodness_of_fit(exp["gcd_samples"], exp["target"])
    print(f"\ngcd vs its exact distribution: {own}\ngcd vs the target: {target}")
    assert own.passes, own
    assert not target.passes, target  # negative control: the same test sees the distortion
    assert kl_divergence(exp["gcd"], exp["target"]) > 0.3


def biased_sampler(target: dict[str, float], distorted: dict[str, float], nats: float, n: int) -> list[str]:
    """``n`` samples of the mixture of ``target`` and ``distorted`` whose KL to ``target`` is ``nats`` (bisection
    on the weight), seeded: a sampler with a persistent bias of that size."""
    import random

    def mixture(w: float) -> dict[str, float]:
        return {s: (1 - w) * target.get(s, 0.0) + w * distorted.get(s, 0.0) for s in target}

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kl_divergence(mixture(mid), target) < nats else (lo, mid)
    q = mixture(hi)
    assert kl_divergence(q, target) >= nats * 0.99
    return random.Random(0).choices(list(q), weights=list(q.values()), k=n)


def test_asap_samples_the_grammar_conditioned_distribution_after_burn_in(exp):
    late = slice(BURN_IN, N)
    asap = goodness_of_fit(exp["asap_samples"][late], exp["target"], TOLERANCE)
    gcd = goodness_of_fit(exp["gcd_samples"][late], exp["target"], TOLERANCE)
    biased = goodness_of_fit(biased_sampler(exp["target"], exp["gcd"], BIAS_NATS, N - BURN_IN), exp["target"],
                             TOLERANCE)
    print(f"\nasap: {asap}\ngcd: {gcd}\n{BIAS_NATS}-nat biased sampler: {biased}")
    assert asap.passes, (asap, _kls(exp))
    # Negative controls: the same test fails plain GCD and a sampler with a persistent 0.3-nat bias.
    assert not gcd.passes, gcd
    assert not biased.passes, biased


def test_invalid_grammar_is_rejected_at_admission(experiment):
    assert experiment["front_end_error"] and "declab.grammar" in experiment["front_end_error"], \
        "the front-end (request_args) did not call the plugin's validate_request hook"
    err = experiment["bad_grammar_error"]
    assert err and "declab.grammar" in err, err
    assert experiment["after_error_tokens"] > 0  # the engine keeps serving


# ---------------------------------------------------------------------------------------------------------------
# Mixed batch, shared trie, aborts


def _trie(namespace: str):
    from declab.plugins.asap.core import LOCK, STORE  # the host's store (imported there, not pickled from here)

    with LOCK:
        found = [STORE.get(k) for k in STORE.keys() if STORE.get(k).meta.get("namespace") == namespace]
        assert len(found) == 1, (namespace, len(found))
        return found[0].to_dict()


def _outs(res) -> list[dict]:
    return [{"token_ids": list(o.outputs[0].token_ids), "text": o.outputs[0].text,
             "finish_reason": o.outputs[0].finish_reason} for o in res]


def engine_checks(llm) -> dict:
    """Mixed batch, one trie shared by concurrent requests, aborts: one engine, three experiments."""
    from vllm import SamplingParams

    from declab.plugins.asap.core import store_stats  # reads the host's store
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
                       for o, (k, g) in zip(_outs(llm.generate(prompts, params, use_tqdm=False)), kinds, strict=True)]

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


@pytest.fixture(scope="session")
def checks(asap_engine):
    return asap_engine.run(engine_checks)


@pytest.fixture(scope="session")
def grammar_check(model_path):
    """``(grammar param, text) -> callable(token_ids, finished) -> bool``: the xgrammar matcher accepts every token,
    and a finished output is a complete sentence (the stop token accepted)."""
    import xgrammar as xgr
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    cache = GrammarCache.from_tokenizer(tok, vocab_size=8192, stop_token_ids=[tok.eos_token_id])

    def check(param: str, text: str, token_ids: list[int], finished: bool) -> bool:
        m = xgr.GrammarMatcher(cache.compile(GrammarSource(param, text)), override_stop_tokens=[tok.eos_token_id])
        ids = list(token_ids)
        if finished and ids and ids[-1] != tok.eos_token_id:
            ids.append(tok.eos_token_id)  # vLLM may leave the stop token out of token_ids
        return all(m.accept_token(t) for t in ids) and (m.is_terminated() if finished else True)

    return check


def test_plain_rows_of_a_mixed_batch_are_token_identical_to_a_plain_run(checks):
    plain = [o for o in checks["mixed"] if o["kind"] == "plain"]
    assert len(plain) == len(checks["plain_alone"]) >= 4
    assert [o["token_ids"] for o in plain] == [o["token_ids"] for o in checks["plain_alone"]]


def test_asap_and_gcd_rows_of_a_mixed_batch_are_grammatical(checks, grammar_check):
    grammars = [("grammar", EXPERIMENTS[0][2]), ("grammar", EXPERIMENTS[1][2]), ("json_schema", JSON_SCHEMA)]
    rows = [o for o in checks["mixed"] if o["kind"] != "plain"]
    assert {o["kind"] for o in rows} == {"asap", "gcd"}
    for i, o in enumerate(rows):
        param, text = grammars[(i // 2) % 3]
        assert o["grammar"] == param
        assert o["finish_reason"] in ("stop", "length"), o
        assert grammar_check(param, text, o["token_ids"], o["finish_reason"] == "stop"), o
    # The finite grammars always finish within 48 tokens.
    assert all(o["finish_reason"] == "stop" for o in rows if o["grammar"] == "grammar")


def _strip(ids: list[int], eos: int) -> tuple[int, ...]:
    return tuple(ids[:-1] if ids and ids[-1] == eos else ids)


def _check_trie(d: dict) -> dict[tuple, dict]:
    """Structural consistency of an exported trie; returns ``prefix -> node``. Every node below the root was
    reached by a request; a node's visits are at least its children's; A recomputed from (logp, rest) is at most 1,
    matches the exported root value, and the trie loads back to the same A."""
    n = d["nodes"]
    count = len(n["parent"])
    prefix = {0: ()}
    for i in range(1, count):
        prefix[i] = prefix[n["parent"][i]] + (n["token"][i],)
    children: dict[int, list[int]] = {i: [] for i in range(count)}
    for i in range(1, count):
        children[n["parent"][i]].append(i)
    log_a = {}
    for i in reversed(range(count)):  # breadth-first order: children after parents
        if n["rest"][i] is None:
            log_a[i] = 0.0
        else:
            log_a[i] = _logsumexp([n["rest"][i]] + [n["logp"][c] + log_a[c] for c in children[i]])
        assert log_a[i] <= 1e-9
        assert n["visits"][i] >= sum(n["visits"][c] for c in children[i]), prefix[i]
        if i:
            assert n["visits"][i] >= 1
    assert n["visits"][0] == d["samples"]
    assert math.isclose(log_a[0], d["log_efg_root"], rel_tol=1e-9, abs_tol=1e-12)
    loaded = AsapTrie.from_dict(d)
    assert math.isclose(loaded.log_efg(loaded.root), d["log_efg_root"], rel_tol=1e-9, abs_tol=1e-12)
    return {prefix[i]: {"visits": n["visits"][i], "rest": n["rest"][i]} for i in range(count)}


def test_concurrent_requests_sharing_a_prompt_and_grammar_update_one_trie_consistently(checks, grammar_check):
    eos = checks["eos"]
    shared = checks["shared"]
    outs = shared["outputs"]
    assert len(outs) == 24 and all(o["finish_reason"] == "stop" for o in outs)
    assert all(grammar_check("grammar", EXPERIMENTS[1][2], o["token_ids"], True) for o in outs)
    nodes = _check_trie(shared["trie"])
    assert shared["trie"]["samples"] == 24
    # Visit counts are exactly the number of samples through each prefix; every node lies on some sample's path.
    expected: dict[tuple, int] = {}
    for o in outs:
        path = _strip(o["token_ids"], eos)
        for i in range(len(path) + 1):
            expected[path[:i]] = expected.get(path[:i], 0) + 1
    assert {p: v["visits"] for p, v in nodes.items()} == expected
    # Every prefix a sample went through was visited (its allowed mass recorded).
    assert all(v["rest"] is not None for v in nodes.values())


def test_the_trie_survives_request_aborts(checks, grammar_check):
    eos = checks["eos"]
    ab = checks["abort"]
    schema = JSON_SCHEMA
    aborted = set(ab["aborted"])
    finished = {rid: o for rid, o in ab["outputs"].items() if rid not in aborted}
    assert len(finished) == 8 and all(o["finished"] for o in finished.values())
    for o in finished.values():
        assert grammar_check("json_schema", schema, o["token_ids"], o["finish_reason"] == "stop"), o
    for rid in aborted:  # stopped midway: a grammatical prefix, never finished
        o = ab["outputs"][rid]
        assert not o["finished"] and 0 < len(o["token_ids"]) < 48
        assert grammar_check("json_schema", schema, o["token_ids"], False)
    nodes = _check_trie(ab["trie_after_aborts"])
    assert ab["trie_after_aborts"]["samples"] == 16
    for o in finished.values():  # the finished requests' paths are in the trie
        path = _strip(o["token_ids"], eos)
        if o["finish_reason"] == "length":  # the last token was sampled, never seen by the processor
            path = path[:-1]
        assert all(path[:i] in nodes for i in range(len(path) + 1)), o
    # Later requests on the same trie run normally and keep it consistent; other requests are unaffected.
    assert all(o["finish_reason"] in ("stop", "length") and
               grammar_check("json_schema", schema, o["token_ids"], o["finish_reason"] == "stop")
               for o in ab["later"])
    after = _check_trie(ab["trie_after_later"])
    assert ab["trie_after_later"]["samples"] == 24
    assert set(nodes) <= set(after)
    assert len(ab["other"]) == 4 and all(o["finish_reason"] == "stop" for o in ab["other"])
