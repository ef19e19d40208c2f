"""``declab bench degeneration``: the acceptance benchmark of Momentum Decoding (reading-list paper 15).

Same prompts (``default_bench_prompts``: code prompts, then Spec-Bench first turns), same length, four decoders:

* ``greedy``: vLLM, temperature 0.
* ``nucleus``: vLLM, top-p 0.95 at temperature 1 with a fixed per-request seed.
* ``momentum``: vLLM, greedy through the declab router with ``{"method": "momentum", ...}`` (default parameters
  unless ``--momentum-args``), engine started with ``DECLAB_PLUGINS=momentum``.
* ``contrastive_search``: contrastive search in vLLM's batch (the ``contrastive_search`` plugin: its proposer as the
  engine's speculative ``custom_class``, ``{"method": "contrastive_search", "top_k", "alpha"}`` per request, the
  same ``--cs-alpha`` / ``--cs-top-k``), engine started with ``DECLAB_PLUGINS=contrastive_search``; also its token
  evaluations per output token (vLLM's spec-decode counters: candidates + roots, per committed token) and the share
  of its outputs identical to the transformers ``contrastive`` run below.
* ``contrastive``: contrastive search (Su et al. 2022, ``penalty_alpha`` 0.6, ``top_k`` 4) with transformers. In
  transformers 5.x ``generate(penalty_alpha=...)`` only dispatches to the Hub repo
  ``transformers-community/contrastive-search`` (``custom_generate`` + ``trust_remote_code``), which this machine
  cannot reach, so the step is implemented here in plain torch on top of the model's own forward pass (KV cache,
  ``output_hidden_states``): candidates = top-k of ``softmax(logits)``; each candidate is fed once (the k
  candidates of all prompts in one forward: k query tokens per prompt over its single KV cache, with a 4D mask so
  that each candidate sees the context and itself only, instead of the reference's k-fold cache copy); score
  ``(1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j)`` over the last-layer hidden states ``h_j`` of every earlier
  token (prompt included, padding excluded); the winner's cache row, hidden state and next-token logits are kept.
  Prompts are left-padded and decoded as one batch.

vLLM configurations run one after the other, each in a fresh child process (the bench harness's
``run_in_child``); contrastive search
runs in this process afterwards (nothing else is running then). Each is timed the same way: one warm-up on two
prompts, then ``--repeats`` timed runs of the whole prompt batch (tokens/s = generated tokens / best batch time),
plus ``--latency-prompts`` prompts one at a time. Outputs are fixed-length (``ignore_eos``) unless
``--stop-at-eos``, so rep-n and tokens/s compare like with like.

Quality: rep-2/3/4, diversity and loop share (``metrics.repetition_stats``), and ``mean_logprob``: the mean
per-token log-likelihood of each output under the plain, unmodified model (transformers, float32, CPU: one forward
over prompt + output), averaged over outputs. For the vLLM configurations the engine's own raw log-probs of the
chosen tokens (``logprobs=0``; raw = before any logits processor) give ``mean_logprob_vllm`` as a cross-check.

Acceptance (``report["acceptance"]``): momentum cuts greedy's repetition (mean of rep-2, rep-3, rep-4) by at least
half, and its mean log-likelihood stays above nucleus sampling's; tokens/s of momentum against greedy and against
contrastive search are reported (contrastive runs on transformers, not vLLM: a cross-engine number).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from declab.integrations.sdk.bench import (
    RunSpec,
    add_option,
    identical_share,
    default_bench_prompts,
    default_model,
    plot_configs,
    repetition_stats,
    run_in_child,
    summarize,
)

GREEDY, NUCLEUS, MOMENTUM, CONTRASTIVE = "greedy", "nucleus", "momentum", "contrastive"
CONTRASTIVE_SEARCH = "contrastive_search"  # the plugin of that name, in vLLM
CONTRASTIVE_SEARCH_PROPOSER = "declab.plugins.contrastive_search.ContrastiveSearchProposer"
plot = plot_configs  # tokens/s, batch-1 latency, rep-n and diversity per decoder


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of the degeneration benchmark. Options the parser already has (``declab bench``'s ``--model``,
    ``--prompts``, ``--max-tokens``, ``--repeats``, ``--latency-prompts``, ``--out``) are left as they are."""
    add_option(parser, "--model", default=None, help="model path (default: decoder-29m)")
    add_option(parser, "--prompts", type=int, default=32, help="number of prompts (batch size)")
    add_option(parser, "--max-tokens", type=int, default=128)
    add_option(parser, "--repeats", type=int, default=3, help="timed batch runs per configuration")
    add_option(parser, "--latency-prompts", type=int, default=4, help="prompts also timed one at a time")
    add_option(parser, "--out", default="bench-results", help="output folder")
    add_option(parser, "--top-p", type=float, default=0.95, help="nucleus sampling: top_p (temperature 1)")
    add_option(parser, "--seed", type=int, default=0, help="nucleus sampling: per-request seed")
    add_option(parser, "--momentum-args", default="{}", help='momentum parameters as JSON, e.g. \'{"alpha": 0.3}\'')
    add_option(parser, "--cs-alpha", type=float, default=0.6, help="contrastive search: penalty_alpha")
    add_option(parser, "--cs-top-k", type=int, default=4, help="contrastive search: top_k")
    add_option(parser, "--stop-at-eos", action="store_true", help="stop at EOS (default: fixed-length outputs)")
    add_option(parser, "--skip-contrastive", action="store_true",
               help="leave contrastive search with transformers out")
    add_option(parser, "--skip-contrastive-search", action="store_true",
               help="leave contrastive search in vLLM (the contrastive_search plugin) out")
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Contrastive search (plain torch over a transformers causal LM)
# ----------------------------------------------------------------------------------------------------------------


