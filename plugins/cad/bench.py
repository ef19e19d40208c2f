"""Contrastive decoding (CAD / LQCD / M3ID / CFG): faithfulness vs alpha on the fact-world dev sets, and cost at
batch 16.

``declab bench contrastive`` (declared by the CAD plugin: its cost part measures CAD, and LQCD / M3ID appear only as
method names in the requests).

One engine (``DECLAB_PLUGINS=cad,lqcd,m3id,cfg``), greedy, in a child process of its own (the bench harness's
``call_in_child``):

* faithfulness: CAD on ``conflict_dev.jsonl`` (share of answers equal to the context / to the memorised prior),
  LQCD on ``leading_dev.jsonl`` (share equal to the suggested wrong answer / to the true answer), M3ID on the
  conflict set, for each alpha of ``--alphas`` (alpha 0 = plain greedy on the conditioned prompt);
* cost at ``--batch`` concurrent requests of ``--max-tokens`` tokens (EOS ignored): plain decoding, CAD through
  the companion rows, and the naive client-side baseline that sends the contrast input as a second, independent
  engine request every step (``max_tokens=1`` with full-vocabulary logprobs, prefix caching on) and combines the
  two distributions itself (vectorised; ``--no-naive`` skips it); classifier-free guidance (``cfg``, g = 1.5) with
  the context-free prompt as negative prompt (CAD's workload at alpha 0.5: same tokens) and with an empty negative
  prompt (a one-token unconditional prompt); all timed alike, best of ``--repeats``.

``--parts`` runs a subset (``cost`` alone takes a minute without the naive baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from declab.integrations.sdk.bench import CPU_ENGINE_KWARGS, answer_rates, call_in_child, default_model, eval_file

CONTRASTIVE_PLUGINS = "cad,lqcd,m3id,cfg"
PARTS = ("faithfulness", "cost")
CFG_SCALE = 1.5  # = CAD alpha 0.5
MEASURE_TARGET = "declab.plugins.cad.bench:measure"  # the child's side
ENGINE_KWARGS = {**CPU_ENGINE_KWARGS, "max_logprobs": -1}  # the naive baseline reads full-vocabulary logprobs


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--items", "--limit", type=int, default=400, dest="items",
                        help="dev items per set (max 400)")
    parser.add_argument("--alphas", default="0,0.25,0.5,1,2", help="comma-separated alpha values")
    parser.add_argument("--batch", type=int, default=16, help="concurrent requests for the cost measurement")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request for the cost measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (best of)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                        help="time the naive client-side CAD baseline in the cost part (minutes on CPU)")
    return parser


def _load(name: str, n: int) -> list[dict]:
    path = eval_file(name)
    if path is None:
        raise SystemExit(f"../shared/eval/{name} is not present")
    return [json.loads(x) for x in path.read_text().splitlines()[:n]]


def _params(method: str | None, contrast: str | None = None, max_tokens: int = 12, **kw):
    from vllm import SamplingParams

    extra = None
    if method is not None:
        extra = {"declab": {"method": method, "contrast_prompt": contrast, **kw}}
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, extra_args=extra)


def _texts(llm, prompts, params) -> list[str]:
    return [o.outputs[0].text for o in llm.generate(prompts, params, use_tqdm=False)]


def faithfulness(llm, conflict: list[dict], leading: list[dict], alphas: list[float]) -> dict[str, Any]:
    rows = []
    for alpha in alphas:
        prompts = [it["prompt_with_context"] for it in conflict] + [it["leading_prompt"] for it in leading]
        params = [_params("cad", it["prompt_without_context"], alpha=alpha) for it in conflict]
        params += [_params("lqcd", it["neutral_prompt"], alpha=alpha) for it in leading]
        t0 = time.perf_counter()
        texts = _texts(llm, prompts, params)
        wall = time.perf_counter() - t0
        cad = answer_rates(texts[: len(conflict)], conflict, ("context_answer", "prior_answer"))
        lqcd = answer_rates(texts[len(conflict):], leading, ("suggested_answer", "true_answer"))
        rows.append({"alpha": alpha, "cad": cad, "lqcd": lqcd, "wall_s": wall})
    plain_texts = _texts(llm, [it["prompt_with_context"] for it in conflict] + [it["leading_prompt"] for it in leading],
                         _params(None))
    m3id_texts = _texts(llm, [it["prompt_with_context"] for it in conflict],
                        [_params("m3id", it["prompt_without_context"]) for it in conflict])
    return {
        "sweep": rows,
        "plain": {
            "cad_set": answer_rates(plain_texts[: len(conflict)], conflict, ("context_answer", "prior_answer")),
            "lqcd_set": answer_rates(plain_texts[len(conflict):], leading, ("suggested_answer", "true_answer")),
        },
        "m3id_defaults": answer_rates(m3id_texts, conflict, ("context_answer", "prior_answer")),
    }


def _timed_once(llm, prompts, params) -> dict[str, Any]:
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "token_ids": [list(o.outputs[0].token_ids) for o in outs]}


def naive_cad(llm, items: list[dict], alpha: float, max_tokens: int) -> dict[str, Any]:
    """Client-side CAD, what a user without companion rows would write: every step, two independent engine
    requests per item (the prompt with and without the context, each ``max_tokens=1`` with the full vocabulary's
    logprobs, prefix caching on), combined outside the engine with this plugin's own ``contrast``. The client side is
    vectorised (vLLM's flat logprobs container read into one tensor per row, no Python loop over the vocabulary);
    what remains is vLLM's cost of returning 8,192 logprobs per request and of a request round trip per token."""
    import torch
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from declab.integrations.sdk.rows import RowContext
    from declab.plugins.cad.core import CADProcessor

    tok = llm.get_tokenizer()
    vocab = llm.llm_engine.model_config.get_vocab_size()
    cad = CADProcessor({"alpha": alpha, "contrast_prompt": ""}, [], [], RowContext(vocab_size=vocab))
    mains = [tok.encode(it["prompt_with_context"]) for it in items]
    contrasts = [tok.encode(it["prompt_without_context"]) for it in items]
    generated: list[list[int]] = [[] for _ in items]
    step_params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=-1, detokenize=False, flat_logprobs=True)

    def row(output) -> torch.Tensor:
        flat = output.outputs[0].logprobs  # FlatLogprobs of the one generated position
        out = torch.full((vocab,), float("-inf"))
        out[torch.as_tensor(flat.token_ids, dtype=torch.long)] = torch.as_tensor(flat.logprobs, dtype=out.dtype)
        return out

    t0 = time.perf_counter()
    for step in range(max_tokens):
        prompts = [TokensPrompt(prompt_token_ids=m + g) for m, g in zip(mains, generated)]
        prompts += [TokensPrompt(prompt_token_ids=c + g) for c, g in zip(contrasts, generated)]
        outs = llm.generate(prompts, step_params, use_tqdm=False)
        n = len(items)
        for i in range(n):
            generated[i].append(int(torch.argmax(cad.contrast(row(outs[i]), row(outs[n + i]), step))))
    wall = time.perf_counter() - t0
    tokens = sum(len(g) for g in generated)
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "token_ids": generated}


