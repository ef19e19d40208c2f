"""``declab bench spec``'s ``draft_model`` configuration: vLLM's own draft-model speculation, K swept first.

vLLM's ``draft_model`` method runs a small model (same tokenizer as the target) for K forwards per step (one over
the tokens the target just verified, then one per further draft token) and verifies the chain of K in one target
pass. It is the baseline the draft-model plugins are compared with, at its best fixed K.

The draft is ``--draft-model`` (default ``default_draft_model()``: ``$DECLAB_DRAFT_MODEL`` or the shared fixture
``draft-5m``); without one the configuration is recorded as ``{"available": false, "reason": ...}``.

K sweep: unlike the n-gram lookup, a draft model's drafts cannot be cut to a smaller K on a live engine (the
scheduler reserves K slots per step and the drafter runs K forwards whatever is kept), so every K of
``--draft-ks`` gets an engine of its own on the sweep subset (about one engine start each: the default grid
1,2,3,4,6,8 keeps that to six). The best K by tokens/s runs the full phases; the sweep also names the best K by
tokens per target forward (the measure the adaptive-length plugins are compared on) and is
``report["draft_model_sweep"]``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from declab.integrations.models import draft_label
from declab.integrations.sdk.bench import RunSpec
from declab.integrations.sdk.runtime import VLLM_METHOD_ENV

NAME = "draft_model"
DEFAULT_DRAFT_KS = (1, 2, 3, 4, 6, 8)


def draft_spec(path: str, k: int, temperature: float = 0.0) -> dict[str, Any]:
    """vLLM's ``speculative_config`` for draft model ``path`` drafting ``k`` tokens per step. At temperature > 0 the
    draft samples its tokens and vLLM's rejection sampler reads its probabilities (``draft_sample_method=
    "probabilistic"``: standard speculative sampling, vLLM's best chain when sampling); vLLM's default drafts the
    argmax and treats it as a one-hot draft distribution, which accepts far less when sampling."""
    spec = {"method": "draft_model", "model": path, "num_speculative_tokens": k}
    return {**spec, "draft_sample_method": "probabilistic"} if temperature > 0 else spec


def draft_availability(path: str | None) -> dict[str, Any]:
    """``{"available": True, "path": ...}`` or ``{"available": False, "reason": ...}`` (no draft found, or a folder
    that holds no model)."""
    if not path:
        return {"available": False, "reason": "no draft model: pass --draft-model PATH or set DECLAB_DRAFT_MODEL "
                "(default: ../shared/fixtures/draft-5m beside the checkout, not found)"}
    if not (Path(path) / "config.json").is_file():
        return {"available": False, "reason": f"draft model {path!r}: no config.json there"}
    return {"available": True, "path": str(path), "name": draft_label(path)}


def parse_ks(text: str) -> list[int]:
    """``--draft-ks`` ("1,2,4") -> [1, 2, 4]; each K >= 1."""
    ks = [int(k) for k in text.split(",") if k.strip()]
    if not ks or min(ks) < 1:
        raise SystemExit(f"declab bench spec: --draft-ks {text!r}: a comma list of K >= 1")
    return ks


def sweep_unless_given(k: int | None, **sweep: Any) -> dict[str, Any]:
    """``report["draft_model_sweep"]``: ``{"skipped": True, "chosen": {"k": k}}`` for a given K (``--draft-k``),
    else ``run_draft_sweep(**sweep)``."""
    if k:
        return {"skipped": True, "chosen": {"k": k}}
    sweep["log"](f"{NAME} sweep: {len(sweep['subset'])} prompts, K {sweep['ks']}, draft {sweep['draft']}")
    return run_draft_sweep(**sweep)


def run_draft_sweep(*, model: str, draft: str, subset: list[dict[str, Any]], sampling: dict[str, Any],
                    engine_kwargs: dict[str, Any], ks: list[int], batch_size: int, timeout: float,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """One engine per K on ``subset`` (batches of ``batch_size``); rows of tokens/s, tokens per target forward,
    acceptance by position and the drafter's share of the wall time; the best K by tokens/s is ``chosen``."""
    from declab.integrations.bench_spec import acceptance, run_child  # the harness that imports this module

    prompts = [it["text"] for it in subset]
    batches = [list(range(len(prompts)))[s : s + batch_size] for s in range(0, len(prompts), batch_size)]
    rows = []
    for k in ks:
        spec = RunSpec(model=model, prompts=prompts, sampling=sampling, name=f"{NAME}-sweep-K{k}",
                       engine_kwargs={**engine_kwargs, "speculative_config": draft_spec(
                           draft, k, sampling.get("temperature", 0.0))},
                       env=VLLM_METHOD_ENV, collect_metrics=True)
        t = time.perf_counter()
        res = run_child(spec, {"phases": [{"name": f"K{k}", "batches": batches}]}, timeout=timeout)
        ph = res["phases"][0]
        wall = sum(ph["batch_times_s"])
        acc = acceptance(ph["request_metrics"], ph["token_ids"])
        rows.append({"k": k, "tokens_per_s": sum(len(t) for t in ph["token_ids"]) / wall,
                     "tokens_per_forward": acc.get("tokens_per_forward"),
                     "mean_accepted_length": acc.get("mean_accepted_length"),
                     "draft_acceptance_rate": acc.get("draft_acceptance_rate"),
                     "acceptance_per_position": acc.get("acceptance_per_position"),
                     "draft_share_of_time": ph["worker"].get("propose_seconds", 0.0) / max(1e-9, wall),
                     "startup_s": res["startup_s"], "engine_s": time.perf_counter() - t})
        log(f"  {NAME} sweep K={k}: {rows[-1]['tokens_per_s']:.1f} tok/s, "
            f"{rows[-1]['tokens_per_forward']:.2f} tokens/forward ({rows[-1]['engine_s']:.0f} s)")
    return {"prompts": len(prompts), "prompt_ids": [it["id"] for it in subset], "batch_size": batch_size,
            "draft_model": draft, "criterion": "highest tokens/s on the subset (batches of --batch-size), one "
            "engine per K", "results": rows, "chosen": max(rows, key=lambda r: r["tokens_per_s"]),
            "best_by_tokens_per_forward": max(rows, key=lambda r: r["tokens_per_forward"] or 0.0)}


