"""``declab bench draft-agreement``: the measurement on two code prompts with the real decoder-29m and draft-5m
(plain transformers on the CPU, no engine; seconds), and the chain arithmetic on hand-made agreement strings."""

from __future__ import annotations

import pytest

from declab.integrations.bench_draft import CHAIN_KS, aggregate, group_rows, measure
from declab.integrations.sdk.agreement import chain_steps, draft_agreement, greedy_continuation, load_model, runs
from declab.integrations.sdk.bench import CODE_PROMPTS, default_draft_model, default_model

MAX_TOKENS = 24


def test_runs_count_consecutive_agreement_to_the_end():
    assert runs([True, True, False, True]) == [2, 1, 0, 1]
    assert runs([]) == []


def test_chain_walk_accepts_up_to_k_and_adds_the_targets_token():
    run = runs([True, True, True, False, True, True])  # [3, 2, 1, 0, 2, 1]
    assert chain_steps(run, 1) == (3, 3)  # steps at 0, 2 and 4 each accept 1; the target adds positions 1, 3, 5
    assert chain_steps(run, 8) == (2, 5)  # step at 0 accepts 3, position 3 is the target's; step at 4 accepts 2
    row = aggregate([{"matches": "111011"}])
    assert row["agreement"] == pytest.approx(5 / 6)
    assert row["chain"]["8"]["tokens_per_forward"] == pytest.approx(6 / 2)


@pytest.fixture(scope="module")
def models():
    draft_path = default_draft_model()
    if draft_path is None:
        pytest.skip("no draft fixture at ../shared/fixtures/draft-5m")
    return load_model(default_model()), load_model(draft_path)


@pytest.fixture(scope="module")
def records(models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model())
    items = [{"id": f"code-{i}", "group": "code", "prompt_ids": tok(CODE_PROMPTS[i]).input_ids} for i in (0, 2)]
    items[1]["group"] = "writing"  # a second group, so the Spec-Bench / code split has something on each side
    return measure(*models, items, MAX_TOKENS), items


def test_greedy_continuation_is_transformers_greedy(models):
    import torch
    from transformers import AutoTokenizer

    target, _ = models
    ids = AutoTokenizer.from_pretrained(default_model())(CODE_PROMPTS[0]).input_ids
    with torch.inference_mode():
        ref = target.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False)[0, len(ids):]
    assert greedy_continuation(target, ids, MAX_TOKENS) == ref.tolist()


def test_teacher_forced_draft_matches_its_own_step_by_step_argmax(models):
    """Position i of the one-pass agreement is the draft's argmax after prompt + continuation[:i]."""
    import torch
    from transformers import AutoTokenizer

    target, draft = models
    ids = AutoTokenizer.from_pretrained(default_model())(CODE_PROMPTS[2]).input_ids
    cont = greedy_continuation(target, ids, 8)
    with torch.inference_mode():
        stepwise = [int(draft(torch.tensor([ids + cont[:i]])).logits[0, -1].argmax()) == cont[i]
                    for i in range(len(cont))]
    assert draft_agreement(draft, ids, cont) == stepwise


def test_measurement_numbers_are_consistent(records):
    recs, items = records
    assert [r["prompt_tokens"] for r in recs] == [len(it["prompt_ids"]) for it in items]
    assert all(len(r["matches"]) == r["generated"] and 0 < r["generated"] <= MAX_TOKENS for r in recs)
    rows = group_rows(recs)
    assert set(rows) == {"all", "spec_bench", "code", "writing"}
    assert rows["all"]["positions"] == rows["spec_bench"]["positions"] + rows["code"]["positions"]
    assert rows["all"]["matches"] == rows["spec_bench"]["matches"] + rows["code"]["matches"]
    for row in rows.values():
        assert 0.0 <= row["agreement"] <= 1.0
        assert row["agreement"] == pytest.approx(row["matches"] / row["positions"])
        chain = row["chain"]
        # K=1: one accepted draft token per step exactly where the draft agrees
        assert chain["1"]["accepted_per_step"] == pytest.approx(row["agreement"])
        assert row["acceptance_by_position"]["1"] == pytest.approx(row["agreement"])
        accepted = [chain[str(k)]["accepted_per_step"] for k in CHAIN_KS]
        per_forward = [chain[str(k)]["tokens_per_forward"] for k in CHAIN_KS]
        by_position = [row["acceptance_by_position"][str(k)] for k in CHAIN_KS]
        assert accepted == sorted(accepted) and accepted[-1] <= 8
        assert by_position == sorted(by_position, reverse=True)
        # expected accepted tokens for K = sum of the acceptance of positions 1..K
        assert accepted == pytest.approx([sum(by_position[:k]) for k in CHAIN_KS])
        assert all(1.0 <= t <= 1 + k for t, k in zip(per_forward, CHAIN_KS))
    assert rows["all"]["matches"] > 0  # the draft agrees somewhere on code
