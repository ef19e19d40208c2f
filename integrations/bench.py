"""``declab bench NAME``: one harness for every benchmark, generic ones here, plugin ones in their plugin folders.

Every sub-command is a module with ``add_arguments(parser)``, ``run(args) -> report``, ``plot(report, path)`` and
optionally ``summary(report) -> str``: the generic benchmarks of ``GENERIC`` (they name no plugin: ``overhead``,
``plugin``, ``spec``, ``verify-cost``, ``draft-agreement``) and the ``BenchEntry`` declarations of the discovered
plugins (``PluginSpec.benches``: a module in the plugin's own folder). The harness gives each parser
``--model`` and ``--out``, runs the module, writes ``<out>/<name>.json`` (with the run's provenance: machine, vLLM
version, date, command line) and ``<out>/<name>.png`` through the one writer
(``declab.integrations.sdk.bench.write_report``), and prints the module's summary.

Engines run in child processes (``engine_run``: one protocol), one configuration after the other, so they never
compete for the CPU cores; a child's whole process group (engine core and workers included) is killed when its
call ends, times out, on Ctrl-C, and on ``SIGTERM`` / ``SIGHUP`` to ``declab bench``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
from typing import Any

from declab.integrations import registry
from declab.integrations.sdk.bench import load_average, write_report
from declab.integrations.sdk.spec import BenchEntry

# Benchmarks that name no plugin.
GENERIC = (
    BenchEntry("overhead", "declab.integrations.bench_overhead",
               help="suite installed but unselected vs VLLM_PLUGINS=''"),
    BenchEntry("plugin", "declab.integrations.bench_plugin", help="plain decoding vs one logits-level plugin"),
    BenchEntry("spec", "declab.integrations.bench_spec",
               help="speculative decoding on Spec-Bench and code prompts: vanilla, ngram, suffix and every plugin "
                    "proposer's declared configurations"),
    BenchEntry("verify-cost", "declab.integrations.bench_verify_cost",
               help="forward cost of verifying q tokens on this device; speed-ups projected from a bench spec report"),
    BenchEntry("draft-agreement", "declab.integrations.bench_draft",
               help="a draft model's top-1 agreement with the target's greedy tokens and its simulated chain "
                    "acceptance, on Spec-Bench and code prompts (transformers, no engine)"),
)


def benches() -> dict[str, tuple[BenchEntry, str | None]]:
    """Every ``declab bench`` sub-command: name -> (entry, the plugin that declares it, None for generic ones);
    generic ones first, then the plugins' in discovery order. A name declared twice is an error naming both."""
    out: dict[str, tuple[BenchEntry, str | None]] = {e.name: (e, None) for e in GENERIC}
    for spec in registry.all_specs().values():
        for entry in spec.benches:
            if entry.name in out:
                first = out[entry.name][1] or "declab.integrations.bench"
                raise ValueError(f"declab bench {entry.name!r} is declared twice: by {first} and by {spec.name}")
            out[entry.name] = (entry, spec.name)
    return out


def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model path (default: decoder-29m)")
    p.add_argument("--out", default="bench-results", help="output folder")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="benchmarks: vanilla vs plugin configurations (JSON + PNG)")
    kinds = p.add_subparsers(dest="kind", required=True)
    for name, (entry, plugin) in benches().items():
        try:
            mod = importlib.import_module(entry.module)
        except Exception as e:  # noqa: BLE001 - a broken benchmark must not take `declab list` down with it
            kinds.add_parser(name, help=f"unavailable: {type(e).__name__}: {e}")
            continue
        doc = entry.help or (mod.__doc__ or name).strip().splitlines()[0]
        k = kinds.add_parser(name, help=doc + (f" [plugin {plugin}]" if plugin else ""))
        _common_arguments(k)
        mod.add_arguments(k)
    return p


def _exit_on_termination() -> None:
    """``SIGTERM`` / ``SIGHUP`` end ``declab bench`` through ``SystemExit``, so the running child's process group is
    killed on the way out (Ctrl-C does the same through ``KeyboardInterrupt``)."""

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, stop)
        except ValueError:  # not the main thread: leave the handlers alone
            pass


def report_name(args) -> str:
    return args.kind if args.kind != "plugin" else f"plugin-{args.method}"


def main(args) -> int:
    _exit_on_termination()
    entry, _ = benches()[args.kind]
    mod = importlib.import_module(entry.module)
    load_at_start = load_average()
    report: dict[str, Any] = mod.run(args)
    jpath, ppath = write_report(report, args.out, report_name(args), mod.plot, load_at_start)
    text = mod.summary(report) if hasattr(mod, "summary") else ""
    if text:
        print(text)
    print(f"wrote {jpath} and {ppath}")
    return 0
