"""Requests and engine state shared by the contrastive engine tests (``test_contrastive_engine.py``,
``test_contrastive_reference.py``); the scenarios themselves are written in those modules and run in an engine host,
where the engine core runs in-process so the scheduler's free KV blocks and the pair book can be read."""

from __future__ import annotations

import json

from declab.integrations.models import eval_file

MAX_TOKENS = 12


def load_items(n: int) -> tuple[list[dict], list[dict]]:
    """The first ``n`` items of the knowledge-conflict and the leading-query dev sets."""
    conflict = [json.loads(x) for x in eval_file("conflict_dev.jsonl").read_text().splitlines()[:n]]
    leading = [json.loads(x) for x in eval_file("leading_dev.jsonl").read_text().splitlines()[:n]]
    return conflict, leading


def contrastive(method: str, contrast_prompt: str, **params):
    from vllm import SamplingParams

    args = {"method": method, "contrast_prompt": contrast_prompt, **params}
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, extra_args={"declab": args})


def requests_for(conflict, leading, alpha: float):
    """(name, prompt, params) of every contrastive request of the dev items."""
    out = []
    for i, it in enumerate(conflict):
        out.append((f"cad{i}", it["prompt_with_context"],
                    contrastive("cad", it["prompt_without_context"], alpha=alpha)))
    for i, it in enumerate(leading):
        out.append((f"lqcd{i}", it["leading_prompt"], contrastive("lqcd", it["neutral_prompt"], alpha=alpha)))
    for i, it in enumerate(conflict):
        out.append((f"m3id{i}", it["prompt_with_context"], contrastive("m3id", it["prompt_without_context"])))
    return out


def scheduler_of(llm):
    return llm.llm_engine.engine_core.engine_core.scheduler


def engine_state(llm) -> dict:
    sched = scheduler_of(llm)
    book = getattr(sched, "_declab_groups", None)
    return {
        "free_blocks": sched.kv_cache_manager.block_pool.get_num_free_blocks(),
        "requests_left": len(sched.requests),
        "running": len(sched.running),
        "pairs_left": len(book.companions_of) if book else 0,
        "rollbacks": book.rollbacks if book else 0,
        "deadlock_breaks": book.deadlock_breaks if book else 0,
    }


def generate(llm, prompts, params) -> list[dict]:
    outs = llm.generate(prompts, params, use_tqdm=False)
    return [{"text": o.outputs[0].text, "token_ids": list(o.outputs[0].token_ids),
             "finish_reason": o.outputs[0].finish_reason} for o in outs]
