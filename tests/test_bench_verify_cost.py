"""``declab bench verify-cost``: the projection arithmetic, and the timing loop on a tiny model (CPU, no engine)."""

from __future__ import annotations

import pytest

from declab.integrations.bench_verify_cost import add_projections, forward_ms, interpolate, project


def test_interpolate_is_linear_between_points_and_never_falls_past_the_last():
    cost = {"1": 10.0, "3": 14.0, "81": 30.0}
    assert interpolate(cost, 1) == 10.0
    assert interpolate(cost, 2) == pytest.approx(12.0)
    assert interpolate(cost, 42) == pytest.approx(14.0 + 16.0 * 39 / 78)
    assert interpolate(cost, 200) > 30.0
    assert interpolate({"1": 10.0, "3": 8.0}, 81) == 8.0  # noisy points never project a negative cost


def test_project_charges_drafting_steps_their_pass_and_others_one_token():
    cost = {"1": 10.0, "3": 12.0, "81": 20.0}
    report = {"configs": {
        "vanilla": {"phases": {"batch1": {"groups": {"all": {"num_drafts": 0}}}}},
        "tree": {"phases": {"batch1": {"groups": {"all": {
            "num_drafts": 100, "num_draft_tokens": 8000, "tokens_per_forward": 2.0, "draft_step_share": 1.0,
            "speedup_vs_vanilla": 0.5}}}}},
        "ngram": {"phases": {"batch1": {"groups": {"all": {
            "num_drafts": 50, "num_draft_tokens": 100, "tokens_per_forward": 1.5, "draft_step_share": 0.5}}}}},
    }}
    out = project(cost, report, "batch1")
    assert out["vanilla"]["projected_speedup"] == 1.0
    assert out["tree"]["projected_speedup"] == pytest.approx(2.0 * 10 / 20)
    assert out["ngram"]["projected_speedup"] == pytest.approx(1.5 * 10 / (0.5 * 12 + 0.5 * 10))


def _draft_report() -> dict:
    row = {"num_drafts": 100, "num_draft_tokens": 400, "tokens_per_forward": 2.0, "draft_step_share": 1.0}
    return {"configs": {
        "vanilla": {"phases": {"batch1": {"groups": {"all": {"num_drafts": 0}}}}},
        # vLLM's draft_model: the report names its draft; no forward count, so a chain of 4 = 4 draft forwards
        "draft_model": {"draft_model": "/drafts/d", "phases": {"batch1": {"groups": {"all": dict(row)}}}},
        # a plugin proposer counting its own draft passes: 300 over 100 propose calls = 3 per step
        "adaptive": {"phases": {"batch1": {"groups": {"all": dict(row)}, "proposer": {
            "propose_calls": 100, "stats": {"draft_forwards": 300}}}}},
        "ngram": {"phases": {"batch1": {"groups": {"all": dict(row)}}}},  # no draft model: no draft cost
    }}


def test_project_charges_a_draft_model_its_forwards():
    cost = {"1": 10.0, "5": 14.0}
    out = project(cost, _draft_report(), "batch1", draft_ms=0.5)
    assert out["vanilla"]["projected_speedup"] == 1.0
    assert out["draft_model"]["draft_forwards_per_step"] == 4.0
    assert out["draft_model"]["projected_speedup"] == pytest.approx(2.0 * 10 / (14 + 4 * 0.5))
    assert out["adaptive"]["draft_forwards_per_step"] == 3.0
    assert out["adaptive"]["projected_speedup"] == pytest.approx(2.0 * 10 / (14 + 3 * 0.5))
    assert "draft_forwards_per_step" not in out["ngram"]
    assert out["ngram"]["projected_speedup"] == pytest.approx(2.0 * 10 / 14)
    unmeasured = project(cost, _draft_report(), "batch1")  # no draft timed: said so, cost left out
    assert unmeasured["draft_model"]["draft_ms_per_step"] is None and "not measured" in unmeasured["draft_model"]["note"]


def test_a_proposer_that_overlaps_draft_and_verification_pays_the_longer_of_the_two():
    report = _draft_report()
    report["configs"]["adaptive"]["phases"]["batch1"]["proposer"]["stats"]["draft_overlaps_verification"] = True
    out = project({"1": 10.0, "5": 14.0}, report, "batch1", draft_ms=6.0)["adaptive"]
    assert out["mean_step_ms"] == 18.0  # max(verify 14, draft 3 x 6)
    assert out["projected_speedup"] == pytest.approx(2.0 * 10 / 18)
    assert out["serial_projected_speedup"] == pytest.approx(2.0 * 10 / (14 + 18))


def test_projections_pair_each_target_with_its_draft_and_skip_drafts():
    report = {"device": "cpu", "models": {
        "model": {"draft": "draft", "by_batch_size": {"1": {"forward_ms": {"1": 10.0, "5": 14.0}}}},
        "draft": {"role": "draft", "drafts_for": ["model"], "by_batch_size": {"1": {"forward_ms": {"1": 0.5}}}},
    }}
    add_projections(report, _draft_report(), lambda m: None)
    assert "projection" not in report["models"]["draft"]["by_batch_size"]["1"]
    got = report["models"]["model"]["by_batch_size"]["1"]["projection"]["draft_model"]
    assert got["draft_ms_per_step"] == 2.0 and "projection" in report["projection_note"]


def test_forward_ms_times_every_query_length_on_a_tiny_model():
    import torch
    import transformers

    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, vocab_size=100)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    got = forward_ms(model, device="cpu", context=8, query_lengths=[1, 5], repeats=2, batch_size=2)
    assert set(got) == {"1", "5"} and all(v > 0 for v in got.values())


def test_a_proposer_drafting_with_the_targets_own_layers_pays_its_share_of_a_target_forward():
    """Layer skipping (SWIFT) states ``draft_cost_of_target_forward``: each draft forward costs that share of c(1)
    on the projected device, whatever draft model was timed (and the next configuration keeps the timed one)."""
    report = _draft_report()
    report["configs"]["adaptive"]["phases"]["batch1"]["proposer"]["stats"]["draft_cost_of_target_forward"] = 0.5
    out = project({"1": 10.0, "5": 14.0}, report, "batch1", draft_ms=0.5)
    assert out["adaptive"]["draft_ms_per_forward"] == 5.0 and "own layers" in out["adaptive"]["draft_ms_from"]
    assert out["adaptive"]["projected_speedup"] == pytest.approx(2.0 * 10 / (14 + 3 * 5.0))
    assert out["draft_model"]["draft_ms_per_forward"] == 0.5