def draft_tokens_per_step(config: dict[str, Any], phase: str) -> float | None:
    """Draft tokens a configuration's draft model wrote per request and step (its draft compute): the proposer's
    own count when it reports one (``drafted_tokens`` / ``draft_rows``: a proposer may draft ahead of what it hands
    over), else the tokens vLLM verified per drafting step."""
    ph = config.get("phases", {}).get(phase, {})
    stats = (ph.get("proposer") or {}).get("stats") or {}
    if stats.get("draft_rows"):
        return stats["drafted_tokens"] / stats["draft_rows"]
    row = ph.get("groups", {}).get("all", {})
    return row["num_draft_tokens"] / row["num_drafts"] if row.get("num_drafts") else None


def equal_draft_compute(report: dict[str, Any], phase: str = "batch16") -> dict[str, Any]:
    """Each draft-model configuration's tokens per target forward next to the fixed-K ``draft_model`` curve at the
    same draft tokens per step (linear between the swept K; the curve's draft tokens per step is K). Meaningful
    when the sweep ran on the configurations' own prompts (``--draft-sweep-on selected``)."""
    sweep = report.get("draft_model_sweep") or {}
    curve = sorted((r["k"], r["tokens_per_forward"]) for r in sweep.get("results", []) if r.get("tokens_per_forward"))
    if len(curve) < 2:
        return {}
    out: dict[str, Any] = {"phase": phase, "sweep_on_the_same_prompts": sweep.get("same_prompts_as_phases"),
                           "sweep_phase": "batch16", "configs": {}}
    for name, cfg in report.get("configs", {}).items():
        if name == NAME or not cfg.get("available", True):
            continue
        stats = (cfg.get("phases", {}).get(phase, {}).get("proposer") or {}).get("stats") or {}
        if "draft_forwards" not in stats:  # not a draft-model proposer
            continue
        x = draft_tokens_per_step(cfg, phase)
        row = cfg["phases"][phase]["groups"]["all"]
        if x is None:
            continue
        k0, t0 = next(((k, t) for k, t in reversed(curve) if k <= x), curve[0])
        k1, t1 = next(((k, t) for k, t in curve if k >= x), curve[-1])
        fixed = t0 if k1 == k0 else t0 + (t1 - t0) * (x - k0) / (k1 - k0)
        best = max(curve, key=lambda kt: kt[1])
        out["configs"][name] = {"draft_tokens_per_step": x, "tokens_per_forward": row["tokens_per_forward"],
                                "fixed_k_tokens_per_forward_at_equal_draft": fixed,
                                "ratio": row["tokens_per_forward"] / fixed,
                                "best_fixed_k": best[0], "best_fixed_k_tokens_per_forward": best[1]}
    return out


