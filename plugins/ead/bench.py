"""``declab bench ead``: EAD's quality against its target share, per entropy threshold.

One engine in-process (``DECLAB_PLUGINS=ead``, the proposer's counters read by ``collective_rpc``; decoder-29m as target, the bundled draft, K = ``--k``, window ``--window``) in
a child process; every threshold of ``--thresholds`` runs as a per-request ``entropy_threshold`` on the same engine,
all prompts of a threshold in one concurrent batch, greedy:

* answer accuracy on ``conflict_dev.jsonl`` with its context (answer = the context's, ``answer_rates``) and
  closed-book (the same questions without the context; answer = the fact the model memorised, the item's
  ``prior_answer``: the fact-world's truth that the context contradicts);
* rep-2/3/4 (``repetition_stats``) on the code prompts, ``--code-tokens`` tokens each, EOS ignored;
* agreement with decoder-29m greedy = threshold 0 (which the engine tests show token-identical to vanilla greedy):
  share of positions equal to greedy's, share of outputs identical, mean position of the first divergence;
* target share = target-written tokens / tokens (the proposer's counters), and CPU tokens/s of the batch.

The report names the lowest-target-share threshold whose answer accuracy (both sets together) keeps >= 95 % of
plain greedy's. ``inf`` in ``--thresholds`` is sent (and reported) as ``MAX_THRESHOLD`` = 100 nats, above
ln(vocabulary): the draft writes every token it can.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from declab.integrations.sdk.bench import (
    CODE_PROMPTS,
    CPU_ENGINE_KWARGS,
    IN_PROCESS_ENGINE_ENV,
    answer_rates,
    call_in_child,
    default_model,
    eval_file,
    repetition_stats,
)
from declab.plugins.ead.spec import MAX_THRESHOLD, PROPOSER_PATH

MEASURE_TARGET = "declab.plugins.ead.bench:measure"
KEEP = 0.95  # share of plain greedy's accuracy a threshold must keep


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--thresholds", default="0,0.5,1,1.5,2,3,4,inf", help="comma-separated thresholds (nats)")
    parser.add_argument("--items", type=int, default=200, help="conflict_dev items (max 400), each asked twice")
    parser.add_argument("--answer-tokens", type=int, default=12, help="tokens per answer")
    parser.add_argument("--code-tokens", type=int, default=128, help="tokens per code prompt (EOS ignored)")
    parser.add_argument("--k", type=int, default=8, help="num_speculative_tokens (longest draft chain per step)")
    parser.add_argument("--window", type=int, default=4, help="rolling-entropy window")
    return parser


def agreement(outputs: list[list[int]], greedy: list[list[int]]) -> dict[str, float]:
    """Token-level agreement with greedy: share of greedy's positions matched, identical outputs, first
    divergence (the shorter length when one is a prefix of the other)."""
    matched = total = identical = 0
    firsts = []
    for out, ref in zip(outputs, greedy):
        matched += sum(a == b for a, b in zip(out, ref))
        total += len(ref)
        identical += out == ref
        firsts.append(next((i for i, (a, b) in enumerate(zip(out, ref)) if a != b), min(len(out), len(ref))))
    n = max(len(greedy), 1)
    return {"token_agreement": matched / max(total, 1), "identical_share": identical / n,
            "mean_first_divergence": sum(firsts) / n}


def _drafter_stats(worker) -> dict:
    return dict(worker.model_runner.drafter.stats)


def _run_threshold(llm, threshold: float, requests: list[tuple[str, int, bool]]) -> dict[str, Any]:
    from vllm import SamplingParams

    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=ignore,
                             extra_args={"declab": {"method": "ead", "entropy_threshold": threshold}})
              for _, n, ignore in requests]
    before = llm.collective_rpc(_drafter_stats)[0]
    t0 = time.perf_counter()
    outs = llm.generate([p for p, _, _ in requests], params, use_tqdm=False)
    wall = time.perf_counter() - t0
    after = llm.collective_rpc(_drafter_stats)[0]
    counts = {k: after[k] - before[k] for k in ("target_tokens", "draft_tokens", "to_target", "to_draft")}
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    n_tokens = sum(map(len, tokens))
    return {"threshold": threshold, "texts": [o.outputs[0].text for o in outs],
            "token_ids": tokens, "counts": counts,
            "target_share": counts["target_tokens"] / max(counts["target_tokens"] + counts["draft_tokens"], 1),
            "tokens": n_tokens, "wall_s": wall, "tokens_per_s": n_tokens / wall}


def measure(payload: dict[str, Any]) -> dict[str, Any]:
    """Child side: one EAD engine, every threshold as a per-request parameter."""
    from vllm import LLM

    items = [json.loads(x) for x in eval_file("conflict_dev.jsonl").read_text().splitlines()[: payload["items"]]]
    engine = {**CPU_ENGINE_KWARGS,
              "speculative_config": {"method": "custom_class", "model": PROPOSER_PATH,
                                     "num_speculative_tokens": payload["k"]},
              "additional_config": {"declab": {"ead": {"window": payload["window"]}}}}
    llm = LLM(model=payload["model"], **engine)
    n, code = len(items), CODE_PROMPTS
    requests = ([(it["prompt_with_context"], payload["answer_tokens"], False) for it in items]
                + [(it["prompt_without_context"], payload["answer_tokens"], False) for it in items]
                + [(p, payload["code_tokens"], True) for p in code])
    runs = [_run_threshold(llm, h, requests) for h in payload["thresholds"]]
    greedy = next(r for r in runs if r["threshold"] == 0)["token_ids"]
    rows = []
    for r in runs:
        texts = r.pop("texts")
        tokens = r.pop("token_ids")
        context = answer_rates(texts[:n], items, ("context_answer",))["context_answer"]
        closed = answer_rates(texts[n:2 * n], items, ("prior_answer",))["prior_answer"]
        rows.append({**r, "conflict_accuracy": context, "closed_book_accuracy": closed,
                     "accuracy": (context + closed) / 2,
                     "agreement": agreement(tokens, greedy),
                     "answer_agreement": agreement(tokens[: 2 * n], greedy[: 2 * n]),
                     "code_agreement": agreement(tokens[2 * n:], greedy[2 * n:]),
                     "code_repetition": repetition_stats(tokens[2 * n:])})
    return {"bench": "ead", "model": payload["model"], "draft": "bundled (default_draft_model)",
            "items": n, "code_prompts": len(code), "engine": {k: v for k, v in engine.items()}, **payload,
            "sweep": rows, "choice": choose(rows)}


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The threshold with the lowest target share whose accuracy keeps >= KEEP of plain greedy's (threshold 0)."""
    plain = next(r for r in rows if r["threshold"] == 0)
    keeping = [r for r in rows if r["accuracy"] >= KEEP * plain["accuracy"]]
    best = min(keeping, key=lambda r: (r["target_share"], -r["threshold"]))
    return {"keep": KEEP, "plain_accuracy": plain["accuracy"], "threshold": best["threshold"],
            "target_share": best["target_share"], "accuracy": best["accuracy"],
            "kept": best["accuracy"] / plain["accuracy"] if plain["accuracy"] else None}


