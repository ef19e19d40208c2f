"""The router logits processor through a real vLLM engine on decoder-29m (CPU)."""

from __future__ import annotations

import pytest
from engines import EngineProfile, greedy_run

from declab.integrations.sdk.metrics import repetition_stats
from declab.integrations.prompts import CODE_PROMPTS

pytestmark = [pytest.mark.engine, pytest.mark.vanilla("bench12")]


def test_installed_but_unselected_is_token_identical(vanilla, installed_engine):
    base = vanilla("bench12")  # plugin loading disabled altogether (VLLM_PLUGINS="")
    installed = installed_engine.run(greedy_run, base["prompts"], 48)
    assert installed["token_ids"] == base["token_ids"]


def router_mixed_batch(llm) -> dict:
    """Mixed batch (plain + momentum + extractive rows) and admission errors, on one engine."""
    from vllm import SamplingParams

    code = list(CODE_PROMPTS[:6])
    passage = "Mikagro Works is headquartered in Marrator."
    qa = f"Context: {passage}\nQuestion: Where is Mikagro Works headquartered?\nAnswer:"
    greedy = dict(temperature=0.0, max_tokens=48)
    prompts, params, kinds = [], [], []
    for p in code:  # interleave plain and plugin rows in one batch
        prompts += [p, p]
        params += [SamplingParams(**greedy), SamplingParams(**greedy, extra_args={"declab": {"method": "momentum"}})]
        kinds += ["plain", "momentum"]
    prompts += [qa, qa]
    params += [SamplingParams(temperature=0.0, max_tokens=8),
               SamplingParams(temperature=0.0, max_tokens=8,
                              extra_args={"declab.method": "extractive", "declab.passage": passage})]
    kinds += ["plain", "extractive"]
    outs = llm.generate(prompts, params, use_tqdm=False)
    result = {"kinds": kinds, "prompts": prompts, "passage": passage,
              "token_ids": [list(o.outputs[0].token_ids) for o in outs],
              "texts": [o.outputs[0].text for o in outs]}
    errors = {}
    bad = {
        "unknown_method": {"declab": {"method": "nope"}},
        "out_of_range": {"declab": {"method": "extractive", "passage": "x", "max_span_tokens": 0}},
        "missing_required": {"declab": {"method": "extractive"}},
        "unknown_param": {"declab": {"method": "extractive", "passage": "x", "bogus": 1}},
        "not_an_object": {"declab": "momentum"},
    }
    for name, extra in bad.items():
        try:
            llm.generate(["hello"], SamplingParams(max_tokens=2, extra_args=extra), use_tqdm=False)
            errors[name] = None
        except Exception as e:  # noqa: BLE001 - vLLM wraps it in VLLMValidationError
            errors[name] = f"{type(e).__name__}: {e}"
    # The engine keeps serving after rejected requests.
    after = llm.generate([code[0]], SamplingParams(**greedy), use_tqdm=False)
    result["errors"] = errors
    result["after_errors_token_ids"] = list(after[0].outputs[0].token_ids)
    return result


@pytest.fixture(scope="session")
def mixed(router_engine):
    return router_engine.run(router_mixed_batch)


def test_plain_rows_in_a_mixed_batch_are_untouched(mixed, vanilla):
    base = vanilla("bench12")
    vanilla_by_prompt = dict(zip(base["prompts"], base["token_ids"], strict=True))
    plain = [(p, t) for p, t, k in zip(mixed["prompts"], mixed["token_ids"], mixed["kinds"], strict=True)
             if k == "plain" and p in vanilla_by_prompt]
    assert len(plain) >= 5
    for prompt, tokens in plain:
        assert tokens == vanilla_by_prompt[prompt], prompt


def test_momentum_rows_change_and_repeat_less(mixed):
    plain = [t for t, k in zip(mixed["token_ids"], mixed["kinds"], strict=True) if k == "plain"][:6]
    mom = [t for t, k in zip(mixed["token_ids"], mixed["kinds"], strict=True) if k == "momentum"]
    assert len(plain) == len(mom) == 6
    assert any(a != b for a, b in zip(plain, mom, strict=True))
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


def test_logits_plugin_with_speculative_decoding_fails_loudly(engine_startup_error):
    failure = engine_startup_error(EngineProfile("momentum_ngram", plugins="momentum", engine_kwargs={
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}}))
    assert failure is not None
    assert "speculative decoding" in failure.error and "momentum" in failure.error
