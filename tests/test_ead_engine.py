"""EAD (``plugins/ead``; issue #14) through a real vLLM engine: decoder-29m as target, the bundled draft, K = 8,
window 4, every draft kept (patch ``ead_accepts_drafts``), thresholds given per request.

Threshold 0 is plain target greedy (token-identical to the vanilla references, batch and batch 1); a threshold
above ln(vocabulary) lets the draft write most tokens (target share < 1, outputs differ but are complete); both in one
batch keep their own behaviour; a bad threshold is refused at admission naming the parameter, the engine lives on.
"""

from __future__ import annotations

import pytest
from engines import spec_counters

pytestmark = [pytest.mark.engine, pytest.mark.vanilla("spec_bench_reduced")]

NEVER_HAND_OVER = 100.0  # nats, above ln(vocabulary)


def _drafter_stats(worker) -> dict:
    return dict(worker.model_runner.drafter.stats)


def ead_greedy(llm, prompts: list[str], max_tokens: int, thresholds: list[float], batch1: int = 0) -> dict:
    """Greedy outputs of ``prompts`` in one batch, prompt ``i`` with ``entropy_threshold`` ``thresholds[i]``, then
    the first ``batch1`` one at a time; the proposer's counters and vLLM's over the batch."""
    from vllm import SamplingParams

    params = [SamplingParams(temperature=0.0, max_tokens=max_tokens,
                             extra_args={"declab": {"method": "ead", "entropy_threshold": h}}) for h in thresholds]
    before, spec_before = llm.collective_rpc(_drafter_stats)[0], spec_counters(llm)
    outs = llm.generate(prompts, params, use_tqdm=False)
    after, spec_after = llm.collective_rpc(_drafter_stats)[0], spec_counters(llm)
    singles = [list(llm.generate([p], params[i], use_tqdm=False)[0].outputs[0].token_ids)
               for i, p in enumerate(prompts[:batch1])]
    return {"token_ids": [list(o.outputs[0].token_ids) for o in outs],
            "finish": [o.outputs[0].finish_reason for o in outs], "single_token_ids": singles,
            "stats": {k: after[k] - before[k] for k in ("draft_tokens", "target_tokens", "to_target", "to_draft")},
            "spec": {k: v - spec_before.get(k, 0) for k, v in spec_after.items()}}


def test_threshold_zero_is_plain_greedy_token_identical(vanilla, ead_engine):
    base = vanilla("spec_bench_reduced")
    n = len(base["prompts"])
    out = ead_engine.run(ead_greedy, base["prompts"], 64, [0.0] * n, 6)
    assert out["token_ids"] == base["token_ids"]
    assert out["single_token_ids"] == base["single_token_ids"]
    assert out["stats"]["draft_tokens"] == 0 and out["spec"].get("num_draft_tokens", 0) == 0, out
    assert out["stats"]["target_tokens"] == sum(map(len, base["token_ids"]))


def test_large_threshold_lets_the_draft_write_and_changes_the_output(vanilla, ead_engine):
    base = vanilla("spec_bench_reduced")
    n = len(base["prompts"])
    out = ead_engine.run(ead_greedy, base["prompts"], 64, [NEVER_HAND_OVER] * n)
    s = out["stats"]
    share = s["target_tokens"] / (s["target_tokens"] + s["draft_tokens"])
    print(f"target share at h={NEVER_HAND_OVER}: {share:.3f} ({s})")
    assert share < 0.3, s  # K = 8: one target token per chain of up to 8 draft tokens
    assert s["target_tokens"] + s["draft_tokens"] == sum(map(len, out["token_ids"]))
    assert s["to_target"] == 0, s
    different = sum(a != b for a, b in zip(out["token_ids"], base["token_ids"]))
    assert different >= n // 2, different  # a 5M-parameter draft does not reproduce decoder-29m
    for ids, finish in zip(out["token_ids"], out["finish"]):  # complete, well-formed outputs
        assert finish in ("length", "stop") and 0 < len(ids) <= 64 and all(0 <= t < 32768 for t in ids)


def test_default_threshold_switches_both_ways(vanilla, ead_engine):
    base = vanilla("spec_bench_reduced")
    out = ead_engine.run(ead_greedy, base["prompts"], 64, [1.5] * len(base["prompts"]))
    s = out["stats"]
    assert s["to_target"] > 0 and s["to_draft"] > 0, s
    assert 0 < s["draft_tokens"] and 0 < s["target_tokens"], s


def test_per_request_thresholds_in_one_batch(vanilla, ead_engine):
    base = vanilla("spec_bench_reduced")
    prompts, ref = base["prompts"][:8], base["token_ids"][:8]
    thresholds = [0.0, NEVER_HAND_OVER] * 4
    out = ead_engine.run(ead_greedy, prompts, 64, thresholds)
    plain = [i for i, h in enumerate(thresholds) if h == 0]
    assert [out["token_ids"][i] for i in plain] == [ref[i] for i in plain]
    assert any(out["token_ids"][i] != ref[i] for i in range(8) if i not in plain)
    assert out["stats"]["draft_tokens"] > 0


def _refused(llm, extra) -> str:
    from vllm import SamplingParams

    try:
        llm.generate(["def f(x):"], SamplingParams(max_tokens=4, extra_args=extra), use_tqdm=False)
    except ValueError as e:
        after = llm.generate(["def f(x):"], SamplingParams(max_tokens=4), use_tqdm=False)  # the engine lives on
        assert len(after[0].outputs[0].token_ids) == 4
        return str(e)
    return "accepted"


@pytest.mark.parametrize("value", [-0.5, "high", 1e6])
def test_bad_threshold_is_refused_naming_the_parameter(ead_engine, value):
    message = ead_engine.run(_refused, {"declab": {"method": "ead", "entropy_threshold": value}})
    assert "declab.entropy_threshold" in message, message
