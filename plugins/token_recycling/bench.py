"""Token Recycling tree vs chain with a reference verifier (transformers, batch 1, greedy; not the engine).

How much longer are the accepted runs when the paper's whole 80-node tree is verified at once instead of its
rank-0 chain? The engine answers that too (``declab bench spec``, configurations ``token_recycling_chain`` and
``token_recycling_tree``); this benchmark is the vLLM-independent cross-check of the engine's tree mode
(``patches/tree_verification.py``): same algorithm, written against transformers' own attention. It decodes each
prompt three ways with the same model, in plain transformers, one prompt at a time:

* ``vanilla``: greedy decoding with a KV cache (the token-identity reference);
* ``chain``: what the engine's proposer does (rank-0 chain of ``num_speculative_tokens``, stopping before a row that
  was never written), verified greedily;
* ``tree``: the paper's static tree (``core.PAPER_TREE``, BFS from the adjacency matrix), verified in one forward
  pass with the tree attention mask (``core.tree_attention_mask``) and positions ``context + depth``; the longest
  accepted root-to-node path is kept (``core.longest_accepted_path``) and only its KV entries stay in the cache.

Chain and tree each keep their own adjacency matrix across prompts ("hot start", as in the paper and the engine),
updated from the top-k at every verified position, draft nodes included. Both must reproduce the vanilla tokens
(checked, reported as ``token_identical_share``). Reported per Spec-Bench category and for code prompts: mean
accepted length (vLLM's convention, 1 + accepted / drafts), tokens per target forward pass, acceptance per depth.
No tokens/s: a Python reference loop says nothing about the engine's speed.

Run: ``declab bench spec-tree [--limit N]`` (JSON + PNG in ``--out``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from declab.integrations.sdk.bench import add_option

DEFAULT_LIMIT = 2  # prompts per group: the prompts of `declab bench spec`'s batch-1 phase
DEFAULT_MAX_TOKENS = 64
DEFAULT_CHAIN_LEN = 6
MAX_MODEL_LEN = 2048
# Prompt fit rule: prompt + max_tokens + this K must fit the context, as in `declab bench spec` with vLLM's default
# suffix-decoding K (24), so both benchmarks measure the same prompts.
FIT_K = 24
MODES = ("chain", "tree")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_option(parser, "--model", default=None, help="model path (default: decoder-29m)")
    add_option(parser, "--out", default="bench-results", help="output folder")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                        help="prompts per Spec-Bench category / code (0: all that fit the context)")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument("--chain-len", type=int, default=DEFAULT_CHAIN_LEN, help="chain mode: num_speculative_tokens")
    parser.add_argument("--successors", type=int, default=8, help="k, successors per token (paper: 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Reference decoder
# ----------------------------------------------------------------------------------------------------------------


def _keep_cache_positions(cache, keep) -> None:
    """Keep only sequence positions ``keep`` (a long tensor) in every layer of a transformers ``DynamicCache``."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(-2, keep)
        layer.values = layer.values.index_select(-2, keep)


