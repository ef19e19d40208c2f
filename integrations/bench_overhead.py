"""``declab bench overhead``: vLLM with plugin loading disabled (``VLLM_PLUGINS=""``) vs the suite installed but
unselected (``DECLAB_PLUGINS`` unset), same prompts, same engine settings, each in its own child process. Reports the
throughput ratio and the share of token-identical outputs."""

from __future__ import annotations

import argparse
from typing import Any

from declab.integrations.sdk.bench import (
    RunSpec,
    default_bench_prompts,
    default_model,
    identical_share,
    run_in_child,
    summarize,
)
from declab.integrations.sdk.bench import plot_configs as plot

__all__ = ["add_throughput_arguments", "add_arguments", "run", "plot", "summary"]


def add_throughput_arguments(k: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options shared by ``overhead`` and ``plugin``."""
    k.add_argument("--prompts", type=int, default=16, help="number of prompts (batch size)")
    k.add_argument("--max-tokens", type=int, default=128)
    k.add_argument("--repeats", type=int, default=3, help="timed batch runs per configuration")
    k.add_argument("--latency-prompts", type=int, default=4, help="prompts also timed one at a time")
    return k


def add_arguments(k: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return add_throughput_arguments(k)


def run(args) -> dict[str, Any]:
    model = args.model or default_model()
    prompts = default_bench_prompts(args.prompts)
    sampling = {"temperature": 0.0, "max_tokens": args.max_tokens, "ignore_eos": True}
    common = dict(model=model, prompts=prompts, sampling=sampling, repeats=args.repeats,
                  latency_prompts=args.latency_prompts)
    configs = {
        "vanilla (VLLM_PLUGINS='')": RunSpec(name="vanilla", env={"VLLM_PLUGINS": "", "DECLAB_PLUGINS": None},
                                             **common),
        "declab installed, unselected": RunSpec(name="installed", env={"VLLM_PLUGINS": None, "DECLAB_PLUGINS": None},
                                                **common),
    }
    results = {label: run_in_child(spec) for label, spec in configs.items()}
    (va, vr), (ia, ir) = results.items()
    numbers = {label: summarize(r, len(prompts)) for label, r in results.items()}
    return {
        "benchmark": "overhead",
        "model": model,
        "configs": numbers,
        "throughput_ratio": numbers[ia]["tokens_per_s"] / numbers[va]["tokens_per_s"],
        "token_identical_share": identical_share(vr["token_ids"], ir["token_ids"]),
        "raw": results,
    }


def summary(report: dict[str, Any]) -> str:
    """Tokens/s per configuration and the report's ratios."""
    lines = [f"{label:<32} {s['tokens_per_s']:8.1f} tok/s" for label, s in report.get("configs", {}).items()
             if isinstance(s, dict) and "tokens_per_s" in s]
    lines += [f"{k}: {report[k]:.4f}" for k in ("throughput_ratio", "token_identical_share", "changed_share")
              if k in report]
    return "\n".join(lines)
