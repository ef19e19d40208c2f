"""``declab demo``: the README's main job, a generic harness over the plugins' demo panels.

Every plugin folder with a ``demo.py`` that exposes ``PANEL`` (``declab.integrations.sdk.demo.DemoPanel``) is found by walking the
plugin package; this module names no plugin. The panels' jobs are grouped by the engine they need
(``EngineProfile.sharing_key``), so as few engines start as the profiles allow: logits-level plugins share one engine
that selects all of them, a speculative proposer gets its own, a vanilla reference its own. Each engine runs in a
child process of its own (``engine_run``), one after the other, with a small KV cache. Then each panel summarizes its
jobs' outputs; the harness prints one table, draws one picture with a panel per plugin and writes every number to
``<out>/demo.json`` (picture: ``<out>/demo.png``).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from declab.integrations.engine_run import IN_PROCESS_ENGINE_ENV
from declab.integrations.sdk.bench import load_average, provenance
from declab.integrations.sdk.demo import DemoPanel, DemoRow, EngineJob, EngineProfile

PANEL_MODULE = "demo"  # plugins/<name>/demo.py
ENGINE_TIMEOUT_S = 900
# Settings of every engine unless the caller's environment sets them: each engine runs in its child's own process
# (starts in about 5 s on 2 cores instead of 30-60 s), one OpenMP thread, a small KV cache (engine_run).
ENGINE_ENV_DEFAULTS = IN_PROCESS_ENGINE_ENV


def _say(msg: str) -> None:
    print(f"[declab demo] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Discovery and grouping (no engine)
# ----------------------------------------------------------------------------------------------------------------


def discover_panels(modules: list[str] | None = None) -> list[DemoPanel]:
    """The ``PANEL`` of every plugin package's ``demo`` module (default: found by the registry's discovery), in
    the order given."""
    from declab.integrations import registry

    panels = []
    for name in registry.plugin_modules(PANEL_MODULE) if modules is None else modules:
        panel = getattr(importlib.import_module(name), "PANEL", None)
        if not isinstance(panel, DemoPanel):
            raise TypeError(f"{name}.PANEL must be a declab.integrations.sdk.demo.DemoPanel, got {type(panel)}")
        panels.append(panel)
    return panels


@dataclass
class EnginePlan:
    """One engine to start: its profile (plugins merged over the jobs it serves) and the jobs, as (panel, job)."""

    profile: EngineProfile
    jobs: list[tuple[str, EngineJob]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ",".join(self.profile.plugins) or "vanilla"

    def describe(self) -> str:
        kwargs = f" + {', '.join(self.profile.engine_kwargs)}" if self.profile.engine_kwargs else ""
        return f"DECLAB_PLUGINS={','.join(self.profile.plugins) or '(unset)'}{kwargs}"

    def env(self) -> dict[str, str | None]:
        """The engine process's environment changes (None unsets)."""
        defaults = {k: os.environ.get(k, v) for k, v in ENGINE_ENV_DEFAULTS.items()}
        return {**defaults, "DECLAB_PLUGINS": ",".join(self.profile.plugins) or None, **dict(self.profile.env)}


def plan_engines(panels: list[DemoPanel]) -> list[EnginePlan]:
    """Group the panels' jobs by ``sharing_key``; an engine's plugins are the union of its jobs' (first-seen order)."""
    plans: dict[tuple, EnginePlan] = {}
    for panel in panels:
        for job in panel.jobs:
            key = job.profile.sharing_key()
            plan = plans.setdefault(key, EnginePlan(job.profile))
            merged = tuple(dict.fromkeys(plan.profile.plugins + tuple(job.profile.plugins)))
            plan.profile = replace(plan.profile, plugins=merged)
            plan.jobs.append((panel.name, job))
    return list(plans.values())


def select_panels(panels: list[DemoPanel], names: str | None) -> list[DemoPanel]:
    """``--panels a,b``: those panels, in discovery order (ValueError naming the parameter for an unknown one)."""
    if not names:
        return panels
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {p.name for p in panels}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"--panels: unknown panel(s) {unknown}; known: {', '.join(sorted(known))}")
    return [p for p in panels if p.name in wanted]


