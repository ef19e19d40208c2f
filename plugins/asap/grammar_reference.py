"""Exact grammar-conditioned distributions on finite grammars, and sampling them through vLLM (paper 65, ASAp).

Shared by the ASAp engine tests (``tests/test_asap_engine.py``) and ``declab bench grammar``. For a finite grammar the
reference enumerates, with the xgrammar matcher, every token sequence the grammar allows (EOS included), scores each
prefix with the model in transformers (float32) and sums the probabilities of the tokenizations of one string: the
exact grammar-conditioned distribution ``P(s | s in G)`` that ASAp converges to, and plain GCD's exact (distorted)
distribution. ``sample_strings`` draws outputs of ``asap`` / ``gcd`` through a running vLLM engine.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from declab.integrations.sdk.bench import kl_divergence

# (name, prompt, EBNF). Both languages are finite; every string has several tokenizations on decoder-29m.
EXPERIMENTS = (
    # GAD's fixed-length binary strings (examples/test/binary_len_3.ebnf of the reference is a subset of this).
    ("bits3", "The answer is", 'root ::= ("0" | "1") ("0" | "1") ("0" | "1")'),
    # Words the model splits in several competing ways (" catalog" = " cat" + "alog" = " c" + "atalog" ...).
    ("pets", "I saw a",
     'root ::= " " ("cat" | "catalog" | "cattle" | "dog" | "dogma") ("." | "s.")'),
)

ASAP_CHUNK = 8  # ASAp requests submitted together (they see the same trie state); chunks run one after another
GCD_CHUNK = 256  # GCD samples are independent: big chunks
UNFINISHED = "<unfinished>"  # a sample that did not end with EOS within max_tokens


def tokenizer_and_model(model_path: str):
    """The HF tokenizer and the float32 causal LM (eval mode) for the exact reference."""
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
    """Exact distributions over strings for a finite grammar: ``{"target": {s: p}, "gcd": {s: p}, ...}``.

    Keys starting with ``_`` (the token prefix tree and the log-prob rows) are for in-process use only.
    """
    from declab.plugins.asap.core import (
        GrammarCache,
        GrammarSource,
        complete_sequences,
        exact_distributions,
        grammar_prefix_tree,
    )

    if tok is None or model is None:
        tok, model = tokenizer_and_model(model_path)
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


def public(ref: Mapping[str, Any]) -> dict[str, Any]:
    """``ref`` without its in-process-only entries (JSON-serialisable)."""
    return {k: v for k, v in ref.items() if not k.startswith("_")}


def sample_strings(llm, tok, prompt_ids, grammar: str, method: str, n: int, chunk: int, **declab) -> list[str]:
    """``n`` outputs of one method at temperature 1 (no per-request seed: the engine is seeded), in chunks of
    ``chunk`` requests submitted together, chunk after chunk. An output that did not stop is ``UNFINISHED``."""
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
            out.append(tok.decode(ids) if o.finish_reason == "stop" else UNFINISHED)
    return out


def empirical(samples: Sequence[Any]) -> dict[Any, float]:
    """Relative frequencies of ``samples``."""
    counts: dict[Any, int] = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    return {k: v / len(samples) for k, v in counts.items()} if samples else {}


def kl_curve(samples: Sequence[Any], target: Mapping[Any, float], checkpoints: Iterable[int]) -> dict[int, float]:
    """KL(empirical of the first n samples || target) for each checkpoint n (nats)."""
    return {n: kl_divergence(empirical(samples[:n]), target) for n in checkpoints if n <= len(samples)}