def _best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of repeated runs, with every run's tokens/s kept (``tokens_per_s_all``)."""
    best = min(runs, key=lambda r: r["wall_s"])
    return {**best, "tokens_per_s_all": [r["tokens_per_s"] for r in runs], "repeats": len(runs)}


def _same_share(configs: dict[str, Any], a: str, b: str) -> float:
    pairs = list(zip(configs[a]["token_ids"], configs[b]["token_ids"], strict=True))
    return sum(x == y for x, y in pairs) / len(pairs)


def cost(llm, items: list[dict], max_tokens: int, repeats: int, naive: bool = True) -> dict[str, Any]:
    from vllm import SamplingParams

    prompts = [it["prompt_with_context"] for it in items]

    def params(declab: dict[str, Any] | None) -> Any:
        extra = None if declab is None else {"declab": declab}
        return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, extra_args=extra)

    plain = params(None)
    cad = [params({"method": "cad", "alpha": 0.5, "contrast_prompt": it["prompt_without_context"]}) for it in items]
    cfg = [params({"method": "cfg", "guidance_scale": CFG_SCALE, "negative_prompt": it["prompt_without_context"]})
           for it in items]
    cfg_empty = params({"method": "cfg", "guidance_scale": CFG_SCALE})
    _timed_once(llm, prompts, plain)  # warm-up
    # Every configuration is timed the same way: `repeats` runs, the fastest reported.
    configs = {
        "plain": _best_of([_timed_once(llm, prompts, plain) for _ in range(repeats)]),
        "cad (companion rows)": _best_of([_timed_once(llm, prompts, cad) for _ in range(repeats)]),
        "cfg (companion rows)": _best_of([_timed_once(llm, prompts, cfg) for _ in range(repeats)]),
        "cfg (empty negative prompt)": _best_of([_timed_once(llm, prompts, cfg_empty) for _ in range(repeats)]),
    }
    if naive:
        configs["cad (naive: 2 requests/step)"] = _best_of([naive_cad(llm, items, 0.5, max_tokens)
                                                            for _ in range(repeats)])
    shares = {"cfg_equals_cad_share": _same_share(configs, "cfg (companion rows)", "cad (companion rows)")}
    if naive:
        shares["naive_equals_companion_share"] = _same_share(configs, "cad (companion rows)",
                                                             "cad (naive: 2 requests/step)")
    base = configs["plain"]["tokens_per_s"]
    for c in configs.values():
        c["vs_plain"] = c["tokens_per_s"] / base
        c.pop("token_ids")
    return {"batch": len(items), "max_tokens": max_tokens, "cfg_guidance_scale": CFG_SCALE, "configs": configs,
            **shares}


