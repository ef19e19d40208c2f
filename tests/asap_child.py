"""Child-process program for the ASAp engine test: ``python tests/asap_child.py NAME [N]`` prints one JSON line.

``kl_experiment``: for each finite grammar of ``EXPERIMENTS`` it computes, with transformers (float32), the exact
grammar-conditioned distribution over strings (every token sequence the grammar allows, EOS included, enumerated
with the xgrammar matcher; the probabilities of the tokenizations of one string are summed) and plain GCD's exact
distribution, then samples ``N`` outputs through one vLLM engine with ``asap`` and with ``gcd`` at temperature 1.
The benchmark reuses ``exact_reference`` and ``sample_strings``.
"""

from __future__ import annotations

import json
import sys
import time

# (name, prompt, EBNF). Both languages are finite; every string has several tokenizations on decoder-29m.
EXPERIMENTS = (
    # GAD's fixed-length binary strings (examples/test/binary_len_3.ebnf of the reference is a subset of this).
    ("bits3", "The answer is", 'root ::= ("0" | "1") ("0" | "1") ("0" | "1")'),
    # Words the model splits in several competing ways (" catalog" = " cat" + "alog" = " c" + "atalog" ...).
    ("pets", "I saw a",
     'root ::= " " ("cat" | "catalog" | "cattle" | "dog" | "dogma") ("." | "s.")'),
)

ASAP_CHUNK = 8  # ASAp requests submitted together (they see the same trie state); chunks run one after another


def _tokenizer_and_model(model_path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.eval()
    return tok, model


def prefix_logprobs(model, prompt_ids, prefixes, *, pad_id: int, batch: int = 32) -> dict:
    """The model's float32 log-prob row after ``prompt_ids + p`` for every token prefix ``p`` of ``prefixes``.

    One causal forward pass per maximal prefix covers all of its prefixes; right padding never changes the rows of
    earlier positions, so sequences of different lengths share a batch without an attention mask.
    """
    import torch

    prefixes = set(prefixes)
    has_child = {p[:-1] for p in prefixes if p}
    maximal = sorted(p for p in prefixes if p not in has_child)
    logprobs = {}
    with torch.no_grad():
        for start in range(0, len(maximal), batch):
            group = maximal[start:start + batch]
            width = len(prompt_ids) + max(len(p) for p in group)
            ids = torch.full((len(group), width), pad_id, dtype=torch.long)
            for j, p in enumerate(group):
                seq = list(prompt_ids) + list(p)
                ids[j, :len(seq)] = torch.tensor(seq)
            rows = torch.log_softmax(model(ids).logits.float(), dim=-1)
            for j, p in enumerate(group):
                for i in range(len(p) + 1):
                    if p[:i] in prefixes:
                        logprobs[p[:i]] = rows[j, len(prompt_ids) - 1 + i].clone()
    return logprobs


def exact_reference(model_path: str, prompt: str, grammar: str, *, tok=None, model=None) -> dict:
    """Exact distributions over strings for a finite grammar: ``{"target": {s: p}, "gcd": {s: p}, ...}``."""
    import torch

    from declab.plugins.asap.core import (
        GrammarCache,
        GrammarSource,
        complete_sequences,
        exact_distributions,
        grammar_prefix_tree,
    )

    if tok is None or model is None:
        tok, model = _tokenizer_and_model(model_path)
    vocab_size = model.config.vocab_size
    eos = tok.eos_token_id
    cache = GrammarCache.from_tokenizer(tok, vocab_size=vocab_size, stop_token_ids=[eos])
    tree = grammar_prefix_tree(cache.compile(GrammarSource("grammar", grammar)), vocab_size=vocab_size,
                               stop_token_ids=[eos])
    prompt_ids = tok.encode(prompt, add_special_tokens=False)
    logprobs = prefix_logprobs(model, prompt_ids, tree, pad_id=eos)
    target_seq, gcd_seq, log_z = exact_distributions(tree, logprobs, [eos])
    target: dict[str, float] = {}
    gcd: dict[str, float] = {}
    for w in complete_sequences(tree, [eos]):
        s = tok.decode(list(w[:-1]))
        target[s] = target.get(s, 0.0) + target_seq[w]
        gcd[s] = gcd.get(s, 0.0) + gcd_seq[w]
    return {"prompt_ids": prompt_ids, "target": target, "gcd": gcd, "log_z": log_z,
            "n_sequences": len(target_seq), "n_prefixes": len(tree), "_tree": tree, "_logprobs": logprobs}


def sample_strings(llm, tok, prompt_ids, grammar: str, method: str, n: int, chunk: int, **declab) -> list[str]:
    """``n`` outputs of one method at temperature 1 (no per-request seed: the engine is seeded), in chunks of
    ``chunk`` requests submitted together, chunk after chunk."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    sp = SamplingParams(temperature=1.0, top_p=1.0, top_k=-1, max_tokens=16,
                        extra_args={"declab": {"method": method, "grammar": grammar, **declab}})
    out: list[str] = []
    while len(out) < n:
        k = min(chunk, n - len(out))
        res = llm.generate([TokensPrompt(prompt_token_ids=list(prompt_ids))] * k, [sp] * k, use_tqdm=False)
        for r in res:
            o = r.outputs[0]
            ids = list(o.token_ids)
            if ids and ids[-1] == tok.eos_token_id:
                ids = ids[:-1]
            out.append(tok.decode(ids) if o.finish_reason == "stop" else "<unfinished>")
    return out


def kl_experiment(n: int = 1000) -> dict:
    from vllm import LLM

    from declab.integrations.engine_run import CPU_ENGINE_KWARGS
    from declab.integrations.models import default_model

    model_path = default_model()
    tok, model = _tokenizer_and_model(model_path)
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
        gcd = sample_strings(llm, tok, ref["prompt_ids"], grammar, "gcd", n, chunk=256)
        gcd_s = time.perf_counter() - t
        t = time.perf_counter()
        asap = sample_strings(llm, tok, ref["prompt_ids"], grammar, "asap", n, chunk=ASAP_CHUNK,
                              namespace=f"test-{name}")
        asap_s = time.perf_counter() - t
        ref = {k: v for k, v in ref.items() if not k.startswith("_")}
        result["experiments"][name] = {**ref, "gcd_samples": gcd, "asap_samples": asap, "gcd_s": gcd_s,
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


if __name__ == "__main__":
    name = sys.argv[1]
    args = [int(a) for a in sys.argv[2:]]
    out = globals()[name](*args)
    print("RESULT " + json.dumps(out), flush=True)
