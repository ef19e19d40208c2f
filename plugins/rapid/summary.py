"""RAPID against vLLM's ``draft_model`` on the long-context prompts, pooled over repeated ``declab bench spec`` runs.

On this 2-core CPU engines of the same configuration on the same prompts differ by up to about 8 % in tokens/s
(vLLM's ``draft_model`` at K = 1 on the RAG and summarization prompts: 52.9 to 57.1 over the three runs of
``measurements/rapid-long-context``), as much as the differences to be decided. So the comparison runs R times
(``measurements/rerun.sh``) and this module pools the runs:
per configuration (``draft_model`` per swept K, each RAPID configuration at its K) the median, lowest and highest
tokens/s and tokens per target forward of the batched phase, and per run the ratios

* ``rapid_over_draft_model_same_k``: each RAPID configuration over ``draft_model`` at the same K (equal draft
  length; their acceptance is compared by tokens per target forward beside it),
* ``best_rapid_over_best_draft_model``: the run's fastest RAPID configuration over ``draft_model`` at its fastest K
  in that run (each side at its own best K),
* ``rapid_over_full_context``: RAPID over the same proposer reading the whole prompt (the paper's idea isolated).

``batch1`` pools the one-request-at-a-time phase the same way (``draft_model`` there at the K its sweep chose).

A ratio "holds" when it exceeds 1 in every run. Writes ``summary.json`` and ``summary.png`` beside the runs' folders::

    python -m declab.plugins.rapid.summary measurements/rapid-long-context/run1/spec.json [run2/spec.json ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from declab.integrations.sdk.bench import report_json

PHASE = "batch16"
DRAFT = "draft_model"
FULL = "rapid_full_context"


def rapid_configs(report: dict) -> dict[str, int]:
    """The report's RAPID configurations reading the shortened context, with their K."""
    return {name: int(c["speculative_config"]["num_speculative_tokens"]) for name, c in report["configs"].items()
            if name.startswith("rapid") and name != FULL and c.get("speculative_config")}


def run_rows(report: dict, phase: str = PHASE) -> dict[str, dict]:
    """One run's rows of ``phase``: every configuration's tokens/s, tokens per target forward and identity with
    vanilla; in the batched phase ``draft_model@K`` per swept K (the sweep ran on the phase's prompts and batches)
    replaces ``draft_model`` (its chosen K), at batch 1 ``draft_model`` is the K the sweep chose."""
    rows: dict[str, dict] = {}
    if phase == PHASE:
        sweep = report.get("draft_model_sweep") or {}
        if sweep and not sweep.get("same_prompts_as_phases"):
            raise ValueError("draft_model's sweep ran on other prompts than the phases: run with "
                             "--draft-sweep-on selected")
        rows = {f"{DRAFT}@{r['k']}": {"k": r["k"], "tokens_per_s": r["tokens_per_s"],
                                       "tokens_per_forward": r["tokens_per_forward"]} for r in sweep.get("results", [])}
    for name, config in report["configs"].items():
        if name == DRAFT and phase == PHASE:
            continue
        row = config.get("phases", {}).get(phase, {}).get("groups", {}).get("all")
        if row:
            k = (config.get("speculative_config") or {}).get("num_speculative_tokens")
            rows[name] = {"k": k, "tokens_per_s": row["tokens_per_s"],
                          "tokens_per_forward": row.get("tokens_per_forward"),
                          "token_identical_share": row.get("token_identical_share")}
    return rows


