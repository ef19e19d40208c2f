"""plugins/rapid/summary.py: pooling repeated ``declab bench spec`` runs of RAPID against vLLM's draft_model."""

import pytest

from declab.plugins.rapid.summary import summarise


def _report(draft_tps: dict[int, float], rapid_tps: dict[str, tuple[int, float]], full_tps: float) -> dict:
    def config(k, tps):
        return {"speculative_config": {"num_speculative_tokens": k},
                "phases": {"batch16": {"groups": {"all": {"tokens_per_s": tps, "tokens_per_forward": 1.4,
                                                          "token_identical_share": 1.0}}}}}

    configs = {"vanilla": {"phases": {"batch16": {"groups": {"all": {"tokens_per_s": 60.0,
                                                                     "token_identical_share": 1.0}}}}},
               "draft_model": config(2, 0.0), "rapid_full_context": config(4, full_tps)}
    configs.update({name: config(k, tps) for name, (k, tps) in rapid_tps.items()})
    return {"batch_size": 16, "groups": ["rag"], "prompts": {"total": 32},
            "draft_model_sweep": {"same_prompts_as_phases": True,
                                  "results": [{"k": k, "tokens_per_s": t, "tokens_per_forward": 1.3}
                                              for k, t in draft_tps.items()]},
            "configs": configs}


def test_ratios_are_per_run_and_hold_only_when_every_run_agrees():
    runs = [_report({2: 50.0, 4: 45.0}, {"rapid": (4, 48.0), "rapid_k2": (2, 55.0)}, 40.0),
            _report({2: 52.0, 4: 44.0}, {"rapid": (4, 43.0), "rapid_k2": (2, 51.0)}, 41.0)]
    s = summarise(runs)
    same_k = s["verdicts"]["rapid_over_draft_model_same_k"]
    assert same_k["rapid_k2"]["runs"] == pytest.approx([55 / 50, 51 / 52])
    assert not same_k["rapid_k2"]["holds"]  # the second run has it below 1
    assert same_k["rapid"]["runs"] == pytest.approx([48 / 45, 43 / 44]) and not same_k["rapid"]["holds"]
    best = s["verdicts"]["best_rapid_over_best_draft_model"]
    assert best["runs"] == pytest.approx([55 / 50, 51 / 52])
    full = s["verdicts"]["rapid_over_full_context"]
    assert list(full) == ["rapid"] and full["rapid"]["runs"] == pytest.approx([48 / 40, 43 / 41]) and full["rapid"]["holds"]
    assert s["configs"]["draft_model@2"]["tokens_per_s"]["median"] == pytest.approx(51.0)
    assert s["configs"]["vanilla"]["token_identical_share_min"] == 1.0


def test_a_sweep_on_other_prompts_is_refused():
    run = _report({2: 50.0}, {"rapid": (2, 55.0)}, 40.0)
    run["draft_model_sweep"]["same_prompts_as_phases"] = False
    with pytest.raises(ValueError, match="--draft-sweep-on selected"):
        summarise([run])
