"""``declab bench lol``: accuracy of LOL and its baselines on the fact world's closed-book and leading questions.

One engine (``DECLAB_PLUGINS=lol,lqcd``), greedy, in a child process (``call_in_child``), on the first ``--items``
items of ``leading_dev.jsonl`` (none of their questions is in the amateur's training data: ``train_amateur.py``):

* closed-book: the ``neutral_prompt`` ("Question: ...?\\nAnswer:"); accuracy = share of answers equal to
  ``true_answer`` (the memorised fact);
* leading queries: the ``leading_prompt`` (the question plus a wrong suggestion); the share of true answers and of
  answers that follow the suggestion.

Methods (rows of the report): plain greedy; ``layers`` (the training-free final-vs-lower-layer contrast, DoLa-style,
for each ``--layers``); ``lqcd`` on leading queries, the CAD-style prompt contrast (the leading prompt against its
neutral version; closed-book questions have no second prompt, so no CAD row there); ``amateur`` (the final-layer
contrast with the hallucinating amateur alone, ICD); ``lol`` (final + lower layer fused, for each ``--layers``).
Answers are compared on their first line, stripped (``sdk.metrics.answer_rates``).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from declab.integrations.sdk.bench import CPU_ENGINE_KWARGS, answer_rates, call_in_child, default_model, eval_file

PLUGINS = "lol,lqcd"
MEASURE_TARGET = "declab.plugins.lol.bench:measure"
MAX_TOKENS = 8


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--items", type=int, default=200, help="leading_dev items (max 400)")
    parser.add_argument("--layers", default="2,4,6", help="comma-separated lower layers for layers / lol")
    parser.add_argument("--alpha", type=float, default=1.0, help="LOL / ICD amateur contrast strength")
    parser.add_argument("--lower-weight", type=float, default=0.5, help="LOL's lower-layer weight")
    parser.add_argument("--lqcd-alpha", type=float, default=0.5, help="alpha of the CAD-style (LQCD) contrast")
    return parser


def methods(layers: list[int], alpha: float, lower_weight: float) -> list[tuple[str, dict | None]]:
    """(row name, declab arguments or None for plain greedy); lqcd is added per item (it needs a second prompt)."""
    rows: list[tuple[str, dict | None]] = [("greedy", None)]
    rows += [(f"layers L{k}", {"method": "lol", "mode": "layers", "lower_layer": k}) for k in layers]
    rows.append(("amateur (ICD)", {"method": "lol", "mode": "amateur", "alpha": alpha}))
    rows += [(f"lol L{k}", {"method": "lol", "mode": "lol", "lower_layer": k, "alpha": alpha,
                            "lower_weight": lower_weight}) for k in layers]
    return rows


def measure(payload: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    items = payload["items"]
    llm = LLM(model=payload["model"], **CPU_ENGINE_KWARGS)

    def params(declab: dict | None):
        return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                              extra_args={"declab": declab} if declab else None)

    def texts(prompts, ps) -> list[str]:
        return [o.outputs[0].text for o in llm.generate(prompts, ps, use_tqdm=False)]

    rows = []
    for name, declab in methods(payload["layers"], payload["alpha"], payload["lower_weight"]):
        t0 = time.perf_counter()
        out = texts([it["neutral_prompt"] for it in items] + [it["leading_prompt"] for it in items], params(declab))
        rows.append({"method": name, "declab": declab, "wall_s": time.perf_counter() - t0,
                     "closed_book": answer_rates(out[: len(items)], items, ("true_answer",)),
                     "leading": answer_rates(out[len(items):], items, ("true_answer", "suggested_answer"))})
    lqcd = {"method": "lqcd", "alpha": payload["lqcd_alpha"]}
    t0 = time.perf_counter()
    out = texts([it["leading_prompt"] for it in items],
                [params({**lqcd, "contrast_prompt": it["neutral_prompt"]}) for it in items])
    rows.append({"method": "cad-style (lqcd)", "declab": lqcd, "wall_s": time.perf_counter() - t0,
                 "closed_book": None, "leading": answer_rates(out, items, ("true_answer", "suggested_answer"))})
    from declab.plugins.lol.amateur import delta_metadata

    return {"bench": "lol", "model": payload["model"], "items": len(items), "max_tokens": MAX_TOKENS,
            "engine": CPU_ENGINE_KWARGS, "amateur": delta_metadata(), "rows": rows}


def run(args) -> dict[str, Any]:
    path = eval_file("leading_dev.jsonl")
    if path is None:
        raise SystemExit("../shared/eval/leading_dev.jsonl is not present")
    items = [json.loads(x) for x in path.read_text().splitlines() if x.strip()][: args.items]
    payload = {"model": str(args.model or default_model()), "items": items,
               "layers": [int(k) for k in args.layers.split(",")], "alpha": args.alpha,
               "lower_weight": args.lower_weight, "lqcd_alpha": args.lqcd_alpha}
    return call_in_child(MEASURE_TARGET, payload, env={"DECLAB_PLUGINS": PLUGINS}, timeout=None, name="lol engine")


def summary(report: dict[str, Any]) -> str:
    lines = [f"{'method':<18} {'closed-book true':>16} {'leading true':>13} {'leading follows':>16}"]
    for r in report["rows"]:
        cb = r["closed_book"]
        lines.append(f"{r['method']:<18} {'-' if cb is None else format(cb['true_answer'], '.3f'):>16} "
                     f"{r['leading']['true_answer']:>13.3f} {r['leading']['suggested_answer']:>16.3f}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    names = [r["method"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4.2))
    w = 0.28
    ax.bar([i - w for i in x], [r["closed_book"]["true_answer"] if r["closed_book"] else 0 for r in rows], w,
           label="closed-book: true")
    ax.bar(list(x), [r["leading"]["true_answer"] for r in rows], w, label="leading: true")
    ax.bar([i + w for i in x], [r["leading"]["suggested_answer"] for r in rows], w, label="leading: follows wrong")
    ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("share of greedy answers")
    ax.set_title(f"LOL and baselines, leading_dev[:{report['items']}] (decoder-29m, greedy)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