def load_hf_model(model_path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.eval()
    return tok, model


def contrastive_search(
    model,
    prompts_ids: list[list[int]],
    *,
    alpha: float,
    top_k: int,
    max_new_tokens: int,
    pad_id: int = 0,
    eos_id: int | None = None,
) -> list[list[int]]:
    """Contrastive search for a batch of prompts (left-padded). Returns the generated ids per prompt.

    ``x_t = argmax_{v in top-k(p)} (1 - alpha) p(v | x_<t) - alpha max_{j < t} cos(h_v, h_j)``, with ``h`` the
    model's last-layer hidden states (``hidden_states[-1]``, i.e. after the final norm). For models whose logits
    are the output embedding of that state (Llama and friends; no final soft-capping). ``alpha = 0`` is greedy
    decoding. With ``eos_id`` a sequence stops after EOS (the batch runs on until all stopped; its later tokens
    are dropped).
    """
    import torch
    import torch.nn.functional as F

    if not prompts_ids:
        return []
    B, k = len(prompts_ids), int(top_k)
    L = max(len(p) for p in prompts_ids)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for b, p in enumerate(prompts_ids):
        ids[b, L - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, L - len(p):] = 1
    # The decoder body gives the last-layer hidden states (== ``hidden_states[-1]`` of the full model, after the
    # final norm); the LM head is applied only where logits are needed (the winner), not to every candidate.
    body, head = model.get_decoder(), model.get_output_embeddings()
    with torch.inference_mode():
        out = body(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                   use_cache=True)
        past = out.past_key_values
        ctx_h = F.normalize(out.last_hidden_state.float(), dim=-1)  # [B, T, H], unit vectors
        logits = head(out.last_hidden_state[:, -1, :]).float()
        ctx_mask = mask.bool()
        n_real = mask.sum(-1)  # position of the next token
        rows = torch.arange(B)
        eye = torch.eye(k, dtype=torch.bool).expand(B, 1, k, k)
        generated = torch.empty((B, 0), dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool)
        for _ in range(max_new_tokens):
            probs = torch.softmax(logits, dim=-1)
            top_p, top_ids = probs.topk(k, dim=-1)  # [B, k]
            # The k candidates of a prompt are k query tokens over its one KV cache; the 4D mask lets each see the
            # context and itself only, all at the same position, so each gets exactly the hidden state (and next
            # logits) it would get on its own, without copying the cache k times.
            T = ctx_mask.shape[1]
            mask4 = torch.cat([ctx_mask[:, None, None, :].expand(B, 1, k, T), eye], dim=-1)
            o = body(input_ids=top_ids, attention_mask=mask4, position_ids=n_real.unsqueeze(1).expand(B, k),
                     past_key_values=past, use_cache=True)
            cand_h = F.normalize(o.last_hidden_state.float(), dim=-1)  # [B, k, H]
            cos = torch.einsum("bkh,bth->bkt", cand_h, ctx_h)  # [B, k, T]
            cos = cos.masked_fill(~ctx_mask.unsqueeze(1), float("-inf"))
            penalty = cos.max(-1).values  # [B, k]
            score = (1.0 - alpha) * top_p - alpha * penalty
            sel = score.argmax(-1)  # first maximum: the more probable candidate wins ties
            for layer in past.layers:  # keep the winner's key/value at position T, drop the other candidates
                for name in ("keys", "values"):
                    kv = getattr(layer, name)
                    kv[:, :, T] = kv[rows, :, T + sel]
                    setattr(layer, name, kv[:, :, : T + 1])
            nxt = top_ids[rows, sel]
            generated = torch.cat([generated, nxt.unsqueeze(1)], 1)
            ctx_h = torch.cat([ctx_h, cand_h[rows, sel].unsqueeze(1)], 1)
            ctx_mask = torch.cat([ctx_mask, torch.ones((B, 1), dtype=torch.bool)], 1)
            n_real = n_real + 1
            logits = head(o.last_hidden_state[rows, sel, :]).float()
            if eos_id is not None:
                done |= nxt == eos_id
                if bool(done.all()):
                    break
    out_ids = []
    for b in range(B):
        seq = generated[b].tolist()
        if eos_id is not None and eos_id in seq:
            seq = seq[: seq.index(eos_id) + 1]
        out_ids.append(seq)
    return out_ids


def run_contrastive(model_path: str, prompts: list[str], args, hf=None) -> dict[str, Any]:
    """Contrastive search timed like ``engine_run``: warm-up on two prompts, ``repeats`` batch runs, then
    ``latency_prompts`` prompts one at a time. Same result keys as ``engine_run``."""
    tok, model = hf or load_hf_model(model_path)
    ids = [list(tok(p).input_ids) for p in prompts]
    kw = dict(alpha=args.cs_alpha, top_k=args.cs_top_k, max_new_tokens=args.max_tokens,
              pad_id=tok.pad_token_id or 0, eos_id=tok.eos_token_id if args.stop_at_eos else None)
    contrastive_search(model, ids[:2], **kw)  # warm-up
    times, outs = [], None
    for _ in range(max(1, args.repeats)):
        t = time.perf_counter()
        outs = contrastive_search(model, ids, **kw)
        times.append(time.perf_counter() - t)
    lat = []
    for i in range(min(args.latency_prompts, len(ids))):
        t = time.perf_counter()
        contrastive_search(model, [ids[i]], **kw)
        lat.append(time.perf_counter() - t)
    assert outs is not None
    return {
        "name": CONTRASTIVE,
        "startup_s": 0.0,
        "batch_times_s": times,
        "latencies_s": lat,
        "token_ids": outs,
        "texts": [tok.decode(o) for o in outs],
        "cumulative_logprobs": None,
        "finish_reasons": None,
        "generated_tokens": sum(len(o) for o in outs),
    }


def mean_logprobs(hf, prompts: list[str], outputs: list[list[int]]) -> list[float]:
    """Mean per-token log-likelihood of each output given its prompt under the plain model (float32, batch 1)."""
    import torch

    tok, model = hf
    res = []
    with torch.inference_mode():
        for p, o in zip(prompts, outputs):
            if not o:
                res.append(float("nan"))
                continue
            pid = list(tok(p).input_ids)
            x = torch.tensor([pid + list(o)], dtype=torch.long)
            logp = torch.log_softmax(model(input_ids=x).logits[0].float(), dim=-1)
            n = len(pid)
            tgt = torch.tensor(o, dtype=torch.long)
            res.append(float(logp[n - 1 : n - 1 + len(o)].gather(1, tgt.unsqueeze(1)).mean()))
    return res


# ----------------------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------------------


def _rep_avg(s: dict[str, Any]) -> float:
    return (s["rep_2"] + s["rep_3"] + s["rep_4"]) / 3


def run(args) -> dict[str, Any]:
    model = args.model or default_model()
    prompts = default_bench_prompts(args.prompts)
    momentum_args = {"method": "momentum", **json.loads(args.momentum_args)}
    base = {"max_tokens": args.max_tokens, "logprobs": 0, "ignore_eos": not args.stop_at_eos}
    greedy = {**base, "temperature": 0.0}
    common = dict(model=model, prompts=prompts, repeats=args.repeats, latency_prompts=args.latency_prompts)
    specs = {
        GREEDY: RunSpec(name=GREEDY, sampling=greedy, env={"DECLAB_PLUGINS": None}, **common),
        NUCLEUS: RunSpec(name=NUCLEUS, sampling={**base, "temperature": 1.0, "top_p": args.top_p, "seed": args.seed},
                         env={"DECLAB_PLUGINS": None}, **common),
        MOMENTUM: RunSpec(name=MOMENTUM, sampling={**greedy, "extra_args": {"declab": momentum_args}},
                          env={"DECLAB_PLUGINS": "momentum"}, **common),
    }
    if not args.skip_contrastive_search:
        cs_args = {"method": CONTRASTIVE_SEARCH, "top_k": args.cs_top_k, "alpha": args.cs_alpha}
        cs_sampling = {k: v for k, v in greedy.items() if k != "logprobs"}  # refused: they would be greedy's
        specs[CONTRASTIVE_SEARCH] = RunSpec(
            name=CONTRASTIVE_SEARCH, sampling={**cs_sampling, "extra_args": {"declab": cs_args}},
            env={"DECLAB_PLUGINS": CONTRASTIVE_SEARCH}, collect_metrics=True,
            engine_kwargs={"speculative_config": {"method": "custom_class", "model": CONTRASTIVE_SEARCH_PROPOSER,
                                                  "num_speculative_tokens": args.cs_top_k}}, **common)
    results: dict[str, dict[str, Any]] = {label: run_in_child(spec) for label, spec in specs.items()}
    hf = load_hf_model(model)
    if not args.skip_contrastive:
        results[CONTRASTIVE] = run_contrastive(model, prompts, args, hf)

    summary: dict[str, dict[str, Any]] = {}
    for label, r in results.items():
        s = summarize(r, len(prompts))
        s.update(repetition_stats(r["token_ids"]))
        lps = mean_logprobs(hf, prompts, r["token_ids"])
        r["mean_logprobs"] = lps
        s["mean_logprob"] = statistics.fmean(x for x in lps if x == x)
        if r.get("cumulative_logprobs"):
            per = [c / len(t) for c, t in zip(r["cumulative_logprobs"], r["token_ids"]) if t and c is not None]
            s["mean_logprob_vllm"] = statistics.fmean(per) if per else None
        s["rep_avg"] = _rep_avg(s)
        summary[label] = s

    g, m, n = summary[GREEDY], summary[MOMENTUM], summary[NUCLEUS]
    rep_cut = 1.0 - m["rep_avg"] / g["rep_avg"] if g["rep_avg"] > 0 else 0.0
    acceptance = {
        "rep_avg_greedy": g["rep_avg"],
        "rep_avg_momentum": m["rep_avg"],
        "rep_cut": rep_cut,
        "rep_cut_at_least_half": rep_cut >= 0.5,
        "mean_logprob_momentum": m["mean_logprob"],
        "mean_logprob_nucleus": n["mean_logprob"],
        "momentum_logprob_above_nucleus": m["mean_logprob"] > n["mean_logprob"],
        "tokens_per_s_momentum_over_greedy": m["tokens_per_s"] / g["tokens_per_s"],
    }
    if CONTRASTIVE in summary:
        acceptance["tokens_per_s_momentum_over_contrastive"] = m["tokens_per_s"] / summary[CONTRASTIVE]["tokens_per_s"]
    if CONTRASTIVE_SEARCH in summary:
        cs = summary[CONTRASTIVE_SEARCH]
        metrics = results[CONTRASTIVE_SEARCH].get("spec_metrics") or {}
        if metrics.get("num_draft_tokens") is not None and metrics.get("num_drafts") is not None:
            # Timed batches only: every step feeds the root and its candidates and commits one token.
            evaluated = metrics["num_draft_tokens"] + metrics["num_drafts"]
            cs["token_evaluations_per_output_token"] = evaluated / max(1, cs["generated_tokens"] * args.repeats)
        acceptance["tokens_per_s_contrastive_search_over_greedy"] = cs["tokens_per_s"] / g["tokens_per_s"]
        if CONTRASTIVE in results:
            acceptance["contrastive_search_identical_to_transformers"] = identical_share(
                results[CONTRASTIVE_SEARCH]["token_ids"], results[CONTRASTIVE]["token_ids"])
    acceptance["passed"] = acceptance["rep_cut_at_least_half"] and acceptance["momentum_logprob_above_nucleus"]
    return {
        "benchmark": "degeneration",
        "model": model,
        "prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "fixed_length": not args.stop_at_eos,
        "settings": {
            GREEDY: greedy,
            NUCLEUS: specs[NUCLEUS].sampling,
            MOMENTUM: specs[MOMENTUM].sampling,
            CONTRASTIVE_SEARCH: specs[CONTRASTIVE_SEARCH].sampling if CONTRASTIVE_SEARCH in specs else None,
            CONTRASTIVE: {"penalty_alpha": args.cs_alpha, "top_k": args.cs_top_k, "engine": "transformers (float32, "
                          "CPU), contrastive step in plain torch"},
        },
        "configs": summary,
        "throughput_ratio": acceptance["tokens_per_s_momentum_over_greedy"],
        "acceptance": acceptance,
        "raw": results,
    }


def summary(report: dict[str, Any]) -> str:
    cols = ("tokens_per_s", "batch_time_s", "mean_request_latency_s", "rep_2", "rep_3", "rep_4", "diversity",
            "loop_share", "mean_logprob")
    lines = [f"{'config':<12}" + "".join(f"{c:>24}" for c in cols)]
    for label, s in report["configs"].items():
        cells = []
        for c in cols:
            v = s.get(c)
            cells.append(f"{v:>24.4f}" if isinstance(v, (int, float)) else f"{'-':>24}")
        lines.append(f"{label:<12}" + "".join(cells))
    lines.append("acceptance: " + json.dumps(report["acceptance"]))
    return "\n".join(lines)
