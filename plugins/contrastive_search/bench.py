"""``declab bench contrastive-search``: contrastive search in vLLM against a plain-transformers reference.

Same prompts as the other decoding benches (``default_bench_prompts``: the code prompts, then Spec-Bench first
turns), fixed-length outputs (``ignore_eos``), greedy, ``{"method": "contrastive_search", "top_k", "alpha"}``:

* ``engine``: one vLLM engine (``DECLAB_PLUGINS=contrastive_search``, the plugin's proposer as the speculative
  ``custom_class``) decodes a **mixed batch**: every prompt once with contrastive search and once plain (greedy,
  no declab arguments); then every contrastive prompt again **alone** (batch 1).
* ``vanilla``: vLLM without plugins, greedy, the same prompts (what the plain rows of the mixed batch must equal).
* ``reference``: ``tests/contrastive_search_reference.py`` (transformers, float32, one prompt at a time), read from
  the checkout this package runs from.

Reported: how many contrastive outputs are token-identical to the reference at batch 1 and in the mixed batch, how
many plain rows equal vanilla greedy, the first differing position of each mismatch, and the engine's token
evaluations per contrastive output token (scheduled tokens of the contrastive rows, from vLLM's spec-decode counters:
each step feeds the root and its ``top_k`` candidates).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from declab.integrations.sdk.bench import (RunSpec, add_option, default_bench_prompts, default_model, plot_configs,
                                           run_in_child)
from declab.plugins.contrastive_search.spec import PROPOSER_PATH, SPEC

plot = plot_configs


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_option(parser, "--model", default=None, help="model path (default: decoder-29m)")
    add_option(parser, "--prompts", type=int, default=100, help="number of prompts")
    add_option(parser, "--max-tokens", type=int, default=32)
    add_option(parser, "--out", default="bench-results", help="output folder")
    add_option(parser, "--top-k", type=int, default=4, help="contrastive search: top_k")
    add_option(parser, "--alpha", type=float, default=0.6, help="contrastive search: alpha")
    return parser


def load_reference():
    """``tests/contrastive_search_reference.py`` of the checkout (not part of an installed package)."""
    import declab.integrations.sdk as sdk

    path = Path(sdk.__file__).resolve().parents[2] / "tests" / "contrastive_search_reference.py"
    if not path.exists():
        raise SystemExit(f"declab bench contrastive-search needs the checkout's reference ({path} not found)")
    spec = importlib.util.spec_from_file_location("contrastive_search_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def engine_kwargs(num_speculative_tokens: int) -> dict[str, Any]:
    return {"speculative_config": {"method": "custom_class", "model": PROPOSER_PATH,
                                   "num_speculative_tokens": num_speculative_tokens}}


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def run(args) -> dict[str, Any]:
    import torch

    model = args.model or default_model()
    prompts = default_bench_prompts(args.prompts)
    n = len(prompts)
    method = {"method": SPEC.name, "top_k": args.top_k, "alpha": args.alpha}
    sampling = {"temperature": 0.0, "max_tokens": args.max_tokens, "ignore_eos": True}
    engine = run_in_child(RunSpec(
        name="engine", model=model, prompts=prompts + prompts, sampling=sampling,
        per_prompt_extra_args=[{"declab": method}] * n + [None] * n, env={"DECLAB_PLUGINS": SPEC.name},
        engine_kwargs=engine_kwargs(max(args.top_k, 1)), latency_prompts=n, collect_metrics=True))
    vanilla = run_in_child(RunSpec(name="vanilla", model=model, prompts=prompts, sampling=sampling,
                                   env={"DECLAB_PLUGINS": None, "VLLM_PLUGINS": ""}))
    ref = load_reference()
    torch.set_num_threads(1)
    tok, hf = ref.load(model)
    reference = [ref.contrastive_search(hf, tok(p).input_ids, top_k=args.top_k, alpha=args.alpha,
                                        max_tokens=args.max_tokens) for p in prompts]
    mixed, plain, single = engine["token_ids"][:n], engine["token_ids"][n:], engine["single_token_ids"]
    metrics = engine.get("spec_metrics") or {}
    drafts = metrics.get("num_draft_tokens")
    steps = metrics.get("num_drafts")
    out_tokens = sum(len(t) for t in mixed)

    def compare(got: list[list[int]], want: list[list[int]]) -> dict[str, Any]:
        diffs = {i: first_difference(g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w}
        return {"identical": n - len(diffs), "of": n, "mismatches": [
            {"prompt": i, "first_difference": d, "got": got[i], "want": want[i]} for i, d in diffs.items()]}

    identity = {
        "batch1_vs_reference": compare(single, reference),
        "mixed_batch_vs_reference": compare(mixed, reference),
        "mixed_plain_rows_vs_vanilla_greedy": compare(plain, vanilla["token_ids"]),
    }
    evaluations = None if drafts is None or steps is None else (drafts + steps) / max(1, out_tokens)
    configs = {"contrastive_search+plain (mixed batch)": {"tokens_per_s": 2 * out_tokens / engine["batch_times_s"][0],
                                                          "mean_request_latency_s": sum(engine["latencies_s"]) / n}}
    return {
        "benchmark": "contrastive-search",
        "model": model,
        "prompts": n,
        "prompt_set": "default_bench_prompts: code prompts, then Spec-Bench first turns (<= 1500 characters)",
        "max_tokens": args.max_tokens,
        "fixed_length": True,
        "settings": {"contrastive_search": method, "engine": engine_kwargs(args.top_k),
                     "reference": "tests/contrastive_search_reference.py (transformers float32, batch 1)"},
        "identity": identity,
        "all_identical": all(v["identical"] == n for v in identity.values()),
        "token_evaluations_per_output_token": evaluations,
        "spec_metrics": metrics,
        "configs": configs,
        "raw": {"reference": reference, "mixed": mixed, "batch1": single, "plain": plain,
                "vanilla": vanilla["token_ids"], "texts_mixed": engine["texts"][:n]},
    }


def summary(report: dict[str, Any]) -> str:
    lines = [f"{name}: {v['identical']}/{v['of']} identical" for name, v in report["identity"].items()]
    lines.append(f"token evaluations per output token: {report['token_evaluations_per_output_token']}")
    return "\n".join(lines)
