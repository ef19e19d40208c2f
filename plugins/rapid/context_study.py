"""Which draft context keeps RAPID's acceptance: the draft's agreement with the target's greedy continuations, per
draft view of the prompt, offline (plain torch, no engine).

For each prompt the target (decoder-29m) continues greedily by 64 tokens (``sdk.agreement.greedy_continuation``); the
draft (teacher-forced along that continuation, one forward) is scored where its argmax equals the target's token,
reading the prompt through each view:

* ``full``: the whole prompt (``rapid_full_context``; what vLLM's ``draft_model`` reads),
* ``rapid``: RAPID's retrieved chunks and query (``core.kept_indices``, the defaults), packed at positions 0, 1, ...,
* ``rapid_keep_positions``: the same tokens at the positions they had in the prompt (``keep_positions``),
* ``recent``: the prompt's last ``context_tokens`` tokens (no retrieval).

``tokens_per_forward_k2`` walks each continuation with a greedy chain of K = 2 draft tokens (``sdk.agreement.
chain_steps``): the tokens per target forward a lossless K = 2 proposer would commit with that view (simulated; the
engine runs commit close to it: 1.35 measured for ``rapid_k2`` against 1.34 here on RAG and summarization). Prompt
sets: the first 16 fitting RAG and the first 16 summarization prompts of Spec-Bench, and the long code files
(``prompts.long_code_prompts``) whole (up to 1,800 tokens) and cut to their first 400, 700, 1,000 and 1,400
tokens, since decoder-29m was trained on 512-token sequences. ``continuation_4grams_in_prompt``: the share of the
target's continuation 4-grams found in the prompt (code that continues the file repeats its names)::

    python -m declab.plugins.rapid.context_study --draft draft-5m-long --out measurements/rapid-context-study
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Sequence

from declab.integrations.sdk.agreement import chain_steps, draft_agreement, greedy_continuation, load_model, runs
from declab.integrations.sdk.bench import (
    add_option, default_model, load_average, load_prompt_set, resolve_draft_model, write_report)
from declab.plugins.rapid.core import kept_indices
from declab.plugins.rapid.spec import SPEC

DEFAULTS = {p.name: p.default for p in SPEC.settings}  # RAPID's own defaults: the views use what a user gets
K = 2
MAX_TOKENS = 64
CODE_CUTS = (400, 700, 1000, 1400)
VIEWS = ("full", "rapid", "rapid_keep_positions", "recent")


def views(prompt: Sequence[int], budget: int) -> dict[str, tuple[list[int], list[int]]]:
    """View name -> (the draft's prompt tokens, their rotary positions)."""
    kept = kept_indices(prompt, budget=budget, query_tokens=DEFAULTS["query_tokens"],
                        chunk_tokens=DEFAULTS["chunk_tokens"])
    short = [prompt[i] for i in kept]
    recent = list(prompt[-budget:])
    return {"full": (list(prompt), list(range(len(prompt)))),
            "rapid": (short, list(range(len(short)))),
            "rapid_keep_positions": (short, kept),
            "recent": (recent, list(range(len(recent))))}


def four_gram_share(prompt: Sequence[int], continuation: Sequence[int]) -> tuple[int, int]:
    grams = {tuple(prompt[i:i + 4]) for i in range(len(prompt) - 3)}
    found = sum(tuple(continuation[i:i + 4]) in grams for i in range(len(continuation) - 3))
    return found, max(0, len(continuation) - 3)


def study(target, draft, prompts: list[list[int]], budget: int, log: Callable[[str], None]) -> dict[str, Any]:
    """One prompt set's row: per view agreement, simulated tokens per forward at K = 2 and draft prompt tokens."""

    acc = {v: [0, 0, 0, 0] for v in VIEWS}  # agreeing positions, positions, K = 2 target forwards, prompt tokens
    grams = [0, 0]
    for prompt in prompts:
        continuation = greedy_continuation(target, prompt, MAX_TOKENS)
        found, total = four_gram_share(prompt, continuation)
        grams[0] += found
        grams[1] += total
        for name, (tokens, positions) in views(prompt, budget).items():
            matches = draft_agreement(draft, tokens, continuation, positions)
            forwards, _ = chain_steps(runs(matches), K)
            a = acc[name]
            a[0], a[1], a[2], a[3] = a[0] + sum(matches), a[1] + len(matches), a[2] + forwards, a[3] + len(tokens)
    log(f"rapid context study: {len(prompts)} prompts done")
    return {"prompts": len(prompts), "prompt_tokens": sum(len(p) for p in prompts),
            "continuation_4grams_in_prompt": round(grams[0] / max(1, grams[1]), 3),
            "views": {name: {"agreement": round(a[0] / a[1], 3), "tokens_per_forward_k2": round(a[1] / a[2], 3),
                             "draft_prompt_tokens": a[3]} for name, a in acc.items()}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import sys

    import torch
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(prog="python -m declab.plugins.rapid.context_study",
                                     description=__doc__.split("\n")[0])
    add_option(parser, "--draft", default="draft-5m-long", help="draft model: a folder or a known draft's name")
    add_option(parser, "--context-tokens", type=int, default=DEFAULTS["context_tokens"],
               help="the draft's prompt budget (default: RAPID's)")
    add_option(parser, "--out", default="bench-results", help="output folder")
    args = parser.parse_args(argv)
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    load_at_start = load_average()
    torch.set_num_threads(1)
    model = default_model()
    tok = AutoTokenizer.from_pretrained(model)
    items, _, _ = load_prompt_set(model, max_tokens=MAX_TOKENS, max_k=K, max_model_len=2048, limit=16,
                                  groups=["rag", "summarization", "long_code"])
    ids = [(it["group"], tok(it["text"]).input_ids) for it in items]
    target, draft = load_model(model), load_model(resolve_draft_model(args.draft))
    started = time.perf_counter()
    sets = {"rag_summarization": [p for g, p in ids if g != "long_code"]}
    code = [p for g, p in ids if g == "long_code"]
    sets.update({f"long_code_first_{n}": [p[:n] for p in code] for n in CODE_CUTS})
    sets["long_code"] = code
    report = {"benchmark": "rapid-context-study", "target": model, "draft": args.draft, "max_tokens": MAX_TOKENS,
              "k": K, "context_tokens": args.context_tokens, "query_tokens": DEFAULTS["query_tokens"],
              "chunk_tokens": DEFAULTS["chunk_tokens"],
              "sets": {name: study(target, draft, prompts, args.context_tokens, log) for name, prompts in sets.items()}}
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_report(report, args.out, "context_study", plot, load_at_start)
    return report


def plot(report: dict[str, Any], path) -> None:
    """Simulated tokens per target forward at K = 2 per prompt set, one bar per draft view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(report["sets"])
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(VIEWS)
    for n, view in enumerate(VIEWS):
        ax.bar([i + n * width for i in range(len(sets))],
               [report["sets"][s]["views"][view]["tokens_per_forward_k2"] for s in sets], width, label=view)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sets))], [s.replace("_", " ") for s in sets], fontsize=7)
    ax.set_ylabel(f"tokens per target forward, K = {report['k']} (simulated)")
    ax.set_ylim(1, None)
    ax.set_title(f"RAPID's draft views ({report['context_tokens']} tokens) against the whole prompt, {report['draft']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