def measure(payload: dict[str, Any]) -> dict[str, Any]:
    """Child side: one engine with the contrastive plugins selected; faithfulness, then cost."""
    from vllm import LLM

    conflict = _load("conflict_dev.jsonl", payload["items"])
    leading = _load("leading_dev.jsonl", payload["items"])
    llm = LLM(model=payload["model"], **ENGINE_KWARGS)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"bench": "contrastive", "model": payload["model"], "items": len(conflict),
                              "engine": ENGINE_KWARGS}
    parts = payload.get("parts", PARTS)
    if "faithfulness" in parts:
        report["faithfulness"] = faithfulness(llm, conflict, leading, payload["alphas"])
    if "cost" in parts:
        report["cost"] = cost(llm, conflict[: payload["batch"]], payload["max_tokens"], payload["repeats"],
                              payload.get("naive", True))
    report["total_s"] = time.perf_counter() - t0
    return report


def run(args) -> dict[str, Any]:
    for name in ("conflict_dev.jsonl", "leading_dev.jsonl"):
        if eval_file(name) is None:
            raise SystemExit(f"../shared/eval/{name} is not present")
    payload = {"model": str(args.model or default_model()), "items": args.items,
               "alphas": [float(a) for a in args.alphas.split(",")], "batch": args.batch,
               "max_tokens": args.max_tokens, "repeats": args.repeats, "naive": args.naive,
               "parts": _parts(args.parts)}
    return call_in_child(MEASURE_TARGET, payload, env={"DECLAB_PLUGINS": CONTRASTIVE_PLUGINS}, timeout=None,
                         name="contrastive engine")


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise SystemExit(f"--parts: {unknown or text!r} not a subset of {','.join(PARTS)}")
    return parts


def summary(report: dict[str, Any]) -> str:
    lines = []
    f = report.get("faithfulness")
    if f is not None:
        lines.append(f"plain: conflict {f['plain']['cad_set']}  leading {f['plain']['lqcd_set']}")
        for r in f["sweep"]:
            lines.append(f"alpha {r['alpha']:<5} CAD context {r['cad']['context_answer']:.3f} prior "
                         f"{r['cad']['prior_answer']:.3f} | LQCD suggested {r['lqcd']['suggested_answer']:.3f} true "
                         f"{r['lqcd']['true_answer']:.3f}")
        lines.append(f"m3id (defaults) on conflicts: {f['m3id_defaults']}")
    for name, c in report.get("cost", {}).get("configs", {}).items():
        lines.append(f"{name:<30} {c['tokens_per_s']:8.1f} tok/s  {c['vs_plain']:.2f}x plain")
    return "\n".join(lines)


def plot(report: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, c = report.get("faithfulness"), report.get("cost")
    panels = (2 if f is not None else 0) + (1 if c is not None else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), squeeze=False)
    axes = list(axes[0])
    if f is not None:
        _plot_faithfulness(axes.pop(0), axes.pop(0), f, report["items"])
    if c is not None:
        _plot_cost(axes.pop(0), c)
    fig.suptitle(f"Contrastive decoding in vLLM ({os.path.basename(report['model'])}, greedy)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_faithfulness(ax1, ax2, f: dict[str, Any], items: int) -> None:
    alphas = [r["alpha"] for r in f["sweep"]]
    ax1.plot(alphas, [r["cad"]["context_answer"] for r in f["sweep"]], "o-", label="follows context")
    ax1.plot(alphas, [r["cad"]["prior_answer"] for r in f["sweep"]], "s--", label="follows memorised prior")
    ax1.set_title(f"CAD, conflict_dev ({items} items)")
    ax2.plot(alphas, [r["lqcd"]["true_answer"] for r in f["sweep"]], "o-", label="true answer")
    ax2.plot(alphas, [r["lqcd"]["suggested_answer"] for r in f["sweep"]], "s--", label="follows wrong suggestion")
    ax2.set_title(f"LQCD, leading_dev ({items} items)")
    # Plain greedy decoding of the main prompt, for reference.
    plain = f["plain"]
    ax1.axhline(plain["cad_set"]["context_answer"], color="grey", lw=0.8, ls=":", label="plain greedy: context")
    ax1.axhline(plain["cad_set"]["prior_answer"], color="grey", lw=0.8, ls="-.", label="plain greedy: prior")
    ax2.axhline(plain["lqcd_set"]["true_answer"], color="grey", lw=0.8, ls=":", label="plain greedy: true")
    ax2.axhline(plain["lqcd_set"]["suggested_answer"], color="grey", lw=0.8, ls="-.",
                label="plain greedy: suggestion")
    for ax in (ax1, ax2):
        ax.set_xlabel("alpha")
        ax.set_ylabel("share of greedy answers")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def _plot_cost(ax3, c: dict[str, Any]) -> None:
    names = list(c["configs"])
    colors = {"plain": "grey", "cad (naive: 2 requests/step)": "tab:red"}
    ax3.bar(range(len(names)), [c["configs"][n]["tokens_per_s"] for n in names],
            color=[colors.get(n, "tab:blue" if n.startswith("cad") else "tab:green") for n in names])
    ax3.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=7)
    for i, n in enumerate(names):
        ax3.annotate(f"{c['configs'][n]['vs_plain']:.2f}x", (i, c["configs"][n]["tokens_per_s"]), ha="center",
                     va="bottom")
    ax3.set_ylabel("tokens/s")
    ax3.margins(y=0.12)
    ax3.set_title(f"batch {c['batch']}, {c['max_tokens']} tokens, CPU")
