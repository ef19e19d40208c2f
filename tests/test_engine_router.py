"""The router logits processor through a real vLLM engine on decoder-29m (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_child as run_script

from declab.integrations.engine_run import RunSpec, run_in_child
from declab.integrations.sdk.metrics import repetition_stats
from declab.integrations.prompts import CODE_PROMPTS, default_bench_prompts

pytestmark = pytest.mark.engine
CHILD = Path(__file__).with_name("engine_child.py")


def run_child(name: str, **env) -> dict:
    return run_script(CHILD, name, env=env, timeout=900)


@pytest.fixture(scope="module")
def vanilla(model_path):
    """Greedy outputs with vLLM plugin loading disabled altogether."""
    prompts = default_bench_prompts(12)
    spec = RunSpec(model=model_path, prompts=prompts, sampling={"temperature": 0.0, "max_tokens": 48},
                   env={"VLLM_PLUGINS": "", "DECLAB_PLUGINS": None}, name="vanilla")
    return prompts, run_in_child(spec)


def test_installed_but_unselected_is_token_identical(vanilla, model_path):
    prompts, base = vanilla
    spec = RunSpec(model=model_path, prompts=prompts, sampling={"temperature": 0.0, "max_tokens": 48},
                   env={"VLLM_PLUGINS": None, "DECLAB_PLUGINS": None}, name="installed")
    installed = run_in_child(spec)
    assert installed["token_ids"] == base["token_ids"]


@pytest.fixture(scope="module")
def mixed():
    return run_child("router_mixed_batch", DECLAB_PLUGINS="momentum,extractive")


def test_plain_rows_in_a_mixed_batch_are_untouched(mixed, vanilla):
    prompts, base = vanilla
    vanilla_by_prompt = dict(zip(prompts, base["token_ids"]))
    plain = [(p, t) for p, t, k in zip(mixed["prompts"], mixed["token_ids"], mixed["kinds"]) if k == "plain"
             and p in vanilla_by_prompt]
    assert len(plain) >= 5
    for prompt, tokens in plain:
        assert tokens == vanilla_by_prompt[prompt], prompt


def test_momentum_rows_change_and_repeat_less(mixed):
    plain = [t for t, k in zip(mixed["token_ids"], mixed["kinds"]) if k == "plain"][:6]
    mom = [t for t, k in zip(mixed["token_ids"], mixed["kinds"]) if k == "momentum"]
    assert any(a != b for a, b in zip(plain, mom))
    assert repetition_stats(mom)["rep_4"] < repetition_stats(plain)["rep_4"]


def test_extractive_row_answers_with_a_passage_span(mixed):
    text = [t for t, k in zip(mixed["texts"], mixed["kinds"]) if k == "extractive"][0]
    assert text.strip() and text.strip() in mixed["passage"]


def test_bad_arguments_are_rejected_at_admission_naming_the_parameter(mixed):
    errors = mixed["errors"]
    assert "declab.method" in errors["unknown_method"]
    assert "declab.max_span_tokens" in errors["out_of_range"]
    assert "declab.passage is required" in errors["missing_required"]
    assert "declab.bogus" in errors["unknown_param"]
    assert "declab must be an object" in errors["not_an_object"]
    assert mixed["after_errors_token_ids"]  # engine still serving


def test_logits_plugin_with_speculative_decoding_fails_loudly():
    out = run_child("spec_with_logits_plugin", DECLAB_PLUGINS="momentum")
    assert out["error"] and "speculative decoding" in out["error"] and "momentum" in out["error"]
