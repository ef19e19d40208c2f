"""``declab bench superposed``: k completions per request from Superposed Decoding vs k nucleus samples (and greedy)
on the same engine and prompts (code prompts and Spec-Bench first turns).

Measured per configuration, all prompts in one batch:

* cost: the model's token evaluations (positions computed, prompt prefill included, counted in the worker around
  the runner's forward) and forward passes, wall time; superposed decodes k drafts in one row, nucleus decodes k
  rows (vLLM's own ``vllm:iteration_tokens_total`` cannot tell: it counts tokens from the outputs the client gets);
* coherence: perplexity of each completion under the served model (decoder-29m), conditioned on its prompt (the
  engine's prompt log-probs of prompt + completion, a plain request);
* diversity among the k completions of a prompt: distinct-1/2/3 (pooled), self-BLEU-4 (each completion against the
  others; lower = more diverse), and the share of identical pairs;
* agreement with the plain-transformers reference (``reference.py``: the same drafts fed through HF transformers'
  ``inputs_embeds`` with its own KV cache) on the first ``--reference-prompts`` prompts: share of prompts whose k
  completions are token-identical.

One engine with the plugin selected (nucleus and greedy rows are plain requests on it), in a child process.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from typing import Any, Sequence

from declab.integrations.sdk.bench import CODE_PROMPTS, CPU_ENGINE_KWARGS, call_in_child, default_model, \
    spec_bench_prompts

MEASURE_TARGET = "declab.plugins.superposed.bench:measure"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--code-prompts", type=int, default=16, help="first N code prompts")
    parser.add_argument("--spec-bench-per-category", type=int, default=2,
                        help="first N Spec-Bench first turns (<= 600 characters) per category")
    parser.add_argument("--k", type=int, default=3, help="completions per prompt")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling's p (the paper's baseline)")
    parser.add_argument("--reference-prompts", type=int, default=8,
                        help="first N prompts also decoded by the plain-transformers reference")
    return parser


# ------------------------------------------------------------------------------------------------ metrics (pure)


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu(hypothesis: Sequence[int], references: Sequence[Sequence[int]], max_n: int = 4) -> float:
    """Sentence BLEU-``max_n`` of token ids with add-one smoothing of the n-gram precisions (Lin & Och 2004)."""
    if not hypothesis or not references:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        hyp = Counter(tuple(hypothesis[i : i + n]) for i in range(len(hypothesis) - n + 1))
        best: Counter = Counter()
        for ref in references:
            for g, c in Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)).items():
                best[g] = max(best[g], c)
        matched = sum(min(c, best[g]) for g, c in hyp.items())
        log_p += math.log((matched + 1) / (sum(hyp.values()) + 1))
    closest = min((abs(len(r) - len(hypothesis)), len(r)) for r in references)[1]
    bp = 1.0 if len(hypothesis) > closest else math.exp(1 - closest / len(hypothesis))
    return bp * math.exp(log_p / max_n)


def self_bleu(sequences: Sequence[Sequence[int]]) -> float:
    if len(sequences) < 2:
        return 0.0
    scores = [bleu(s, [o for j, o in enumerate(sequences) if j != i]) for i, s in enumerate(sequences)]
    return sum(scores) / len(scores)


def diversity(per_prompt: Sequence[Sequence[Sequence[int]]]) -> dict[str, float]:
    m = max(1, len(per_prompt))
    pairs = [(a, b) for group in per_prompt for i, a in enumerate(group) for b in group[i + 1 :]]
    return {
        **{f"distinct_{n}": sum(distinct_n(g, n) for g in per_prompt) / m for n in (1, 2, 3)},
        "self_bleu4": sum(self_bleu(g) for g in per_prompt) / m,
        "identical_pair_share": sum(list(a) == list(b) for a, b in pairs) / max(1, len(pairs)),
    }


# ------------------------------------------------------------------------------------------------ child side


def count_forward_tokens(worker) -> None:
    """Worker side (``collective_rpc``): count the positions and forward passes the model computes, on the runner
    instance (the row-input-embeddings seam wraps the class's ``_model_forward``; this wraps the instance's)."""
    runner = worker.model_runner
    if "_model_forward" in runner.__dict__:
        return
    inner = runner._model_forward
    runner._declab_bench_counts = {"token_evaluations": 0, "forwards": 0}

    def counted(*args, **kwargs):
        if runner.input_batch.num_reqs:
            counts = runner._declab_bench_counts
            counts["token_evaluations"] += int(runner.query_start_loc.np[runner.input_batch.num_reqs])
            counts["forwards"] += 1
        return inner(*args, **kwargs)

    runner._model_forward = counted


def forward_counts(worker) -> dict:
    return dict(worker.model_runner._declab_bench_counts)


def _counts(llm) -> dict[str, int]:
    return llm.collective_rpc(forward_counts)[0]


def _perplexities(llm, prompt_ids: list[list[int]], completions: list[list[list[int]]]) -> list[list[float]]:
    """Perplexity of each completion given its prompt under the served model: the engine's prompt log-probs of
    prompt + completion (a plain request: no plugin acts on it)."""
    from vllm import SamplingParams, TokensPrompt

    seqs = [(i, j, ids, list(c)) for i, (ids, comps) in enumerate(zip(prompt_ids, completions))
            for j, c in enumerate(comps) if c]
    outs = llm.generate([TokensPrompt(prompt_token_ids=ids + c) for _, _, ids, c in seqs],
                        SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0), use_tqdm=False)
    out = [[float("nan")] * len(comps) for comps in completions]
    for (i, j, ids, c), o in zip(seqs, outs):
        lps = o.prompt_logprobs
        nll = -sum(lps[p][tok].logprob for p, tok in zip(range(len(ids), len(ids) + len(c)), c)) / len(c)
        out[i][j] = math.exp(nll)
    return out


def _run_config(llm, prompts: list[str], params) -> dict[str, Any]:
    llm.reset_prefix_cache()  # each configuration computes its prompts (none reuses another's KV)
    before = _counts(llm)
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - t
    after = _counts(llm)
    return {
        "seconds": seconds,
        **{k: after[k] - before[k] for k in after},
        "completions": [[list(c.token_ids) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs],
        "finish_reasons": [[c.finish_reason for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs],
    }


def measure(payload: dict[str, Any]) -> dict[str, Any]:
    """Child side: one engine with the plugin selected; every configuration on the same prompts."""
    import os

    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams

    from declab.plugins.superposed.ngram import stdlib_tables
    from declab.plugins.superposed.processor import vocab_fingerprint
    from declab.plugins.superposed.reference import reference_completions
    from declab.plugins.superposed.core import DEFAULT_NGRAM_WEIGHTS

    assert os.environ.get("DECLAB_PLUGINS") == "superposed"
    k, max_tokens, prompts = payload["k"], payload["max_tokens"], payload["prompts"]
    engine = dict(CPU_ENGINE_KWARGS)
    llm = LLM(model=payload["model"], **engine)
    llm.collective_rpc(count_forward_tokens)
    tokenizer = llm.get_tokenizer()
    t = time.perf_counter()
    tables, cache_path = stdlib_tables(lambda s: list(tokenizer.encode(s, add_special_tokens=False)),
                                       vocab_fingerprint(tokenizer))
    ngram_s = time.perf_counter() - t

    def superposed(**extra) -> SamplingParams:
        return SamplingParams(n=k, temperature=1.0, max_tokens=max_tokens,
                              extra_args={"declab": {"method": "superposed", "k": k, **extra}})

    configs = {
        "superposed": superposed(),
        "superposed_no_ngram": superposed(ngram=False),
        f"nucleus_p{payload['top_p']}": SamplingParams(n=k, temperature=1.0, top_p=payload["top_p"],
                                                      max_tokens=max_tokens, seed=0),
        "greedy": SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens),
    }
    llm.generate(prompts[:2], [configs["superposed"], configs["greedy"]], use_tqdm=False)  # warm-up
    results = {name: _run_config(llm, prompts, params) for name, params in configs.items()}

    hf = AutoModelForCausalLM.from_pretrained(payload["model"], torch_dtype="float32").eval()
    prompt_ids = [list(tokenizer.encode(p)) for p in prompts]
    eos = tokenizer.eos_token_id

    def score(tokens, ctx):
        return tables.interpolated(ctx, tokens, DEFAULT_NGRAM_WEIGHTS)

    n_ref = min(payload["reference_prompts"], len(prompts))
    reference = [[toks for toks, _ in reference_completions(
        hf, ids, k=k, max_tokens=max_tokens, eos_token_id=eos, ngram=lambda ctx, c: score(c, ctx), alpha=0.54,
        softmax_temperature=0.06, n_token_sample=9, penalty=200.0)] for ids in prompt_ids[:n_ref]]
    engine_sp = results["superposed"]["completions"][:n_ref]
    summary = {}
    for name, r in results.items():
        ppl = _perplexities(llm, prompt_ids, r["completions"])
        flat = [x for row in ppl for x in row if not math.isnan(x)]
        summary[name] = {
            "completions_per_prompt": sum(len(c) for c in r["completions"]) / len(prompts),
            "token_evaluations": r["token_evaluations"],
            "forwards": r["forwards"],
            "seconds": round(r["seconds"], 3),
            "perplexity_mean": sum(flat) / len(flat),
            "perplexity_median": sorted(flat)[len(flat) // 2],
            "perplexity_best_completion": sum(row[0] for row in ppl) / len(ppl),
            "mean_length": sum(len(c) for comps in r["completions"] for c in comps) / max(1, len(flat)),
            **diversity(r["completions"]),
        }
        r["perplexities"] = ppl
    nucleus = summary[f"nucleus_p{payload['top_p']}"]
    sp = summary["superposed"]
    return {
        "benchmark": "superposed", "model": payload["model"], "engine": engine, "k": k, "max_tokens": max_tokens,
        "prompts": prompts, "prompt_groups": payload["groups"],
        "ngram_tables": {**tables.describe(), "cache_file": cache_path.name,
                         "cache_file_bytes": cache_path.stat().st_size, "load_or_build_s": round(ngram_s, 2)},
        "summary": summary,
        "forwards_saved_vs_nucleus": {
            "token_evaluations_ratio": sp["token_evaluations"] / nucleus["token_evaluations"],
            "token_evaluations_saved": nucleus["token_evaluations"] - sp["token_evaluations"],
            "decode_positions_per_prompt": {"superposed": max_tokens, "nucleus": k * max_tokens},
            "note": "token evaluations = positions the model computed (prompts included), counted in the worker; "
                    "the prefix cache is reset before each configuration; nucleus's k rows of a prompt may share "
                    "its full KV blocks through prefix caching",
        },
        "reference_agreement": {
            "prompts": n_ref,
            "prompts_token_identical": sum(a == b for a, b in zip(engine_sp, reference)) / n_ref,
            "completions_token_identical": sum(x == y for a, b in zip(engine_sp, reference)
                                               for x, y in zip(a, b)) / (k * n_ref),
        },
        "texts_prompt0": {name: [tokenizer.decode(c) for c in r["completions"][0]] for name, r in results.items()},
        "runs": results,
    }


def prompt_set(code_prompts: int, per_category: int) -> tuple[list[str], list[str]]:
    prompts = list(CODE_PROMPTS[:code_prompts])
    groups = ["code"] * len(prompts)
    seen: Counter = Counter()
    for cat, text in spec_bench_prompts(max_chars=600):
        if seen[cat] < per_category:
            seen[cat] += 1
            prompts.append(text)
            groups.append(cat)
    return prompts, groups


def run(args) -> dict[str, Any]:
    prompts, groups = prompt_set(args.code_prompts, args.spec_bench_per_category)
    payload = {"model": str(args.model or default_model()), "prompts": prompts, "groups": groups, "k": args.k,
               "max_tokens": args.max_tokens, "top_p": args.top_p, "reference_prompts": args.reference_prompts}
    # collective_rpc ships the worker-side counter as a function: vLLM then needs pickle-based serialization.
    env = {"DECLAB_PLUGINS": "superposed", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    return call_in_child(MEASURE_TARGET, payload, env=env, timeout=None, name="superposed engine")


def summary(report: dict[str, Any]) -> str:
    lines = [f"{name:<22} " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in s.items()) for name, s in report["summary"].items()]
    lines.append(f"forwards: {report['forwards_saved_vs_nucleus']}")
    lines.append(f"reference agreement: {report['reference_agreement']}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["summary"])
    s = report["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in zip(axes, ("token_evaluations", "perplexity_mean", "distinct_2"),
                              ("token evaluations (all prompts)", "perplexity under the model (mean)",
                               "distinct-2 among the k completions")):
        ax.bar(range(len(names)), [s[n][key] for n in names])
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
