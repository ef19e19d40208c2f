"""``declab bench``: vanilla vs one plugin configuration, same prompts, same engine settings, one process tree.

Each configuration runs in its own child process (``engine_run``), one after the other, so they never compete for
the two CPU cores. Output: ``<out>/<name>.json`` (all numbers, token ids included) and ``<out>/<name>.png``.

Sub-benchmarks:

* ``overhead``: vLLM with plugin loading disabled (``VLLM_PLUGINS=""``) vs the suite installed but unselected
  (``DECLAB_PLUGINS`` unset). Reports the throughput ratio and the share of token-identical outputs.
* ``plugin``: plain decoding vs one logits-level plugin (``--method`` and ``--args``) on the same engine settings.
  Reports throughput, latency, repetition (rep-n, diversity) and the share of outputs the plugin changed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
from pathlib import Path
from typing import Any

from declab.integrations.engine_run import RunSpec, run_in_child
from declab.integrations.sdk.metrics import repetition_stats
from declab.integrations.models import default_model
from declab.integrations.prompts import default_bench_prompts


# Sub-benchmarks living in their own modules: name -> module exposing add_arguments(parser), run(args) -> report,
# and optionally plot(report, path).
EXTERNAL = {
    "spec": "declab.integrations.bench_spec",
    "spec-tree": "declab.integrations.bench_spec_tree",
    "degeneration": "declab.integrations.bench_degeneration",
    "contrastive": "declab.integrations.bench_contrastive",
    "grammar": "declab.integrations.bench_grammar",
    "verify-cost": "declab.integrations.bench_verify_cost",
}


def add_option(parser: argparse.ArgumentParser, *flags: str, **kw: Any) -> None:
    """Add an option unless the parser already has it: ``declab bench`` gives every sub-benchmark ``--model`` and
    ``--out`` before the module's own ``add_arguments`` runs."""
    if any(f in parser._option_string_actions for f in flags):  # noqa: SLF001 - argparse has no public query
        return
    parser.add_argument(*flags, **kw)


def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model path (default: decoder-29m)")
    p.add_argument("--out", default="bench-results", help="output folder")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="benchmarks: vanilla vs plugin configurations (JSON + PNG)")
    kinds = p.add_subparsers(dest="kind", required=True)
    for kind, doc in (("overhead", "suite installed but unselected vs VLLM_PLUGINS=''"),
                      ("plugin", "plain decoding vs one logits-level plugin")):
        k = kinds.add_parser(kind, help=doc)
        _common_arguments(k)
        k.add_argument("--prompts", type=int, default=16, help="number of prompts (batch size)")
        k.add_argument("--max-tokens", type=int, default=128)
        k.add_argument("--repeats", type=int, default=3, help="timed batch runs per configuration")
        k.add_argument("--latency-prompts", type=int, default=4, help="prompts also timed one at a time")
        if kind == "plugin":
            k.add_argument("--method", required=True, help="plugin name")
            k.add_argument("--args", default="{}", help="plugin parameters as JSON")
            k.add_argument("--temperature", type=float, default=0.0)
    for kind, module in EXTERNAL.items():
        try:
            mod = importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - a broken benchmark must not take `declab list` down with it
            kinds.add_parser(kind, help=f"unavailable: {type(e).__name__}: {e}")
            continue
        k = kinds.add_parser(kind, help=(mod.__doc__ or kind).strip().splitlines()[0])
        existing = {o for a in k._actions for o in a.option_strings}
        if "--model" not in existing:
            _common_arguments(k)
        mod.add_arguments(k)
        if "--out" not in {o for a in k._actions for o in a.option_strings}:
            k.add_argument("--out", default="bench-results")
    return p


