"""Verification cost: one target forward pass over q new tokens after a cached context, by q, on this device.

Speculative decoding pays for a draft of K tokens with a forward pass over 1 + K tokens. What that costs relative
to a one-token decode step decides whether a longer draft (an 80-node draft tree against a chain of 2)
pays: on a CPU the pass is compute-bound and grows with q; on a GPU a decode step of a small batch is bound by
reading the weights, and q = 81 costs about what q = 1 costs (at batch 16 the pass holds 16 x q tokens, and
the GPU's compute starts to count too). This benchmark times exactly that, with plain
transformers (no vLLM, so it runs on a GPU machine without vLLM installed):

* models: the bundled decoder-29m (``--model``) and, with ``--synthetic llama-7b``, a randomly initialised model of
  Llama-2-7B's shape (32 layers, hidden 4096, vocabulary 32,000; the paper's smallest size), in ``--dtype``;
* for each q in ``--query-lengths``: median milliseconds of one forward pass over q new tokens after ``--context``
  cached tokens (the cache is cut back after each pass), causal mask (a tree mask has the same shape, and a dense
  masked kernel the same cost).

With ``--spec-report PATH`` (a ``declab bench spec`` JSON) it projects each configuration's speed-up on this device
from that report's acceptance (batch 1 from its batch-1 phase, batch 16 from its batch-16 phase): per target step the cost is ``c(1 + L)`` on drafting steps (``L`` = mean
draft tokens per drafting step) and ``c(1)`` otherwise, and ``speed-up = tokens_per_forward * c(1) / mean step
cost``, with ``c`` interpolated linearly in q. A configuration that runs a draft model also pays its drafting:
``F x d(1)`` per target step, ``d`` the draft model's cost measured the same way (``--draft-model``, default
``default_draft_model()``, next to ``--model``; ``llama-68m``'s shape, hidden 768, 2 layers, drafting for
``--synthetic llama-7b``) and ``F`` the draft forwards per target step: the proposer's own count where its stats
report one (``draft_forwards``: batched draft-model passes in the phase, divided by the phase's ``propose`` calls),
else, for a configuration whose report names a ``draft_model``, the drafted tokens per step (a chain of L tokens
needs L draft forwards). Every number is a projection: acceptance measured on one machine, cost on another, and no
engine overheads.

Run: ``declab bench verify-cost [--synthetic llama-7b] [--spec-report bench-results/spec.json]`` (JSON + PNG).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from declab.integrations.sdk.bench import add_option, default_model, resolve_draft_model

SYNTHETIC = {
    # Llama-2-7B's shape (the paper's 7B models are Llama-2 / Vicuna / Code Llama of this shape)
    "llama-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096},
    # Llama-68M's shape (a common draft for Llama-7B-shaped targets in the draft-model papers)
    "llama-68m": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 2, "num_attention_heads": 12,
                  "num_key_value_heads": 12, "vocab_size": 32000, "max_position_embeddings": 2048},
}
SYNTHETIC_DRAFTS = {"llama-7b": "llama-68m"}  # the draft timed with each synthetic target
DRAFT_ENTRY = "draft"  # the --draft-model entry, the draft of the "model" entry
PROJECTION_NOTE = ("projection: acceptance from the spec report, forward costs measured here, no engine overheads; "
                   "a draft-model configuration pays draft_forwards_per_step x d(1) per step")
DEFAULT_QUERY_LENGTHS = "1,3,5,7,9,17,25,41,81"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_option(parser, "--model", default=None, help="model path (default: decoder-29m)")
    add_option(parser, "--draft-model", default=None,
               help="draft model timed with --model (default: $DECLAB_DRAFT_MODEL or ../shared/fixtures/draft-5m; "
                    "none: draft-model configurations are projected without their draft cost, and say so)")
    add_option(parser, "--out", default="bench-results", help="output folder")
    add_option(parser, "--synthetic", default="", help=f"comma list of synthetic shapes to add: {', '.join(SYNTHETIC)}")
    add_option(parser, "--device", default="auto", help="auto (cuda if available) | cpu | cuda")
    add_option(parser, "--dtype", default="auto", help="auto (bfloat16 on cuda, float32 on cpu) | float32 | bfloat16")
    add_option(parser, "--context", type=int, default=512, help="cached tokens before the timed pass")
    add_option(parser, "--query-lengths", default=DEFAULT_QUERY_LENGTHS, help="comma list of q (new tokens)")
    add_option(parser, "--repeats", type=int, default=20, help="timed passes per q (median; 3 warm-ups first)")
    add_option(parser, "--batch-sizes", default="1,16",
               help="comma list: sequences per pass (each with its own context and q new tokens)")
    add_option(parser, "--spec-report", default=None, help="a `declab bench spec` JSON to project speed-ups from")
    add_option(parser, "--threads", type=int, default=0,
               help="torch threads (0: torch's default). On a shared CPU, 1: spinning threads competing with other "
                    "processes make the timings meaningless")
    add_option(parser, "--cost-from", default=None,
               help="an earlier verify-cost JSON (e.g. from a GPU machine): project from its costs, measure nothing")
    return parser


def _sync(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def forward_ms(model, *, device: str, context: int, query_lengths: list[int], repeats: int,
               batch_size: int = 1) -> dict[str, float]:
    """Median ms of one forward pass over q new tokens after ``context`` cached ones (per sequence), for each q."""
    import torch

    vocab = model.config.vocab_size
    out: dict[str, float] = {}
    with torch.inference_mode():
        prompt = (torch.arange(context, device=device) % vocab).unsqueeze(0).repeat(batch_size, 1)
        cache = model(prompt, use_cache=True).past_key_values
        for q in query_lengths:
            new = torch.zeros((batch_size, q), dtype=torch.long, device=device)
            times = []
            for i in range(3 + repeats):
                _sync(torch, device)
                t = time.perf_counter()
                model(new, past_key_values=cache, use_cache=True)
                _sync(torch, device)
                if i >= 3:
                    times.append(time.perf_counter() - t)
                cache.crop(-q)  # back to the context
            out[str(q)] = 1e3 * statistics.median(times)
    return out


def interpolate(cost: dict[str, float], q: float) -> float:
    """``c(q)``, linear between measured points (and beyond the last two)."""
    points = sorted((int(k), v) for k, v in cost.items())
    if q <= points[0][0]:
        return points[0][1]
    for (q0, c0), (q1, c1) in zip(points, points[1:]):
        if q <= q1:
            return c0 + (c1 - c0) * (q - q0) / (q1 - q0)
    (q0, c0), (q1, c1) = points[-2], points[-1]
    return max(c1, c1 + (c1 - c0) * (q - q1) / (q1 - q0))


def draft_forwards_per_step(cfg: dict[str, Any], phase: dict[str, Any]) -> tuple[float, str] | None:
    """Draft-model forwards per target step of one configuration's phase, and where the number comes from; None
    for a configuration that runs no draft model."""
    stats = phase.get("proposer", {}).get("stats") or {}
    calls = phase.get("proposer", {}).get("propose_calls")
    if "draft_forwards" in stats and calls:
        return stats["draft_forwards"] / calls, "proposer stats: draft_forwards / propose calls"
    row = phase["groups"]["all"]
    if cfg.get("draft_model") and row.get("num_drafts"):
        share = min(1.0, row["draft_step_share"])
        return share * row["num_draft_tokens"] / row["num_drafts"], "drafted tokens per step (one forward each)"
    return None


def project(cost: dict[str, float], spec_report: dict[str, Any], phase: str,
            draft_ms: float | None = None) -> dict[str, Any]:
    """Projected speed-up of each configuration of a ``declab bench spec`` report on the device that gave ``cost``;
    ``draft_ms`` is the draft model's one-token forward ``d(1)`` on that device (None: not measured)."""
    out: dict[str, Any] = {}
    for name, cfg in spec_report["configs"].items():
        ph = cfg.get("phases", {}).get(phase, {})
        row = ph.get("groups", {}).get("all")
        if not row:
            continue
        if not row.get("num_drafts"):
            out[name] = {"tokens_per_forward": 1.0, "mean_step_ms": cost["1"], "projected_speedup": 1.0}
            continue
        per_forward = row["tokens_per_forward"]
        draft_share = min(1.0, row["draft_step_share"])
        draft_len = row["num_draft_tokens"] / row["num_drafts"]
        step = draft_share * interpolate(cost, 1 + draft_len) + (1 - draft_share) * cost["1"]
        entry = {"tokens_per_forward": per_forward, "draft_step_share": draft_share, "mean_draft_tokens": draft_len,
                 "verify_ms_per_step": step}
        forwards = draft_forwards_per_step(cfg, ph)
        stats = ph.get("proposer", {}).get("stats") or {}
        # A proposer that drafts with the target's own layers (layer skipping) states the share of a target forward
        # one draft forward costs (``draft_cost_of_target_forward`` in its stats): its draft cost is that share of
        # c(1) on the device projected to, not a separate draft model's d(1).
        self_draft = stats.get("draft_cost_of_target_forward")
        per_draft_ms = draft_ms
        if forwards is not None and self_draft is not None:
            per_draft_ms = float(self_draft) * cost["1"]
            entry["draft_ms_from"] = f"the target's own layers: {float(self_draft):.3f} x c(1)"
        if forwards is not None:
            entry.update(draft_forwards_per_step=forwards[0], draft_forwards_from=forwards[1], draft_ms_per_forward=
                         per_draft_ms, draft_ms_per_step=forwards[0] * per_draft_ms if per_draft_ms is not None else None)
            overlapped = bool(stats.get("draft_overlaps_verification"))
            if per_draft_ms is None:
                entry["note"] = "draft cost not measured: left out of this projection"
            elif overlapped:
                # A proposer whose paper runs the draft while the target verifies (it says so in its stats):
                # a step costs the longer of the two; the serial cost stays beside it.
                entry["serial_step_ms"] = step + forwards[0] * per_draft_ms
                entry["serial_projected_speedup"] = per_forward * cost["1"] / entry["serial_step_ms"]
                entry["draft_overlaps_verification"] = True
                step = max(step, forwards[0] * per_draft_ms)
            else:
                step += forwards[0] * per_draft_ms
        out[name] = {**entry, "mean_step_ms": step, "projected_speedup": per_forward * cost["1"] / step,
                     "measured_speedup": row.get("speedup_vs_vanilla")}
    return out


