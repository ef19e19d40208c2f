"""exact-extract (paper 55) through a real vLLM engine on decoder-29m (CPU): greedy mode via the router, exact mode
via the search loop, checked against an independent brute force. One engine start (``extractive_child.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import run_child

from declab.integrations.models import eval_file

pytestmark = pytest.mark.engine
CHILD = Path(__file__).with_name("extractive_child.py")
N_ITEMS, N_BRUTE = 40, 5


@pytest.fixture(scope="module")
def run():
    if eval_file("conflict_dev.jsonl") is None:
        pytest.skip("../shared/eval/conflict_dev.jsonl is not present")
    out = run_child(CHILD, str(N_ITEMS), str(N_BRUTE), env={"DECLAB_PLUGINS": "extractive"}, timeout=1200)
    _report(out)
    return out


def _share(answers, gold) -> float:
    return sum(a == g for a, g in zip(answers, gold)) / len(gold)


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
        for ans, passage in zip(answers, run["passages"]):
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
