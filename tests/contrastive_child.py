"""Child program of ``test_contrastive_engine.py``: CAD / LQCD / M3ID through one in-process vLLM engine.

    python tests/contrastive_child.py mixed N        # plain alone, then plain + cad + lqcd + m3id in one batch
    python tests/contrastive_child.py preempt N      # cad + lqcd with a KV cache small enough to force preemption
    python tests/contrastive_child.py answers N      # cad / lqcd / m3id answers on the first N dev items

Prints ``RESULT <json>``. The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the
scheduler's free KV blocks and the pair book can be read before and after.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("DECLAB_PLUGINS", "cad,lqcd,m3id")

MAX_TOKENS = 12


def load_items(n: int) -> tuple[list[dict], list[dict]]:
    from declab.integrations.models import eval_file

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
        out.append((f"cad{i}", it["prompt_with_context"], contrastive("cad", it["prompt_without_context"], alpha=alpha)))
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


def make_llm(**extra):
    from vllm import LLM

    from declab.integrations.engine_run import CPU_ENGINE_KWARGS
    from declab.integrations.models import default_model

    return LLM(model=default_model(), **{**CPU_ENGINE_KWARGS, "block_size": 32, **extra})


def mixed(n: int) -> dict:
    from vllm import SamplingParams

    conflict, leading = load_items(n)
    llm = make_llm()
    plain = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    plain_prompts = [it["prompt_with_context"] for it in conflict] + [it["leading_prompt"] for it in leading]
    start = engine_state(llm)
    plain_alone = generate(llm, plain_prompts, plain)

    contrast = requests_for(conflict, leading, alpha=0.5)
    # One batch: plain and contrastive requests interleaved.
    prompts, params, names = [], [], []
    for j, (name, prompt, sp) in enumerate(contrast):
        prompts.append(prompt), params.append(sp), names.append(name)
        if j < len(plain_prompts):
            prompts.append(plain_prompts[j]), params.append(plain), names.append(f"plain{j}")
    t0 = time.perf_counter()
    outs = generate(llm, prompts, params)
    mixed_s = time.perf_counter() - t0
    by_name = dict(zip(names, outs))
    after_mixed = engine_state(llm)

    # The same contrastive requests one at a time: a pair's result must not depend on the batch around it.
    singles = {}
    for name, prompt, sp in contrast[:: max(1, len(contrast) // 8)]:
        singles[name] = generate(llm, [prompt], sp)[0]

    # Bad input offline: an error naming the parameter (vLLM re-raises validation errors as VLLMValidationError;
    # ours are also ValueErrors), and the engine keeps serving.
    errors = {}
    for label, sp in (("too_long", contrastive("cad", "word " * 3000)),
                      ("penalty", SamplingParams(temperature=0.0, max_tokens=4, repetition_penalty=1.2,
                                                 extra_args={"declab": {"method": "cad", "contrast_prompt": "Q:"}})),
                      ("missing", SamplingParams(max_tokens=4, extra_args={"declab": {"method": "cad"}}))):
        try:
            generate(llm, [conflict[0]["prompt_with_context"]], sp)
            errors[label] = None
        except Exception as e:  # noqa: BLE001 - the test checks the type name and the message
            errors[label] = f"{type(e).__name__}: {e}"

    # Seeded sampling: reproducible, and independent of the batch.
    it = conflict[0]
    seeded = []
    for seed, batch_with in ((7, 0), (7, 3), (8, 0), (9, 0), (10, 0), (11, 0)):
        sp = SamplingParams(temperature=1.0, top_p=0.95, seed=seed, max_tokens=MAX_TOKENS,
                            extra_args={"declab": {"method": "cad", "alpha": 0.5,
                                                   "contrast_prompt": it["prompt_without_context"]}})
        others = [contrastive("cad", c["prompt_without_context"]) for c in conflict[1:1 + batch_with]]
        res = generate(llm, [it["prompt_with_context"]] + [c["prompt_with_context"] for c in conflict[1:1 + batch_with]],
                       [sp] + others)
        seeded.append(res[0]["token_ids"])
    return {
        "n": n,
        "errors": errors,
        "start": start,
        "after_mixed": after_mixed,
        "end": engine_state(llm),
        "mixed_s": mixed_s,
        "plain_alone": plain_alone,
        "plain_mixed": [by_name[f"plain{j}"] for j in range(len(plain_prompts))],
        "contrastive": {name: by_name[name] for name, _, _ in contrast},
        "singles": singles,
        "seeded": seeded,
    }


def answers(n: int) -> dict:
    """First-line answers of cad (conflict), lqcd (leading) and m3id (conflict) at alpha 0.5, all in one batch,
    with a newline stop string (the front-end ends the main request; its companion must go with it)."""
    from declab.integrations.sdk.metrics import first_line_answer

    conflict, leading = load_items(n)
    llm = make_llm()
    start = engine_state(llm)
    contrast = requests_for(conflict, leading, alpha=0.5)
    for _, _, sp in contrast:
        sp.stop = ["\n"]
    t0 = time.perf_counter()
    outs = generate(llm, [p for _, p, _ in contrast], [sp for _, _, sp in contrast])
    wall = time.perf_counter() - t0
    by_method: dict[str, list[str]] = {"cad": [], "lqcd": [], "m3id": []}
    for (name, _, _), out in zip(contrast, outs):
        by_method[name.rstrip("0123456789")].append(first_line_answer(out["text"]))
    return {"n": n, "wall_s": wall, "answers": by_method, "start": start, "end": engine_state(llm)}


def preempt(n: int) -> dict:
    conflict, leading = load_items(n)
    # 20 blocks of 32 tokens for 2*n pairs = 4*n sequences of 2 blocks each: the scheduler must preempt.
    llm = make_llm(num_gpu_blocks_override=20, max_model_len=256, max_num_seqs=64)
    start = engine_state(llm)
    contrast = [r for r in requests_for(conflict, leading, alpha=0.5) if not r[0].startswith("m3id")]
    outs = generate(llm, [p for _, p, _ in contrast], [sp for _, _, sp in contrast])
    sched = scheduler_of(llm)
    return {
        "n": n,
        "start": start,
        "end": engine_state(llm),
        "num_preemptions_seen": getattr(sched, "_declab_test_preemptions", None),
        "contrastive": {name: out for (name, _, _), out in zip(contrast, outs)},
    }


def _count_preemptions() -> None:
    """Count scheduler preemptions (the test asserts the small cache really forced some)."""
    from vllm.v1.core.sched.scheduler import Scheduler

    original = Scheduler._preempt_request

    def counting(self, request, *args, **kwargs):
        self._declab_test_preemptions = getattr(self, "_declab_test_preemptions", 0) + 1
        return original(self, request, *args, **kwargs)

    Scheduler._preempt_request = counting


if __name__ == "__main__":
    scenario, count = sys.argv[1], int(sys.argv[2])
    if scenario == "preempt":
        _count_preemptions()
    result = {"mixed": mixed, "preempt": preempt, "answers": answers}[scenario](count)
    print("RESULT " + json.dumps(result))