def _draft_ms(report: dict[str, Any], target: str, batch_size: str) -> float | None:
    """``d(1)`` of ``target``'s draft (its entry's ``draft``) at ``batch_size``, if that draft was timed."""
    draft = report["models"].get(report["models"][target].get("draft") or "")
    row = draft["by_batch_size"].get(batch_size) if draft else None
    return row["forward_ms"].get("1") if row else None


def add_projections(report: dict[str, Any], spec_report: dict[str, Any], log) -> None:
    """Each target entry's rows (batch 1 / 16) get the projection of ``spec_report``'s configurations."""
    report["projection_note"] = PROJECTION_NOTE
    for name, m in report["models"].items():
        if m.get("role") == "draft":
            continue
        for b, row in m["by_batch_size"].items():
            phase = {"1": "batch1", "16": "batch16"}.get(b)
            if not phase or "1" not in row["forward_ms"]:
                continue
            row["projection"] = project(row["forward_ms"], spec_report, phase, _draft_ms(report, name, b))
            for cfg, p in row["projection"].items():
                log(f"  {name} on {report['device']}, {cfg}: projected {phase} speed-up "
                    f"{p['projected_speedup']:.2f}x (measured where the report ran: "
                    f"{p.get('measured_speedup') or 1.0:.2f}x){'; ' + p['note'] if 'note' in p else ''}")