def summarize(result: dict[str, Any], n_prompts: int) -> dict[str, Any]:
    best = min(result["batch_times_s"])
    toks = result["generated_tokens"]
    return {
        "tokens_per_s": toks / best,
        "tokens_per_s_all": [toks / t for t in result["batch_times_s"]],
        "batch_time_s": best,
        "mean_request_latency_s": statistics.mean(result["latencies_s"]) if result["latencies_s"] else None,
        "generated_tokens": toks,
        "startup_s": result["startup_s"],
        "prompts": n_prompts,
    }


def identical_share(a: list[list[int]], b: list[list[int]]) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def run_overhead(args) -> dict[str, Any]:
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
    summary = {label: summarize(r, len(prompts)) for label, r in results.items()}
    return {
        "benchmark": "overhead",
        "model": model,
        "configs": summary,
        "throughput_ratio": summary[ia]["tokens_per_s"] / summary[va]["tokens_per_s"],
        "token_identical_share": identical_share(vr["token_ids"], ir["token_ids"]),
        "raw": results,
    }


def run_plugin(args) -> dict[str, Any]:
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
    summary = {}
    for label, r in results.items():
        s = summarize(r, len(prompts))
        s.update(repetition_stats(r["token_ids"]))
        summary[label] = s
    base, plug = results["plain"], results[args.method]
    return {
        "benchmark": "plugin",
        "model": model,
        "method_args": method_args,
        "configs": summary,
        "throughput_ratio": summary[args.method]["tokens_per_s"] / summary["plain"]["tokens_per_s"],
        "changed_share": 1.0 - identical_share(base["token_ids"], plug["token_ids"]),
        "raw": results,
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = report["configs"]
    labels = list(configs)
    metrics = [("tokens_per_s", "tokens/s (batch)"), ("mean_request_latency_s", "latency per request, batch 1 (s)")]
    extra = [k for k in ("rep_2", "rep_3", "rep_4", "diversity") if k in configs[labels[0]]]
    n = len(metrics) + (1 if extra else 0)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4))
    for ax, (key, title) in zip(axes, metrics):
        vals = [configs[c][key] or 0.0 for c in labels]
        ax.bar(range(len(labels)), vals, color=["#888888", "#1f77b4", "#ff7f0e"][: len(labels)])
        ax.set_xticks(range(len(labels)), labels, rotation=10, fontsize=8)
        ax.set_title(title)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    if extra:
        ax = axes[-1]
        width = 0.8 / len(labels)
        for j, c in enumerate(labels):
            ax.bar([i + j * width for i in range(len(extra))], [configs[c][k] for k in extra], width, label=c)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(extra))], extra)
        ax.set_title("repetition (lower) / diversity (higher)")
        ax.legend(fontsize=8)
    ratio = report.get("throughput_ratio")
    fig.suptitle(f"declab bench {report['benchmark']}: throughput ratio {ratio:.3f}" if ratio else report["benchmark"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], out: str, name: str, plotter=None) -> tuple[Path, Path]:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    jpath, ppath = folder / f"{name}.json", folder / f"{name}.png"
    jpath.write_text(json.dumps(report, indent=1))
    (plotter or plot)(report, ppath)
    return jpath, ppath


def main(args) -> int:
    plotter = plot
    if args.kind in EXTERNAL:
        mod = importlib.import_module(EXTERNAL[args.kind])
        report = mod.run(args)
        plotter = getattr(mod, "plot", plot)
    else:
        report = {"overhead": run_overhead, "plugin": run_plugin}[args.kind](args)
    name = args.kind if args.kind != "plugin" else f"plugin-{args.method}"
    jpath, ppath = write_report(report, args.out, name, plotter)
    table = getattr(mod, "format_table", None) if args.kind in EXTERNAL else None
    if table is not None:
        print(table(report))
    for label, s in report.get("configs", {}).items():
        if isinstance(s, dict) and "tokens_per_s" in s:
            print(f"{label:<32} {s['tokens_per_s']:8.1f} tok/s")
    for k in ("throughput_ratio", "token_identical_share", "changed_share"):
        if k in report:
            print(f"{k}: {report[k]:.4f}")
    print(f"wrote {jpath} and {ppath}")
    return 0