def run_ratios(report: dict, rows: dict[str, dict]) -> dict:
    rapid = rapid_configs(report)
    drafts = {name: row for name, row in rows.items() if name.startswith(f"{DRAFT}@")}
    out: dict = {"rapid_over_draft_model_same_k": {}}
    for name, k in rapid.items():
        same = drafts.get(f"{DRAFT}@{k}")
        if same:
            out["rapid_over_draft_model_same_k"][name] = {
                "k": k, "tokens_per_s": rows[name]["tokens_per_s"] / same["tokens_per_s"],
                "tokens_per_forward": (rows[name]["tokens_per_forward"], same["tokens_per_forward"])}
    if rapid and drafts:
        best_rapid = max(rapid, key=lambda n: rows[n]["tokens_per_s"])
        best_draft = max(drafts, key=lambda n: drafts[n]["tokens_per_s"])
        out["best_rapid_over_best_draft_model"] = {
            "rapid": best_rapid, "draft_model": best_draft,
            "tokens_per_s": rows[best_rapid]["tokens_per_s"] / drafts[best_draft]["tokens_per_s"],
            "tokens_per_forward": (rows[best_rapid]["tokens_per_forward"], drafts[best_draft]["tokens_per_forward"])}
    if FULL in rows:
        k_full = rows[FULL]["k"]
        out["rapid_over_full_context"] = {name: rows[name]["tokens_per_s"] / rows[FULL]["tokens_per_s"]
                                          for name, k in rapid.items() if k == k_full}
    return out


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def pooled_configs(per_run: list[dict[str, dict]]) -> dict:
    """Per configuration present in every run: K (a list, one per run, where runs differ), tokens/s and tokens per
    forward over runs, lowest identity."""
    configs = {}
    for name in [n for n in per_run[0] if all(n in rows for rows in per_run)]:
        rows = [rows[name] for rows in per_run]
        ks = [r["k"] for r in rows]  # draft_model's chosen K may differ between runs: then one per run
        configs[name] = {"k": ks[0] if len(set(ks)) == 1 else ks,
                         "tokens_per_s": spread([r["tokens_per_s"] for r in rows]),
                         "tokens_per_forward": spread([r["tokens_per_forward"] for r in rows])
                         if rows[0]["tokens_per_forward"] is not None else None}
        shares = [r.get("token_identical_share") for r in rows if r.get("token_identical_share") is not None]
        if shares:
            configs[name]["token_identical_share_min"] = min(shares)
    return configs


def summarise(reports: list[dict]) -> dict:
    per_run = [run_rows(r) for r in reports]
    ratios = [run_ratios(r, rows) for r, rows in zip(reports, per_run)]
    configs = pooled_configs(per_run)
    batch1 = [run_rows(r, "batch1") for r in reports]
    verdicts: dict = {"rapid_over_draft_model_same_k": {}}
    for name in ratios[0]["rapid_over_draft_model_same_k"]:
        values = [r["rapid_over_draft_model_same_k"][name]["tokens_per_s"] for r in ratios]
        verdicts["rapid_over_draft_model_same_k"][name] = {**spread(values), "holds": min(values) > 1.0}
    if "best_rapid_over_best_draft_model" in ratios[0]:
        values = [r["best_rapid_over_best_draft_model"]["tokens_per_s"] for r in ratios]
        verdicts["best_rapid_over_best_draft_model"] = {**spread(values), "holds": min(values) > 1.0}
    if ratios[0].get("rapid_over_full_context"):
        verdicts["rapid_over_full_context"] = {
            name: {**spread(vals), "holds": min(vals) > 1.0}
            for name in ratios[0]["rapid_over_full_context"]
            for vals in [[r["rapid_over_full_context"][name] for r in ratios]]}
    first = reports[0]
    return {"what": f"tokens/s and tokens per target forward of the batched phase (batch {first['batch_size']}, "
                    "all selected prompts), pooled over runs; ratios per run", "phase": PHASE,
            "groups": first.get("groups"), "prompts": first["prompts"]["total"], "runs": len(reports),
            "configs": configs, "per_run": ratios, "verdicts": verdicts,
            "batch1": pooled_configs(batch1) if all(batch1) else None}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["configs"])
    med = [summary["configs"][n]["tokens_per_s"]["median"] for n in names]
    low = [m - summary["configs"][n]["tokens_per_s"]["min"] for n, m in zip(names, med)]
    high = [summary["configs"][n]["tokens_per_s"]["max"] - m for n, m in zip(names, med)]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(names)), med, yerr=[low, high], capsize=4,
           color=["#8c564b" if n.startswith("rapid") else "#7f7f7f" for n in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("tokens/s (CPU, median; bars: lowest..highest run)")
    ax.set_title(f"RAPID vs draft_model, {summary['prompts']} long prompts ({', '.join(summary['groups'] or [])}), "
                 f"{summary['runs']} runs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    paths = [Path(a) for a in argv]
    if not paths:
        raise SystemExit("usage: python -m declab.plugins.rapid.summary RUN/spec.json [RUN/spec.json ...]")
    reports = [json.loads(p.read_text()) for p in paths]
    summary = {**summarise(reports), "reports": [str(p) for p in paths]}
    prov = reports[0].get("provenance", {})
    summary["provenance"] = {**prov, "command": " ".join(["python -m declab.plugins.rapid.summary", *argv]),
                             "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "inputs_made": [r.get("provenance", {}).get("date") for r in reports]}
    out = paths[0].parent.parent
    (out / "summary.json").write_text(report_json(summary) + "\n")
    plot(summary, out / "summary.png")
    print(json.dumps(summary["verdicts"], indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