class ReferenceDecoder:
    """Greedy decoding of one prompt at a time with a transformers causal LM, three ways (see the module doc)."""

    def __init__(self, model_path: str, *, successors: int = 8, chain_len: int = DEFAULT_CHAIN_LEN) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from declab.plugins.token_recycling.core import PAPER_TREE, AdjacencyMatrix

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32,
                                                          attn_implementation="eager").eval()
        self.vocab_size = self.model.config.vocab_size
        self.eos = self.model.config.eos_token_id
        self.chain_len = chain_len
        self.template = PAPER_TREE
        self.matrices = {m: AdjacencyMatrix(self.vocab_size, k=successors) for m in MODES}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text).input_ids

    def _is_eos(self, token: int) -> bool:
        return token == self.eos if isinstance(self.eos, int) else token in (self.eos or [])

    def vanilla(self, prompt_ids: list[int], max_tokens: int) -> list[int]:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(torch.tensor([prompt_ids]), use_cache=True)
            cache, tokens = out.past_key_values, []
            while True:
                t = int(out.logits[0, -1].argmax())
                tokens.append(t)
                if len(tokens) >= max_tokens or self._is_eos(t):
                    return tokens
                out = self.model(torch.tensor([[t]]), past_key_values=cache, use_cache=True)

    def _draft(self, mode: str, root: int):
        """(tokens, parents, depths) of this step's draft, root first."""
        torch = self.torch
        from declab.plugins.token_recycling.core import best_chain, build_draft_tree

        matrix = self.matrices[mode]
        if mode == "tree":
            tokens, parents = build_draft_tree(matrix, root, self.template)
            return tokens, parents, torch.tensor(self.template.depths)
        chain = best_chain(matrix, root, self.chain_len, stop_at_unseen=True)  # what the engine's proposer drafts
        n = 1 + len(chain)
        return torch.tensor([root] + chain), torch.arange(-1, n - 1), torch.arange(n)

    def speculative(self, mode: str, prompt_ids: list[int], max_tokens: int) -> dict[str, Any]:
        """Decode with drafts verified greedily; the KV cache always holds the committed sequence but its last token."""
        torch = self.torch
        from declab.plugins.token_recycling.core import committed_tokens, longest_accepted_path, tree_attention_mask

        matrix = self.matrices[mode]
        accepted_at_depth = [0] * (self.template.depth if mode == "tree" else self.chain_len)
        steps = drafts = accepted = 0
        with torch.inference_mode():
            ids = torch.tensor([prompt_ids])
            out = self.model(ids[:, :-1], use_cache=True) if len(prompt_ids) > 1 else None
            cache = out.past_key_values if out is not None else None
            committed = list(prompt_ids)
            generated: list[int] = []
            while len(generated) < max_tokens:
                root = committed[-1]
                tokens, parents, depths = self._draft(mode, root)
                n, ctx = tokens.numel(), len(committed) - 1
                visible = torch.ones((n, ctx + n), dtype=torch.bool)
                visible[:, ctx:] = tree_attention_mask(parents)
                mask = torch.zeros((1, 1, n, ctx + n), dtype=torch.float32)
                mask.masked_fill_(~visible, torch.finfo(torch.float32).min)
                out = self.model(tokens.unsqueeze(0), position_ids=(ctx + depths).unsqueeze(0), attention_mask=mask,
                                 past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                logits = out.logits[0]
                argmax = logits.argmax(dim=-1)
                path = longest_accepted_path(tokens, parents, argmax)
                new = committed_tokens(tokens, path, argmax)
                matrix.update(tokens, logits)  # every verified position, draft nodes included (paper Sec. 3)
                keep = torch.cat([torch.arange(ctx), ctx + torch.tensor(path)])
                _keep_cache_positions(cache, keep)
                steps += 1
                if n > 1:
                    drafts += 1
                    accepted += len(path) - 1
                    for d in range(len(path) - 1):
                        accepted_at_depth[d] += 1
                for t in new:
                    generated.append(t)
                    committed.append(t)
                    if len(generated) >= max_tokens or self._is_eos(t):
                        break
                if self._is_eos(generated[-1]):
                    break
        return {"tokens": generated, "steps": steps, "drafts": drafts, "accepted": accepted,
                "accepted_at_depth": accepted_at_depth}

    def forward_ms(self, context: int, query_lengths=(1, 7, 81), repeats: int = 5) -> dict[str, float]:
        """Median milliseconds of one forward pass over ``q`` new tokens after ``context`` cached ones: what a
        vanilla step (1), a chain of 6 (7) and the paper tree (81) cost to verify on this CPU, same code path."""
        import statistics

        torch = self.torch
        out: dict[str, float] = {}
        with torch.inference_mode():
            base = self.model(torch.arange(context).unsqueeze(0) % self.vocab_size, use_cache=True).past_key_values
            for q in query_lengths:
                times = []
                for _ in range(repeats):
                    _keep_cache_positions(base, torch.arange(context))
                    t = time.perf_counter()
                    self.model(torch.zeros((1, q), dtype=torch.long), past_key_values=base, use_cache=True)
                    times.append(time.perf_counter() - t)
                out[str(q)] = 1e3 * statistics.median(times)
        return out


# ----------------------------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------------------------


def _aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    steps = sum(r["steps"] for r in records)
    drafts = sum(r["drafts"] for r in records)
    accepted = sum(r["accepted"] for r in records)
    tokens = sum(len(r["tokens"]) for r in records)
    depth = max((len(r["accepted_at_depth"]) for r in records), default=0)
    per_depth = [sum(r["accepted_at_depth"][d] for r in records if d < len(r["accepted_at_depth"]))
                 for d in range(depth)]
    return {
        "prompts": len(records), "generated_tokens": tokens, "forward_passes": steps, "drafts": drafts,
        "accepted_tokens": accepted,
        "mean_accepted_length": 1 + accepted / drafts if drafts else None,
        "tokens_per_forward": tokens / steps if steps else None,
        "acceptance_per_depth": [x / drafts for x in per_depth] if drafts else [],
        "token_identical_share": sum(r["identical"] for r in records) / len(records) if records else None,
    }


def run(args) -> dict[str, Any]:
    import torch

    from declab.integrations.sdk.bench import default_model, group_order, load_prompt_set

    torch.set_num_threads(max(1, args.threads))
    model = args.model or default_model()
    t0 = time.perf_counter()
    items, skipped, totals = load_prompt_set(model, max_tokens=args.max_tokens, max_k=FIT_K,
                                             max_model_len=MAX_MODEL_LEN, limit=args.limit or None)
    dec = ReferenceDecoder(model, successors=args.successors, chain_len=args.chain_len)
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    per_prompt: list[dict[str, Any]] = []
    for i, it in enumerate(items):
        ids = dec.encode(it["text"])
        ref = dec.vanilla(ids, args.max_tokens)
        rec: dict[str, Any] = {"group": it["group"], "id": it["id"], "prompt_tokens": len(ids)}
        for mode in MODES:
            r = dec.speculative(mode, ids, args.max_tokens)
            r["identical"] = r["tokens"] == ref
            rec[mode] = r
        per_prompt.append(rec)
        if i % 10 == 9 or i == len(items) - 1:
            log(f"spec-tree: {i + 1}/{len(items)} prompts, {time.perf_counter() - t0:.0f} s")
    groups = group_order(items)
    table = {mode: {g: _aggregate([p[mode] for p in per_prompt if p["group"] == g]) for g in groups} for mode in MODES}
    for mode in MODES:
        table[mode]["all"] = _aggregate([p[mode] for p in per_prompt])
    tree, chain = table["tree"]["all"], table["chain"]["all"]
    cost = dec.forward_ms(context=256)
    log(f"spec-tree: forward ms after 256 cached tokens by new tokens: {cost}")
    return {
        "benchmark": "spec-tree", "model": model, "verifier": "reference (transformers, float32, batch 1, greedy)",
        "max_tokens": args.max_tokens, "chain_len": args.chain_len, "successors": args.successors,
        "tree": {"template": "paper static tree", "draft_nodes": dec.template.num_draft_nodes,
                 "depth": dec.template.depth, "level_sizes": list(dec.template.level_sizes)},
        "prompts": {"total": len(items), "limit_per_group": args.limit or None, "skipped": skipped,
                    "available": totals},
        "modes": table,
        "tree_over_chain": {
            "mean_accepted_length": tree["mean_accepted_length"] / chain["mean_accepted_length"],
            "tokens_per_forward": tree["tokens_per_forward"] / chain["tokens_per_forward"],
        },
        "forward_ms_after_256_tokens": cost,
        "per_prompt": [{k: (v if k not in MODES else {x: v[x] for x in ("steps", "drafts", "accepted", "identical")})
                        for k, v in p.items()} for p in per_prompt],
        "runtime_s": time.perf_counter() - t0,
    }


def plot(report: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in report["modes"]["tree"] if g != "all"] + ["all"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.5))
    width = 0.4
    for j, (mode, color) in enumerate((("chain", "#ff7f0e"), ("tree", "#d62728"))):
        vals = [report["modes"][mode][g]["mean_accepted_length"] or 0 for g in groups]
        ax1.bar([i + (j - 0.5) * width for i in range(len(groups))], vals, width, label=mode, color=color)
        acc = report["modes"][mode]["all"]["acceptance_per_depth"]
        ax2.plot(range(1, len(acc) + 1), acc, marker="o", label=mode, color=color)
    ax1.set_xticks(range(len(groups)), groups, rotation=45, ha="right")
    ax1.set_ylabel("mean accepted length (1 + accepted / drafts)")
    ax1.set_title(f"Token Recycling, reference verifier, {report['prompts']['total']} prompts, batch 1")
    ax1.legend()
    ax2.set_xlabel("draft depth")
    ax2.set_ylabel("share of drafts accepted to this depth")
    ax2.set_title("acceptance per depth (all prompts)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict[str, Any]) -> str:
    lines = [f"{'group':<16}{'chain MAL':>10}{'tree MAL':>10}{'chain tok/fwd':>15}{'tree tok/fwd':>14}"]
    for g in report["modes"]["tree"]:
        c, t = report["modes"]["chain"][g], report["modes"]["tree"][g]
        lines.append(f"{g:<16}{c['mean_accepted_length'] or 0:>10.2f}{t['mean_accepted_length'] or 0:>10.2f}"
                     f"{c['tokens_per_forward'] or 0:>15.2f}{t['tokens_per_forward'] or 0:>14.2f}")
    lines.append(f"forward ms by new tokens (256 cached): {report['forward_ms_after_256_tokens']}")
    return "\n".join(lines)
