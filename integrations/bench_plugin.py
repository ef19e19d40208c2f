"""``declab bench plugin``: plain decoding vs one logits-level plugin (``--method`` and ``--args``) on the same
engine settings and prompts, each in its own child process. Reports throughput, latency, repetition (rep-n,
diversity) and the share of outputs the plugin changed."""

from __future__ import annotations

import argparse
import json
from typing import Any

from declab.integrations.bench_overhead import add_throughput_arguments, plot, summary
from declab.integrations.sdk.bench import (
    RunSpec,
    default_bench_prompts,
    default_model,
    identical_share,
    repetition_stats,
    run_in_child,
    summarize,
)

__all__ = ["add_arguments", "run", "plot", "summary"]


def add_arguments(k: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_throughput_arguments(k)
    k.add_argument("--method", required=True, help="plugin name")
    k.add_argument("--args", default="{}", help="plugin parameters as JSON")
    k.add_argument("--temperature", type=float, default=0.0)
    return k


def run(args) -> dict[str, Any]:
    if not args.method:
        raise SystemExit("declab bench plugin: --method is required")
    model = args.model or default_model()
    prompts = default_bench_prompts(args.prompts)
    method_args = {"method": args.method, **json.loads(args.args)}
    sampling = {"temperature": args.temperature, "max_tokens": args.max_tokens, "seed": 0, "logprobs": 0}
    common = dict(model=model, prompts=prompts, repeats=args.repeats, latency_prompts=args.latency_prompts)
    configs = {
        "plain": RunSpec(name="plain", sampling=sampling, env={"DECLAB_PLUGINS": None}, **common),
        args.method: RunSpec(name=args.method, sampling={**sampling, "extra_args": {"declab": method_args}},
                             env={"DECLAB_PLUGINS": args.method}, **common),
    }
    results = {label: run_in_child(spec) for label, spec in configs.items()}
    numbers = {}
    for label, r in results.items():
        s = summarize(r, len(prompts))
        s.update(repetition_stats(r["token_ids"]))
        numbers[label] = s
    base, plug = results["plain"], results[args.method]
    return {
        "benchmark": "plugin",
        "model": model,
        "method_args": method_args,
        "configs": numbers,
        "throughput_ratio": numbers[args.method]["tokens_per_s"] / numbers["plain"]["tokens_per_s"],
        "changed_share": 1.0 - identical_share(base["token_ids"], plug["token_ids"]),
        "raw": results,
    }