# ----------------------------------------------------------------------------------------------------------------
# Running the engines
# ----------------------------------------------------------------------------------------------------------------


def run_engine(plan: EnginePlan, model: str, options: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Start the plan's engine in a child process and run its jobs there; the child's result."""
    from declab.integrations.engine_run import RunSpec, run_in_child

    spec = RunSpec(name=plan.label, model=model, prompts=[], sampling={}, env=plan.env(),
                   engine_kwargs=dict(plan.profile.engine_kwargs), collect_metrics=True,
                   calls=[job.function for _, job in plan.jobs], call_options=options)
    return run_in_child(spec, timeout=timeout)


def run_all(plans: list[EnginePlan], model: str, options: dict[str, Any], timeout: float):
    """Run every engine, one after the other. Returns (job outputs by (panel, key), errors by panel, engine log)."""
    outputs: dict[tuple[str, str], dict[str, Any]] = {}
    errors: dict[str, str] = {}
    engines = []
    for i, plan in enumerate(plans, 1):
        panels = sorted({p for p, _ in plan.jobs})
        _say(f"engine {i}/{len(plans)}: {plan.describe()} for {', '.join(panels)} ...")
        record = {"plugins": list(plan.profile.plugins), "env": dict(plan.profile.env),
                  "engine_kwargs": dict(plan.profile.engine_kwargs), "panels": panels, "load_before": load_average()}
        t = time.perf_counter()
        try:
            result = run_engine(plan, model, options, timeout)
        except Exception as e:  # noqa: BLE001 - a failed engine fails its panels, not the whole demo
            for p in panels:
                errors.setdefault(p, f"engine {plan.label} failed: {e}"[-3000:])
            record.update(error=str(e)[-3000:], wall_s=time.perf_counter() - t)
            engines.append(record)
            _say(f"  engine {plan.label} FAILED (see demo.json)")
            continue
        record.update(startup_s=result["startup_s"], wall_s=time.perf_counter() - t, load_after=load_average(),
                      calls={f"{p}:{job.key}": c["wall_s"] for (p, job), c in zip(plan.jobs, result["calls"])})
        engines.append(record)
        for (panel, job), call in zip(plan.jobs, result["calls"]):
            if "error" in call:
                errors.setdefault(panel, f"{job.function}: {call['error']}")
            outputs[(panel, job.key)] = call
        _say(f"  done in {record['wall_s']:.0f} s (engine start-up {result['startup_s']:.0f} s)")
    return outputs, errors, engines


def summarize_panels(panels: list[DemoPanel], outputs, errors) -> dict[str, dict[str, Any]]:
    """Each panel's numbers (``{"error": ...}`` for a panel whose engine, job or summary failed)."""
    numbers = {}
    for panel in panels:
        if panel.name in errors:
            numbers[panel.name] = {"error": errors[panel.name]}
            continue
        try:
            numbers[panel.name] = panel.summarize({job.key: outputs[(panel.name, job.key)] for job in panel.jobs})
        except Exception as e:  # noqa: BLE001 - report it in the table and the JSON
            numbers[panel.name] = {"error": f"summarize: {type(e).__name__}: {e}"}
    return numbers


# ----------------------------------------------------------------------------------------------------------------
# Table, picture, JSON
# ----------------------------------------------------------------------------------------------------------------


def panel_row(panel: DemoPanel, numbers: dict[str, Any]) -> DemoRow:
    if "error" in numbers:
        return DemoRow("FAILED", "-", numbers["error"].strip().splitlines()[-1][:60])
    return panel.row(numbers)


def format_table(panels: list[DemoPanel], numbers: dict[str, dict[str, Any]]) -> str:
    header = ("plugin", "what is measured", "baseline", "with the plugin")
    rows = [header]
    for p in panels:
        r = panel_row(p, numbers[p.name])
        rows.append((p.name, r.measure, r.baseline, r.plugin))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(panels: list[DemoPanel], numbers: dict[str, dict[str, Any]], path: Path, title: str,
         notes: str = "") -> None:
    """One panel per plugin (3 per row); ``notes`` go in the first free cell, if any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, max(1, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 4.4 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax, panel in zip(flat, panels):
        nums = numbers[panel.name]
        if "error" in nums:
            ax.set_title(panel.name)
            ax.text(0.5, 0.5, "failed:\n" + nums["error"].strip().splitlines()[-1][:80], ha="center", va="center",
                    wrap=True, fontsize=8, color="tab:red", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        try:
            panel.draw(ax, nums)
        except Exception as e:  # noqa: BLE001 - one broken drawing must not lose the picture
            ax.clear()
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{panel.name}: drawing failed\n{type(e).__name__}: {e}"[:200], ha="center",
                    va="center", fontsize=8, color="tab:red", transform=ax.transAxes)
    for ax in flat[len(panels):]:
        ax.set_axis_off()
    if notes and len(flat) > len(panels):
        flat[len(panels)].text(0.0, 0.95, notes, va="top", ha="left", fontsize=8, family="monospace",
                               transform=flat[len(panels)].transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_notes(engines: list[dict[str, Any]], wall: float, load_start) -> str:
    """What ran, for the picture's free cell: each engine's selection, start-up and wall time; load; total."""
    lines = ["this run:"]
    for i, e in enumerate(engines, 1):
        what = ",".join(e["plugins"]) or "vanilla (nothing selected)"
        extra = f" + {', '.join(e['engine_kwargs'])}" if e["engine_kwargs"] else ""
        lines.append(f"engine {i}: {what}{extra}")
        lines.append(f"  for {', '.join(e['panels'])}: " + (
            "FAILED" if "error" in e else f"start-up {e['startup_s']:.0f} s, {e['wall_s']:.0f} s in all"))
    lines.append(f"{os.cpu_count()} cores, load average at start {load_start[0] if load_start else '?'}")
    lines.append(f"total {wall:.0f} s")
    return "\n".join(lines)


def main(args) -> int:
    from declab.integrations.models import default_model

    t0 = time.perf_counter()
    load_start = load_average()
    model = args.model or default_model()
    try:
        panels = select_panels(discover_panels(), getattr(args, "panels", None))
    except ValueError as e:
        raise SystemExit(f"declab demo: {e}") from None
    plans = plan_engines(panels)
    _say(f"model: {model}")
    _say(f"{len(panels)} panels ({', '.join(p.name for p in panels)}) on {len(plans)} engines; "
         f"load average {load_start} on {os.cpu_count()} cores")
    options = {"max_tokens": args.max_tokens}
    outputs, errors, engines = run_all(plans, model, options, ENGINE_TIMEOUT_S)
    numbers = summarize_panels(panels, outputs, errors)

    table = format_table(panels, numbers)
    print()
    print(table)
    print()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter() - t0
    report = {"model": model, "options": options, "wall_s": wall, "cpu_count": os.cpu_count(),
              "load_average": {"start": load_start, "end": load_average()}, "engines": engines, "table": table,
              "panels": numbers}
    # The same provenance as every `declab bench` report (command line, machine, versions, date), so a README can
    # cite a committed demo.json (tests/test_measurements.py).
    report["provenance"] = provenance(load_start)
    (out / "demo.json").write_text(json.dumps(report, indent=1))
    plot(panels, numbers, out / "demo.png", f"declab demo: {Path(model).name}, vLLM 0.32, {len(plans)} engines",
         run_notes(engines, wall, load_start))
    _say(f"wrote {out / 'demo.json'} and {out / 'demo.png'} ({wall:.0f} s in all)")
    if errors:
        _say(f"{len(errors)} panel(s) failed: {', '.join(errors)}")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    from declab.integrations.cli import main as cli_main

    sys.exit(cli_main(["demo", *sys.argv[1:]]))
