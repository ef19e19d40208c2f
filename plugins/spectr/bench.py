"""``declab bench spectr-grid``: SpecTr's settings grid, tokens per target forward per (drafts, length, draw temperature).

Each grid point is one ``declab bench spec --configs vanilla,spectr --phases batch16 --limit N --settings spectr=...``
run (a child process each, so every point gets a fresh engine), at temperature 0 (greedy requests: chains drawn at
``greedy_draft_temperature`` and merged into a trie) and at temperature 1 (sampled requests: the paper's k i.i.d.
chains); one ``draft_model`` run at ``--draft-k`` on the same prompts gives the scale. The report lists, per point,
the settings, the temperature, tokens per target forward and token-identical share of the batch-16 phase (and the
command of the run it came from). This is how SpecTr's defaults were chosen (``plugins/spectr/README.md``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from declab.integrations.sdk.bench import add_option

# (temperature, settings): the grid behind the defaults (16 x 16 drawn at 0.5).
GRID: tuple[tuple[float, dict[str, Any]], ...] = (
    *((0.0, {"length": n}) for n in (8, 12, 16)),
    *((0.0, {"length": n, "greedy_draft_temperature": 0.5}) for n in (12, 16)),
    *((0.0, {"drafts": k, "length": 16, "greedy_draft_temperature": t}) for k in (8, 12) for t in (0.3, 0.5)),
    *((0.0, {"drafts": k, "length": 16, "greedy_draft_temperature": t}) for k, t in ((16, 0.5), (16, 0.7), (24, 0.7))),
    (1.0, {"drafts": 6, "length": 8, "greedy_draft_temperature": 1.0}),
    (1.0, {"drafts": 16, "length": 16, "greedy_draft_temperature": 0.5}),
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_option(parser, "--limit", type=int, default=1, help="first N fitting prompts of each group (declab bench spec)")
    add_option(parser, "--draft-k", type=int, default=12, help="K of the draft_model reference run (temperature 0)")
    return parser


def rows_from_report(path: Path) -> list[dict[str, Any]]:
    """The batch-16 rows of every speculative configuration in one ``declab bench spec`` report."""
    report = json.loads(path.read_text())
    rows = []
    for name, cfg in report["configs"].items():
        row = (cfg.get("phases") or {}).get("batch16", {}).get("groups", {}).get("all")
        if name == "vanilla" or not row:
            continue
        settings = (cfg.get("additional_config") or {}).get("declab", {}).get("spectr") if name == "spectr" else None
        rows.append({"config": name, "temperature": report["sampling"]["temperature"], "settings": settings,
                     "speculative_config": cfg.get("speculative_config"),
                     "tokens_per_forward": round(row["tokens_per_forward"], 4),
                     "token_identical_share": row.get("token_identical_share"),
                     "command": report["provenance"]["command"]})
    return rows


def run(args) -> dict[str, Any]:
    base = [sys.executable, "-m", "declab.integrations.cli", "bench", "spec", "--phases", "batch16",
            "--limit", str(args.limit)]
    runs = [[*base, "--configs", "vanilla,draft_model", "--draft-k", str(args.draft_k)]]
    runs += [[*base, "--configs", "vanilla,spectr", "--temperature", str(t), "--settings", "spectr=" + json.dumps(s)]
             for t, s in GRID]
    rows = []
    with tempfile.TemporaryDirectory(prefix="declab-spectr-grid-") as tmp:
        for i, argv in enumerate(runs):
            out = Path(tmp) / str(i)
            subprocess.run([*argv, "--out", str(out)], check=True)
            rows += rows_from_report(out / "spec.json")
    return {"benchmark": "SpecTr settings grid (declab bench spec, batch 16, the first --limit fitting prompts of each "
                         "group, 64 tokens), with a draft_model run on the same prompts for scale",
            "limit": args.limit, "rows": rows}


def summary(report: dict[str, Any]) -> str:
    return "\n".join(f"T={r['temperature']:g} {r['config']:12s} {json.dumps(r['settings']) if r['settings'] else '':60s} "
                     f"{r['tokens_per_forward']:.3f}" for r in report["rows"])


def plot(report: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    labels = [f"T={r['temperature']:g} " + (r["config"] if not r["settings"] else
              ",".join(f"{k[0]}{v}" for k, v in r["settings"].items())) for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.2))
    ax.barh(range(len(rows)), [r["tokens_per_forward"] for r in rows],
            color=["#8c564b" if r["config"] == "spectr" else "#9467bd" for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xlabel("tokens per target forward (batch 16)")
    ax.set_title("SpecTr settings (d = drafts, l = length, g = greedy draft temperature) vs draft_model")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
