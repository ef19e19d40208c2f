"""``declab bench verify-cost``: the projection arithmetic, and the timing loop on a tiny model (CPU, no engine)."""

from __future__ import annotations

import pytest

from declab.integrations.bench_verify_cost import forward_ms, interpolate, project


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


def test_forward_ms_times_every_query_length_on_a_tiny_model():
    import torch
    import transformers

    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, vocab_size=100)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    got = forward_ms(model, device="cpu", context=8, query_lengths=[1, 5], repeats=2, batch_size=2)
    assert set(got) == {"1", "5"} and all(v > 0 for v in got.values())