def run(args) -> dict[str, Any]:
    if eval_file("conflict_dev.jsonl") is None:
        raise SystemExit("../shared/eval/conflict_dev.jsonl is not present")
    thresholds = [min(float(t), MAX_THRESHOLD) for t in args.thresholds.split(",")]
    if 0.0 not in thresholds:
        thresholds.insert(0, 0.0)  # plain greedy: the reference of agreement and accuracy
    payload = {"model": str(args.model or default_model()), "items": args.items, "thresholds": thresholds,
               "answer_tokens": args.answer_tokens, "code_tokens": args.code_tokens, "k": args.k,
               "window": args.window}
    return call_in_child(MEASURE_TARGET, payload, env={**IN_PROCESS_ENGINE_ENV, "DECLAB_PLUGINS": "ead"}, timeout=None, name="ead engine")


def summary(report: dict[str, Any]) -> str:
    lines = [f"{'h':>5} {'target':>7} {'conflict':>8} {'closed':>7} {'agree':>6} {'1st div':>7} {'rep-2':>6} "
             f"{'rep-4':>6} {'tok/s':>7}"]
    for r in report["sweep"]:
        lines.append(f"{r['threshold']:>5} {r['target_share']:7.3f} {r['conflict_accuracy']:8.3f} "
                     f"{r['closed_book_accuracy']:7.3f} {r['agreement']['token_agreement']:6.3f} "
                     f"{r['agreement']['mean_first_divergence']:7.1f} {r['code_repetition']['rep_2']:6.3f} "
                     f"{r['code_repetition']['rep_4']:6.3f} {r['tokens_per_s']:7.1f}")
    c = report["choice"]
    lines.append(f">= {c['keep']:.0%} of plain greedy's accuracy ({c['plain_accuracy']:.3f}): threshold "
                 f"{c['threshold']} with target share {c['target_share']:.3f} (accuracy {c['accuracy']:.3f})")
    return "\n".join(lines)


def plot(report: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(report["sweep"], key=lambda r: r["target_share"])
    share = [r["target_share"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    ax1.plot(share, [r["conflict_accuracy"] for r in rows], "o-", label="conflict_dev accuracy (with context)")
    ax1.plot(share, [r["closed_book_accuracy"] for r in rows], "s-", label="closed-book accuracy")
    ax1.plot(share, [r["agreement"]["token_agreement"] for r in rows], "^--", label="token agreement with greedy")
    ax1.plot(share, [r["code_repetition"]["rep_2"] for r in rows], "v:", label="rep-2 on code")
    ax1.plot(share, [r["code_repetition"]["rep_4"] for r in rows], "x:", label="rep-4 on code")
    for r in rows:
        ax1.annotate(f"h={r['threshold']:g}", (r["target_share"], r["accuracy"]), fontsize=7, textcoords="offset points",
                     xytext=(2, 4))
    c = report["choice"]
    ax1.axvline(c["target_share"], color="grey", lw=0.8, ls=":",
                label=f"h={c['threshold']:g}: >= {c['keep']:.0%} of greedy's accuracy")
    ax1.set_xlabel("target share (tokens written by decoder-29m)")
    ax1.set_ylabel("share")
    ax1.set_ylim(-0.02, 1.02)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    ax1.set_title("quality vs target share")
    ax2.plot([r["threshold"] for r in rows], share, "o")
    ax2.set_xscale("symlog", linthresh=1.0)
    ax2.set_xlabel(f"threshold h (nats; {MAX_THRESHOLD:g} = never hands over)")
    ax2.set_ylabel("target share")
    ax2.grid(alpha=0.3)
    ax2.set_title(f"window {report['window']}, K {report['k']}")
    fig.suptitle(f"EAD in vLLM: {os.path.basename(report['model'])} + bundled draft, greedy, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