def sweep_summary(sweep: dict[str, Any]) -> str:
    """One line per sweep for ``declab bench spec``'s printed summary."""
    if sweep.get("skipped"):
        return f"{NAME}: K {sweep['chosen']['k']} given (no sweep)"
    cells = ", ".join(f"K{r['k']} {r['tokens_per_forward']:.2f} tok/fwd {r['tokens_per_s']:.0f} tok/s"
                      for r in sweep["results"])
    return (f"{NAME} sweep ({sweep['prompts']} prompts): {cells}; chosen K{sweep['chosen']['k']} (tokens/s), "
            f"best tokens/forward K{sweep['best_by_tokens_per_forward']['k']}")


def trees_vs_chain(report: dict[str, Any]) -> dict[str, Any]:
    """Each draft-*tree* configuration (its proposer counts ``tree_drafts``) against vLLM's ``draft_model`` chain, per
    phase: tokens per target forward of both and their ratio, acceptance by tree depth, mean tree size and depth,
    draft forwards per drafting step. The chain is the K ``draft_model``'s phases ran at
    (``draft_model_sweep.phases_k``; ``--draft-choose tokens_per_forward`` makes it the sweep's best chain); with a
    sweep on the same prompts (``--draft-sweep-on selected``) the sweep's best batched tokens per forward is given
    beside it."""
    configs = report.get("configs", {})
    chain = configs.get(NAME) or {}
    sweep = report.get("draft_model_sweep") or {}
    out: dict[str, Any] = {"chain_k": (sweep.get("phases_k") or sweep.get("chosen") or {}).get("k"),
                           "chain_k_criterion": (sweep.get("phases_k") or {}).get("criterion", "tokens_per_s"),
                           "configs": {}}
    best = sweep.get("best_by_tokens_per_forward")
    if best and sweep.get("same_prompts_as_phases"):
        out["sweep_best_batched"] = {"k": best["k"], "tokens_per_forward": best["tokens_per_forward"]}
    for name, cfg in configs.items():
        if name == NAME or not cfg.get("available", True):
            continue
        rows = {}
        for phase, ph in cfg.get("phases", {}).items():
            stats = (ph.get("proposer") or {}).get("stats") or {}
            if not stats.get("tree_drafts"):
                continue
            row = ph["groups"]["all"]
            base = (chain.get("phases", {}).get(phase) or {}).get("groups", {}).get("all", {})
            trees = stats["tree_drafts"]
            rows[phase] = {
                "tokens_per_forward": row["tokens_per_forward"],
                "chain_tokens_per_forward": base.get("tokens_per_forward"),
                "ratio_over_chain": (row["tokens_per_forward"] / base["tokens_per_forward"]
                                     if base.get("tokens_per_forward") else None),
                "acceptance_by_depth": row.get("acceptance_per_position"),
                "mean_tree_nodes": stats["tree_nodes"] / trees,
                "mean_tree_depth": stats["tree_depth_sum"] / trees,
                "max_tree_nodes": stats["tree_nodes_max"],
                "draft_forwards_per_step": stats["draft_forwards"] / max(1, stats["propose_calls"]),
                "tree_share_of_drafts": trees / max(1, trees + stats.get("chain_drafts", 0)),
                "token_identical_share": row.get("token_identical_share"),
                "tokens_per_s": row.get("tokens_per_s"),
                "speedup_vs_vanilla": row.get("speedup_vs_vanilla"),
            }
            if phase == "batch16" and "sweep_best_batched" in out:
                rows[phase]["ratio_over_sweep_best"] = (row["tokens_per_forward"]
                                                        / out["sweep_best_batched"]["tokens_per_forward"])
        if rows:
            out["configs"][name] = rows
    return out
