"""exact-extract (paper 55) through a real vLLM engine on decoder-29m (CPU): greedy mode via the router, exact mode
via the search loop, checked against an independent brute force. One engine (the ``extractive`` profile:
``max_logprobs=-1``, ``block_size=32``)."""

from __future__ import annotations

import json
import sys
import time

import pytest

from declab.integrations.models import eval_file

pytestmark = pytest.mark.engine
N_ITEMS, N_BRUTE = 40, 5


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


def exact_extract_run(llm, n_items: int, n_brute: int) -> dict:
    """On the first ``n_items`` items of conflict_dev.jsonl: plain greedy decoding, greedy mode through the router,
    exact mode through ``declab.plugins.extractive.search``, and, on a few items, an independent brute force (every
    distinct span scored with ``prompt_logprobs`` on ``prompt + span + EOS``)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from declab.plugins.extractive.core import all_spans, span_logprob
    from declab.plugins.extractive.search import (
        EngineScorer,
        brute_force_rows,
        exact_extract,
        exact_extract_batch,
    )

    path = eval_file("conflict_dev.jsonl")
    items = [json.loads(line) for line in path.read_text().splitlines()[:n_items]]
    prompts = [it["prompt_with_context"] for it in items]
    passages = [it["context"] for it in items]

    scorer = EngineScorer(llm)
    eos = scorer.eos_id

    # Warm-up: every request kind used below, once (the first calls compile/allocate).
    t0 = time.perf_counter()
    warm_ids = scorer.prompt_ids(prompts[0])
    llm.generate(
        [TokensPrompt(prompt_token_ids=warm_ids)] * 3,
        [SamplingParams(max_tokens=1, logprob_token_ids=[eos, 5], detokenize=False, flat_logprobs=True),
         SamplingParams(max_tokens=1, logprobs=-1, detokenize=False, flat_logprobs=True),
         SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)],
        use_tqdm=False,
    )
    warmup_s = time.perf_counter() - t0

    # 1. plain greedy
    plain_sp = dict(temperature=0.0, max_tokens=10, stop=["\n"])
    t0 = time.perf_counter()
    plain = llm.generate(prompts, SamplingParams(**plain_sp), use_tqdm=False)
    plain_s = time.perf_counter() - t0

    # 2. greedy mode through the router
    t0 = time.perf_counter()
    greedy = llm.generate(
        prompts,
        [SamplingParams(**plain_sp, extra_args={"declab": {"method": "extractive", "passage": p}}) for p in passages],
        use_tqdm=False,
    )
    greedy_s = time.perf_counter() - t0

    # Greedy mode may end a span with EOS or with the first token of its `stop` parameter (default newline).
    from declab.plugins.extractive.spec import SPEC

    stop_default = next((p.default for p in SPEC.params if p.name == "stop"), "")
    terminators = {eos, scorer.end_token(stop_default)}
    automata = [scorer.automaton(p) for p in passages]
    greedy_ids = []
    for o in greedy:
        ids = list(o.outputs[0].token_ids)
        if ids and ids[-1] in terminators:
            ids = ids[:-1]
        greedy_ids.append(ids)
    greedy_not_span = [i for i, (ids, sam) in enumerate(zip(greedy_ids, automata, strict=True)) if not sam.is_span(ids)]
    greedy_text_not_in_passage = [
        i for i, (o, p) in enumerate(zip(greedy, passages, strict=True)) if first_line(o.outputs[0].text) not in p
    ]

    # 3. exact mode, all items in one interleaved search loop; terminated by EOS (the paper's definition, the token
    # greedy mode forces) and by the newline token (how this model ends its answers).
    newline = scorer.tokenize("\n")
    assert len(newline) == 1, newline
    ends = {"eos": eos, "newline": scorer.end_token("\n")}
    exact: dict[str, list] = {}
    exact_stats: dict[str, dict] = {}
    for name, end in ends.items():
        rows_before, calls_before = scorer.stats.rows, scorer.stats.generate_calls
        t0 = time.perf_counter()
        exact[name] = exact_extract_batch(llm, list(zip(prompts, passages, strict=True)), scorer=scorer, end_id=end)
        exact_stats[name] = {
            "wall_s": time.perf_counter() - t0,
            "generate_calls": scorer.stats.generate_calls - calls_before,
            "rows": scorer.stats.rows - rows_before,
        }
        assert exact_stats[name]["rows"] == sum(r.n_scored_rows for r in exact[name])

    # Exact mode is the argmax, so its span scores at least as high as the greedy-mode span under the same
    # terminator (one batched scoring call for both terminators).
    jobs, owners = [], []
    for i, (ids, sam) in enumerate(zip(greedy_ids, automata, strict=True)):
        if ids and sam.is_span(ids) and not terminators & set(ids) and len(ids) <= 32:
            pid = scorer.prompt_ids(prompts[i])
            for k in range(len(ids) + 1):
                jobs.append((pid, ids[:k], sorted({*ends.values(), *ids})))
            owners.append(i)
    rows = scorer.score(jobs) if jobs else []
    greedy_lp: dict[str, dict[int, float]] = {name: {} for name in ends}
    pos = 0
    for i in owners:
        ids = greedy_ids[i]
        body = sum(float(rows[pos + k][t]) for k, t in enumerate(ids))
        for name, end in ends.items():
            greedy_lp[name][i] = body + float(rows[pos + len(ids)][end])
        pos += len(ids) + 1

    # 4. brute force on a sample: every distinct span, scored independently with prompt_logprobs on
    # prompt + span + end (prefill log-probs: a different code path from the sampled raw log-probs of the search)
    step = max(1, n_items // max(1, n_brute))
    sample = list(range(0, n_items, step))[:n_brute]
    brute = []
    for i in sample:
        sam = automata[i]
        pid = scorer.prompt_ids(prompts[i])
        spans = all_spans(sam, 32, eos)
        for name, end in ends.items():
            cand = [s for s in spans if end not in s]
            t0 = time.perf_counter()
            outs = llm.generate(
                [TokensPrompt(prompt_token_ids=pid + s + [end]) for s in cand],
                SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False),
                use_tqdm=False,
            )
            lps = []
            for s, o in zip(cand, outs, strict=True):
                toks = s + [end]
                plp = o.prompt_logprobs[-len(toks):]
                lps.append(sum(d[t].logprob for d, t in zip(plp, toks, strict=True)))
            brute_s = time.perf_counter() - t0
            best = max(range(len(cand)), key=lambda j: (lps[j], -j))
            # exact mode again on its own (no interleaving with other items), for a per-item wall time
            before = scorer.stats.generate_calls
            t0 = time.perf_counter()
            single = exact_extract(llm, prompts[i], passages[i], scorer=scorer, end_id=end)
            single_s = time.perf_counter() - t0
            # the search's own scorer on the brute-force winner, to compare the two scorers
            same_scorer = span_logprob(cand[best], scorer.score_fn(pid, sam, 32, end), end)
            ordered = sorted(lps)
            brute.append({
                "item": i,
                "end": name,
                "n_spans": len(cand),
                "brute_rows": sum(len(s) + 1 for s in cand),
                "brute_s": brute_s,
                "brute_span": cand[best],
                "brute_logprob": lps[best],
                "brute_runner_up_gap": ordered[-1] - ordered[-2] if len(lps) > 1 else None,
                "exact_span": exact[name][i].span_ids,
                "exact_logprob": exact[name][i].logprob,
                "exact_single_span": single.span_ids,
                "exact_single_s": single_s,
                "exact_single_rows": single.n_scored_rows,
                "exact_single_calls": scorer.stats.generate_calls - before,
                "scorer_logprob_of_brute_span": same_scorer,
            })

    cost = [brute_force_rows(sam, 32, eos) for sam in automata]
    return {
        "n_items": n_items,
        "warmup_s": warmup_s,
        "passages": passages,
        "context_answers": [it["context_answer"] for it in items],
        "plain": [first_line(o.outputs[0].text) for o in plain],
        "plain_s": plain_s,
        "greedy": [first_line(o.outputs[0].text) for o in greedy],
        "greedy_ids": greedy_ids,
        "greedy_s": greedy_s,
        "greedy_not_span": greedy_not_span,
        "greedy_text_not_in_passage": greedy_text_not_in_passage,
        "greedy_logprob": {name: {str(k): v for k, v in d.items()} for name, d in greedy_lp.items()},
        "greedy_stop": stop_default,
        "exact": {k: [first_line(r.answer) for r in v] for k, v in exact.items()},
        "exact_span_ids": {k: [r.span_ids for r in v] for k, v in exact.items()},
        "exact_logprob": {k: [r.logprob for r in v] for k, v in exact.items()},
        "exact_rows": {k: [r.n_scored_rows for r in v] for k, v in exact.items()},
        "exact_stats": exact_stats,
        "full_vocab_rows": scorer.stats.full_vocab_rows,
        "n_spans": [c[0] for c in cost],
        "brute_rows": [c[1] for c in cost],
        "brute": brute,
    }


@pytest.fixture(scope="session")
def run(extractive_engine):
    if eval_file("conflict_dev.jsonl") is None:
        pytest.skip("../shared/eval/conflict_dev.jsonl is not present")
    out = extractive_engine.run(exact_extract_run, N_ITEMS, N_BRUTE)
    out["engine_kwargs"] = extractive_engine.profile.kwargs()
    _report(out)
    return out


def _share(answers, gold) -> float:
    return sum(a == g for a, g in zip(answers, gold, strict=True)) / len(gold)


def _report(out) -> None:
    gold = out["context_answers"]
    n = out["n_items"]
    lines = [
        f"exact-extract on {n} conflict_dev items (decoder-29m, vLLM CPU, {out['engine_kwargs']}):",
        f"  share == context_answer: plain {_share(out['plain'], gold):.3f}  greedy-mode "
        f"{_share(out['greedy'], gold):.3f}  exact(EOS) {_share(out['exact']['eos'], gold):.3f}  "
        f"exact(newline) {_share(out['exact']['newline'], gold):.3f}",
        f"  wall: plain {out['plain_s']:.2f}s  greedy-mode {out['greedy_s']:.2f}s",
        f"  brute force would score {sum(out['brute_rows'])} rows ({sum(out['brute_rows']) / n:.1f}/item over "
        f"{sum(out['n_spans']) / n:.1f} distinct spans/item)",
    ]
    for name, st in out["exact_stats"].items():
        rows = out["exact_rows"][name]
        lines.append(f"  exact({name}): {st['wall_s']:.2f}s ({st['wall_s'] / n:.3f}s/item), {st['generate_calls']} "
                     f"engine calls, {sum(rows)} rows ({sum(rows) / n:.1f}/item, max {max(rows)})")
    for b in out["brute"]:
        lines.append(
            f"  item {b['item']} ({b['end']}): {b['n_spans']} spans, brute {b['brute_rows']} rows "
            f"{b['brute_s']:.2f}s; exact alone {b['exact_single_rows']} rows {b['exact_single_calls']} calls "
            f"{b['exact_single_s']:.2f}s; logprob exact {b['exact_logprob']:.5f} brute {b['brute_logprob']:.5f}"
        )
    print("\n".join(lines), file=sys.stderr)


def test_greedy_mode_answers_are_passage_spans(run):
    assert run["greedy_not_span"] == []
    assert run["greedy_text_not_in_passage"] == []


def test_exact_answers_are_spans_and_beat_greedy_mode(run):
    for answers in run["exact"].values():
        assert len(answers) == len(run["passages"]) == run["n_items"]
        for ans, passage in zip(answers, run["passages"], strict=True):
            assert ans and ans in passage
    for name, lps in run["greedy_logprob"].items():  # exact is the argmax, so it is >= the greedy-mode span
        assert len(lps) >= run["n_items"] // 2
        for i, lp in lps.items():
            i = int(i)
            assert run["exact_logprob"][name][i] >= lp - 1e-6, (name, i, run["exact"][name][i], run["greedy"][i])


def test_exact_equals_brute_force_argmax(run):
    assert len(run["brute"]) == 2 * N_BRUTE
    for b in run["brute"]:
        assert b["exact_span"] == b["brute_span"], b
        assert b["exact_single_span"] == b["exact_span"], b
        # prompt_logprobs (prefill) and the sampled raw log-probs (decode) agree up to float32 noise
        assert abs(b["exact_logprob"] - b["brute_logprob"]) < 1e-3, b
        assert abs(b["scorer_logprob_of_brute_span"] - b["brute_logprob"]) < 1e-3, b


def test_exact_scores_fewer_rows_than_brute_force(run):
    for rows in run["exact_rows"].values():
        assert sum(rows) < sum(run["brute_rows"]) / 4
    assert run["full_vocab_rows"] == 0  # short passages: logprob_token_ids (<= 128 ids) suffices


def test_answer_shares(run):
    gold = run["context_answers"]
    assert _share(run["exact"]["newline"], gold) >= 0.9
    assert _share(run["exact"]["eos"], gold) >= 0.6
    assert _share(run["greedy"], gold) >= 0.5
