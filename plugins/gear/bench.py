"""``declab bench attention``: fidelity to full attention of the attention-backend plugins (GEAR and its plain
quantization baseline KIVI-like; TidalDecode and its StreamingLLM baseline), on contexts up to 512 tokens.

decoder-29m was trained on 512-token sequences and does not retrieve across passages, so every figure is fidelity
to full attention (vanilla vLLM) on contexts <= 512 tokens, one configuration per engine (each in a child process,
block size 32, prefix caching on):

* **greedy agreement over ``--max-tokens`` (128) tokens** after ``--context-tokens`` (384) of context: code files
  (declab's own sources, written after the model was trained: held-out) and Spec-Bench first turns (the longest).
  ``agreement``: mean share of the generated tokens before the first divergence from vanilla's;
  ``position_match``: share of positions with the same token. Also CPU tokens/s of that batch, and for the
  selectors the recall of their chosen positions against the exact top-``budget`` positions of each sparse layer
  (attention probabilities summed over the query heads of each KV head).
* **next-token KL to full attention and perplexity** at decode steps: a held-out passage of 512 tokens is cut at
  ``n = 32 m + 1``; the first ``32 m`` tokens are prefilled (and cached), then the ``n``-token prompt computes
  exactly one token (``q_len = 1``: a decode row, with the context's blocks packed for the codecs), whose full
  next-token distribution is compared with vanilla's (KL(full || method)) and scores the passage's true next token
  (perplexity over all cut points).
* **KV capacity** vLLM reports at start-up (``num_gpu_blocks x block_size`` for ``VLLM_CPU_KVCACHE_SPACE``) and
  KV bytes per token (all layers) that it implies.

Acceptance (issue #17): TidalDecode at a budget of 1/8 of the context beats StreamingLLM on agreement and KL; GEAR at
~4 bits gives >= 3x vanilla's capacity, agreement >= 95 %, perplexity within 2 % and beats the plain 4-bit baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from declab.integrations.sdk.bench import (
    CPU_ENGINE_KWARGS,
    IN_PROCESS_ENGINE_ENV,
    add_option,
    call_in_child,
    default_model,
    spec_bench_prompts,
)

BLOCK = 32
SOURCES = ("integrations/sdk/attention.py", "plugins/gear/codec.py", "integrations/engine_run.py",
           "integrations/sdk/bench.py", "patches/tree_verification.py", "integrations/sdk/trees.py",
           "integrations/catalog.py", "integrations/sdk/runtime.py")
ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_option(parser, "--model", default=None, help="model path (default: the bundled decoder-29m)")
    add_option(parser, "--out", default="measurements/attention", help="folder of attention.json / .png")
    parser.add_argument("--budgets", default="32,64,128,256", help="token budgets of TidalDecode and StreamingLLM")
    parser.add_argument("--codecs", default="kivi:4,gear:4,kivi:2,gear:2",
                        help="codec configurations plugin:bits[:keys] (gear: rank 4, outlier ratio 0.02; keys "
                             "'channel' (its default) or 'token')")
    parser.add_argument("--prompts", type=int, default=8, help="greedy contexts (half code files, half Spec-Bench)")
    parser.add_argument("--context-tokens", type=int, default=384)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--passages", type=int, default=6, help="held-out 512-token passages for KL / perplexity")
    parser.add_argument("--child-timeout", type=float, default=1800)
    return parser


def configurations(args: argparse.Namespace) -> dict[str, tuple[str | None, dict[str, Any]]]:
    out: dict[str, tuple[str | None, dict[str, Any]]] = {"vanilla": (None, {})}
    for budget in (int(b) for b in args.budgets.split(",") if b):
        out[f"tidaldecode_b{budget}"] = ("tidaldecode", {"budget": budget})
        out[f"streamingllm_b{budget}"] = ("streamingllm", {"budget": budget})
    for item in filter(None, args.codecs.split(",")):
        plugin, bits, *keys = item.split(":")
        settings = {"bits": int(bits)}
        name = f"{plugin}_{bits}bit"
        if plugin == "gear":
            settings.update(rank=4, outlier_ratio=0.02)
            if keys:  # gear:BITS:token / gear:BITS:channel (default: the plugin's, per-channel keys)
                settings["keys"] = keys[0]
                name += f"_{keys[0]}_keys"
        out[name] = (plugin, settings)
    return out


def build_inputs(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Token ids: greedy contexts and held-out passages (declab's own sources: newer than the model)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    files = [tok.encode((ROOT / s).read_text()) for s in SOURCES]
    half = args.prompts // 2
    contexts = [ids[: args.context_tokens] for ids in files[:half]]
    bench = sorted((tok.encode(text) for _, text in spec_bench_prompts()), key=len, reverse=True)
    contexts += [ids[: args.context_tokens] for ids in bench[: args.prompts - len(contexts)]]
    passages = []
    for ids in files:
        for start in range(600, len(ids) - 512, 700):  # away from the file's start (the greedy contexts)
            if len(passages) < args.passages:
                passages.append(ids[start : start + 512])
    return {"contexts": contexts, "passages": passages}


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = args.model or default_model()
    inputs = build_inputs(model, args)
    configs = configurations(args)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        reference = os.path.join(tmp, "vanilla.pt")
        for name, (plugin, settings) in configs.items():
            env = {**IN_PROCESS_ENGINE_ENV, "DECLAB_PLUGINS": plugin or None, "VLLM_PLUGINS": None if plugin else "",
                   "VLLM_CPU_KVCACHE_SPACE": "1"}
            payload = {"model": model, "plugin": plugin, "settings": settings, "inputs": inputs,
                       "max_tokens": args.max_tokens, "reference": reference, "save_reference": plugin is None}
            print(f"[attention] {name} ...", flush=True)
            results[name] = call_in_child("declab.plugins.gear.bench:measure", payload, env=env,
                                          timeout=args.child_timeout, name=name)
    return report(results, configs, inputs, args)


def report(results: dict[str, Any], configs: dict, inputs: dict, args: argparse.Namespace) -> dict[str, Any]:
    vanilla = results["vanilla"]
    rows = {}
    for name, res in results.items():
        agree, match = agreement(vanilla["greedy"], res["greedy"])
        rows[name] = {"plugin": configs[name][0], "settings": configs[name][1], "agreement": agree,
                      "position_match": match, "kl_to_full": res["kl"], "perplexity": res["perplexity"],
                      "perplexity_ratio": res["perplexity"] / vanilla["perplexity"],
                      "kv_capacity_tokens": res["capacity_tokens"],
                      "kv_capacity_ratio": res["capacity_tokens"] / vanilla["capacity_tokens"],
                      "kv_bytes_per_token": res["bytes_per_token"], "tokens_per_s": res["tokens_per_s"],
                      "selection_recall": res.get("recall")}
    context = args.context_tokens + args.max_tokens
    eighth = context // 8
    acceptance = {}
    td, sl = rows.get(f"tidaldecode_b{eighth}"), rows.get(f"streamingllm_b{eighth}")
    if td and sl:
        acceptance["tidaldecode_beats_streamingllm_at_one_eighth"] = {
            "budget": eighth, "agreement": [td["agreement"], sl["agreement"]], "kl": [td["kl_to_full"], sl["kl_to_full"]],
            "met": td["agreement"] > sl["agreement"] and td["kl_to_full"] < sl["kl_to_full"]}
    gear, kivi = rows.get("gear_4bit"), rows.get("kivi_4bit")
    if gear and kivi:
        acceptance["gear_4bit"] = {
            "capacity_ratio": gear["kv_capacity_ratio"], "agreement": gear["agreement"],
            "perplexity_ratio": gear["perplexity_ratio"], "kivi_agreement": kivi["agreement"],
            "kivi_perplexity_ratio": kivi["perplexity_ratio"],
            "met": (gear["kv_capacity_ratio"] >= 3 and gear["agreement"] >= 0.95 and gear["perplexity_ratio"] <= 1.02
                    and gear["agreement"] > kivi["agreement"] and gear["perplexity"] < kivi["perplexity"])}
    return {"benchmark": "attention", "model": args.model or default_model(), "block_size": BLOCK,
            "context_tokens": args.context_tokens, "max_tokens": args.max_tokens,
            "greedy_contexts": len(inputs["contexts"]), "kl_points": results["vanilla"]["points"],
            "configs": rows, "acceptance": acceptance}


def agreement(reference: list[list[int]], tokens: list[list[int]]) -> tuple[float, float]:
    prefix, match = [], []
    for ref, out in zip(reference, tokens):
        first = next((i for i, (a, b) in enumerate(zip(ref, out)) if a != b), len(ref))
        prefix.append(first / len(ref))
        match.append(sum(a == b for a, b in zip(ref, out)) / len(ref))
    return sum(prefix) / len(prefix), sum(match) / len(match)


# -- child side -------------------------------------------------------------------------------------------------


def measure(payload: dict[str, Any]) -> dict[str, Any]:
    import torch
    from vllm import LLM, SamplingParams

    from declab.integrations.sdk.attention_policy import STATS

    kwargs = {**CPU_ENGINE_KWARGS, "block_size": BLOCK, "enable_prefix_caching": True, "max_logprobs": -1,
              "max_model_len": 1024}
    if payload["plugin"] and payload["settings"]:
        kwargs["additional_config"] = {"declab": {payload["plugin"]: payload["settings"]}}
    llm = LLM(model=payload["model"], **kwargs)
    cache = llm.llm_engine.vllm_config.cache_config
    capacity = cache.num_gpu_blocks * cache.block_size
    greedy = SamplingParams(temperature=0, max_tokens=payload["max_tokens"], ignore_eos=True)
    contexts = [{"prompt_token_ids": ids} for ids in payload["inputs"]["contexts"]]
    llm.generate(contexts[:1], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
    llm.reset_prefix_cache()
    STATS.values.clear()
    STATS.record = True
    start = time.perf_counter()
    outs = llm.generate(contexts, greedy, use_tqdm=False)
    elapsed = time.perf_counter() - start
    STATS.record = False
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    recall = (STATS.values["recall_sum"] / STATS.values["recall_count"]) if STATS.values.get("recall_count") else None
    # Decode steps at cut points n = 32 m + 1 of the held-out passages (prefix cached, then one computed token).
    cuts = [(p, BLOCK * m) for p, ids in enumerate(payload["inputs"]["passages"])
            for m in range(2, len(ids) // BLOCK) if BLOCK * m + 1 < len(ids)]
    passages = payload["inputs"]["passages"]
    llm.reset_prefix_cache()
    llm.generate([{"prompt_token_ids": passages[p][:n]} for p, n in cuts], SamplingParams(temperature=0, max_tokens=1),
                 use_tqdm=False)
    scored = llm.generate([{"prompt_token_ids": passages[p][: n + 1]} for p, n in cuts],
                          SamplingParams(temperature=0, max_tokens=1, logprobs=-1), use_tqdm=False)
    vocab = llm.llm_engine.model_config.get_vocab_size()
    logp = torch.full((len(cuts), vocab), -math.inf)
    for i, out in enumerate(scored):
        for token, lp in out.outputs[0].logprobs[0].items():
            logp[i, token] = lp.logprob
    truth = torch.tensor([passages[p][n + 1] for p, n in cuts])
    nll = -logp.gather(1, truth[:, None]).squeeze(1)
    if payload["save_reference"]:
        torch.save(logp, payload["reference"])
        kl = 0.0
    else:
        ref = torch.load(payload["reference"])
        kl = float((ref.exp() * (ref - logp).nan_to_num(0.0, posinf=0.0, neginf=0.0)).sum(-1).mean())
    generated = sum(len(t) for t in tokens)
    return {"greedy": tokens, "tokens_per_s": generated / elapsed, "recall": recall, "capacity_tokens": capacity,
            "bytes_per_token": (1 << 30) / capacity, "perplexity": float(nll.mean().exp()), "kl": kl,
            "points": len(cuts)}


def summary(report: dict[str, Any]) -> str:
    lines = [f"{'config':<18} {'agree':>6} {'match':>6} {'KL':>8} {'ppl':>7} {'cap x':>6} {'B/tok':>7} {'tok/s':>6} "
             f"{'recall':>6}"]
    for name, r in report["configs"].items():
        recall = f"{r['selection_recall']:.3f}" if r["selection_recall"] is not None else "-"
        lines.append(f"{name:<18} {r['agreement']:>6.3f} {r['position_match']:>6.3f} {r['kl_to_full']:>8.4f} "
                     f"{r['perplexity']:>7.3f} {r['kv_capacity_ratio']:>6.2f} {r['kv_bytes_per_token']:>7.0f} "
                     f"{r['tokens_per_s']:>6.1f} {recall:>6}")
    lines.append("acceptance: " + json.dumps(report["acceptance"]))
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["configs"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for method, color in (("tidaldecode", "#1f77b4"), ("streamingllm", "#ff7f0e")):
        points = sorted((r["settings"]["budget"], r) for r in rows.values() if r["plugin"] == method)
        budgets = [b for b, _ in points]
        axes[0].plot(budgets, [r["agreement"] for _, r in points], "o-", color=color, label=method)
        axes[1].plot(budgets, [r["kl_to_full"] for _, r in points], "o-", color=color, label=method)
    for ax, title in zip(axes[:2], ("greedy agreement with full attention", "next-token KL to full attention")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("token budget per KV head")
        ax.set_title(title)
        ax.legend()
    codecs = [n for n, r in rows.items() if r["plugin"] in ("gear", "kivi")]
    width = 0.27
    for j, (key, label) in enumerate((("agreement", "agreement"), ("perplexity_ratio", "perplexity / full"),
                                      ("kv_capacity_ratio", "KV capacity / full (/10)"))):
        values = [rows[n][key] / (10 if key == "kv_capacity_ratio" else 1) for n in codecs]
        axes[2].bar([i + j * width for i in range(len(codecs))], values, width, label=label)
    axes[2].set_xticks([i + width for i in range(len(codecs))], codecs, fontsize=8)
    axes[2].set_title("KV codecs")
    axes[2].legend(fontsize=8)
    fig.suptitle("declab bench attention (decoder-29m, contexts <= 512 tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