def reproject(report: dict[str, Any], spec_report: dict[str, Any] | None, log) -> dict[str, Any]:
    """An earlier verify-cost report with its projections redone from ``spec_report``."""
    if spec_report is None:
        raise ValueError("--cost-from needs --spec-report (there is nothing else to compute)")
    # The costs keep where they were measured; the report written now gets this run's own provenance.
    if "provenance" in report:
        report["cost_provenance"] = report.pop("provenance")
    add_projections(report, spec_report, log)
    report["projected_from"] = spec_report.get("model"), spec_report.get("prompts", {}).get("total")
    return report


def _load(name: str, model_path: str, device: str, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    if name in SYNTHETIC:
        config = LlamaConfig(**SYNTHETIC[name])
        import torch

        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        return model.eval()
    AutoConfig.from_pretrained(model_path)  # fail early with the path in the message
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation="sdpa").to(device).eval()


def run(args) -> dict[str, Any]:
    import torch

    log = (lambda m: print(m, file=sys.stderr, flush=True))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16}[args.dtype]
    model_path = args.model or default_model()
    qs = [int(q) for q in args.query_lengths.split(",") if q.strip()]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    names = ["model"] + [s.strip() for s in args.synthetic.split(",") if s.strip()]
    unknown = [n for n in names[1:] if n not in SYNTHETIC]
    if unknown:
        raise ValueError(f"--synthetic: unknown shape(s) {unknown}; known: {list(SYNTHETIC)}")
    draft_path = resolve_draft_model(args.draft_model)
    drafts = {t: d for t, d in [("model", DRAFT_ENTRY if draft_path else None), *SYNTHETIC_DRAFTS.items()]
              if d and t in names}
    names += [d for d in drafts.values() if d not in names]
    spec_report = json.loads(open(args.spec_report).read()) if args.spec_report else None
    if args.cost_from:
        return reproject(json.loads(open(args.cost_from).read()), spec_report, log)
    report: dict[str, Any] = {
        "benchmark": "verify-cost", "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": str(dtype), "context": args.context, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "batch_sizes": batch_sizes, "models": {},
    }
    paths = {"model": model_path, DRAFT_ENTRY: draft_path}
    for name in names:
        model = _load(name, paths.get(name, ""), device, dtype)
        params = sum(p.numel() for p in model.parameters())
        entry: dict[str, Any] = {"path": paths.get(name, name), "parameters": params, "by_batch_size": {}}
        if name in drafts:
            entry["draft"] = drafts[name]
        if name in drafts.values():
            entry.update(role="draft", drafts_for=[t for t, d in drafts.items() if d == name])
        for b in batch_sizes:
            cost = forward_ms(model, device=device, context=args.context, query_lengths=qs, repeats=args.repeats,
                              batch_size=b)
            log(f"verify-cost {name} ({params / 1e6:.0f}M params, {report['device']}, batch {b}): "
                + ", ".join(f"q={q}: {v:.2f} ms" for q, v in cost.items()))
            row: dict[str, Any] = {"forward_ms": cost, "relative_to_q1": {q: v / cost["1"] for q, v in cost.items()}
                                   if "1" in cost else {}}
            entry["by_batch_size"][str(b)] = row
        report["models"][name] = entry
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    if spec_report is not None:
        add_projections(report, spec_report, log)
    return report


def plot(report: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in report["models"].items():
        for b, row in m["by_batch_size"].items():
            if not row["relative_to_q1"]:
                continue
            qs = [int(q) for q in row["relative_to_q1"]]
            ax.plot(qs, list(row["relative_to_q1"].values()), marker="o",
                    label=f"{name} ({m['parameters'] / 1e6:.0f}M), batch {b}, q=1: {row['forward_ms']['1']:.1f} ms")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("new tokens in the pass (1 + draft tokens)")
    ax.set_ylabel("forward time / one-token step")
    ax.set_title(f"verification cost on {report['device']} ({report['dtype']}, context {report['context']})",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
