"""Tokens per target forward on Spec-Bench (its 13 categories pooled) and on code, per configuration, from
``declab bench spec`` reports, and the hybrid's ratio over the best chain of ngram, suffix and Token Recycling at the
same K (issue 16's target: >= 1.2) and over Token Recycling's tree (80 draft tokens per step) when the report has it.
A hybrid run with ``hindsight`` adds, per phase, what each source alone and the best source per step would have had
accepted (``SourceHindsight``). Writes ``summary.json`` beside the first report::

    python -m declab.plugins.hybrid_drafter.summary measurements/self-spec-all/spec.json [more reports]
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from declab.integrations.sdk.bench import report_json

BASELINES = ("ngram", "suffix", "token_recycling_chain")
TREE = "token_recycling_tree"
CODE = "code"


def pooled(groups: dict, names: list[str]) -> float | None:
    generated = sum(groups[g]["generated_tokens"] for g in names)
    accepted = sum(groups[g].get("num_accepted_tokens") or 0 for g in names)
    return generated / (generated - accepted) if generated > accepted else None


def hindsight(stats: dict) -> dict:
    """Accepted tokens per drafting step of each source alone, of the hybrid, and of the best source per step
    (pooled over every prompt of the phase), and the best's gain over the hybrid in tokens per step."""
    steps = stats["hindsight_steps"]
    per_step = {k[len("hindsight_"):]: 1 + v / steps for k, v in stats.items()
                if k.startswith("hindsight_") and k != "hindsight_steps"}
    return {"steps": steps, "tokens_per_step": per_step,
            "best_over_hybrid": per_step["best"] / per_step["hybrid"]}


def summarise(report: dict) -> dict:
    out: dict = {}
    for phase in ("batch16", "batch1"):
        label = f"batch{report['batch_size']}" if phase == "batch16" else "batch1"
        rows = {}
        for name, config in report["configs"].items():
            groups = config.get("phases", {}).get(phase, {}).get("groups")
            if not groups or name == "vanilla":
                continue
            spec_bench = [g for g in groups if g not in (CODE, "all")]
            rows[name] = {"spec_bench": pooled(groups, spec_bench), "code": pooled(groups, [CODE]) if CODE in groups
                          else None}
        if not rows:
            continue
        for part in ("spec_bench", "code"):
            best = max((rows[b][part] for b in BASELINES if b in rows and rows[b][part]), default=None)
            if "hybrid" in rows and best:
                rows.setdefault("hybrid_over_best_baseline", {})[part] = rows["hybrid"][part] / best
            tree = rows.get(TREE, {}).get(part)
            if "hybrid" in rows and tree:
                rows.setdefault("hybrid_over_token_recycling_tree", {})[part] = rows["hybrid"][part] / tree
        stats = report["configs"].get("hybrid", {}).get("phases", {}).get(phase, {}).get("proposer", {}).get("stats")
        if stats and stats.get("hindsight_steps"):
            rows["hindsight"] = hindsight(stats)
        out[label] = rows
    return out


def retention(by_batch: dict) -> dict:
    """Tokens per forward at each larger batch size over the same configuration's at batch 1 (issue 16: Token
    Recycling keeps >= 0.9 of it at batch 16 and 64), when the summary has batch 1."""
    base = by_batch.get("batch1")
    out: dict = {}
    for label, rows in by_batch.items():
        if base is None or label == "batch1":
            continue
        for name, row in rows.items():
            if name in base and "spec_bench" in row and not name.startswith("hybrid_over"):
                out.setdefault(label, {})[name] = {part: row[part] / base[name][part] for part in ("spec_bench", "code")
                                                   if row.get(part) and base[name].get(part)}
    return out


def main(argv: list[str]) -> None:
    reports = [Path(a) for a in argv]
    summary = {"what": "tokens per target forward, pooled over Spec-Bench's categories and over the code prompts",
               "reports": [str(p) for p in reports], "by_batch": {}}
    for path in reports:
        summary["by_batch"].update(summarise(json.loads(path.read_text())))
    summary["retention_vs_batch1"] = retention(summary["by_batch"])
    first = json.loads(reports[0].read_text()).get("provenance", {})
    summary["provenance"] = {**first, "command": " ".join(["python -m declab.plugins.hybrid_drafter.summary", *argv]),
                             "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "inputs_made": first.get("date")}
    out = reports[0].parent / "summary.json"
    out.write_text(report_json(summary) + "\n")
    print(json.dumps(summary["by_batch"], indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
