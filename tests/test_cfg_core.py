"""Pure tests of classifier-free guidance (``declab.plugins.cfg``; no engine): the formula against HF transformers'
``uncond + g * (cond - uncond)`` written naively, its identity with CAD at ``alpha = g - 1``, the masking rules it
shares with the contrastive family, the parameter bounds, and the companion-prompt rule for an empty
``negative_prompt`` (the prompt's last token alone, as HF does)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from declab.integrations import registry
from declab.integrations.sdk.groups import (EMPTY_COMPANION_LAST_PROMPT_TOKEN, EMPTY_COMPANION_REFUSED,
                                            companion_prompt_ids)
from declab.integrations.sdk.params import resolve_params
from declab.integrations.sdk.rows import RowContext
from declab.integrations.sdk.sampling import SamplingSettings
from declab.integrations.sdk.spec import LogitsHook
from declab.plugins.cad.core import cad_logits
from declab.plugins.cfg.core import CFGProcessor, cfg_logits

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPEC = registry.get_spec("cfg")

rows = st.integers(2, 24).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=n, max_size=n),
        st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=n, max_size=n),
    )
)
scales = st.floats(0.0, 30.0, allow_nan=False)


def naive_cfg(cond: torch.Tensor, uncond: torch.Tensor, g: float) -> torch.Tensor:
    """HF transformers' rule, written from its definition: log-softmax both streams, uncond + g * (cond - uncond)."""
    lc = torch.log_softmax(cond.double(), -1)
    lu = torch.log_softmax(uncond.double(), -1)
    return lu + g * (lc - lu)


@FAST
@given(rows, scales)
def test_cfg_equals_the_naive_formula(pair, g):
    cond, uncond = (torch.tensor(r, dtype=torch.float32) for r in pair)
    got = cfg_logits(cond, uncond, g).double()
    expected = naive_cfg(cond, uncond, g)
    assert torch.allclose(got, expected, atol=1e-3 * max(1.0, g), rtol=1e-5)


@FAST
@given(rows, st.floats(1.0, 11.0, allow_nan=False))
def test_cfg_is_cad_at_alpha_g_minus_one(pair, g):
    cond, uncond = (torch.tensor(r, dtype=torch.float32) for r in pair)
    assert torch.allclose(cfg_logits(cond, uncond, g), cad_logits(cond, uncond, g - 1.0), atol=1e-4 * g)


@FAST
@given(rows)
@example(([0.0, 1.0037807240225305e-28], [0.0, 0.0]))  # a float32 tie (found by hypothesis in a clean-clone run)
def test_scale_one_is_plain_decoding(pair):
    cond, uncond = (torch.tensor(r, dtype=torch.float32) for r in pair)
    out = cfg_logits(cond, uncond, 1.0)
    assert torch.allclose(out, torch.log_softmax(cond, -1), atol=1e-5)
    # The greedy choice is the prompt's own (up to float32 ties: logits 0 and 1e-28 have equal log-probabilities).
    assert cond[int(out.argmax())] >= cond.max() - 1e-5


def test_scale_zero_decodes_the_negative_stream():
    cond, uncond = torch.tensor([3.0, 0.0, 1.0]), torch.tensor([0.0, 4.0, 1.0])
    assert int(cfg_logits(cond, uncond, 0.0).argmax()) == 1


def test_a_token_the_prompt_rules_out_stays_out_and_nothing_overflows():
    cond = torch.tensor([float("-inf"), 0.0, 1.0, float("nan")])
    uncond = torch.tensor([5.0, float("-inf"), -3.0e38, 0.0])
    for g in (0.0, 1.0, 1.5, 30.0):
        out = cfg_logits(cond, uncond, g)
        assert out[0] == float("-inf") and out[3] == float("-inf")
        assert not torch.isnan(out).any() and not torch.isposinf(out).any()
        assert torch.isfinite(out[1:3]).all()


def test_processor_reads_its_companion_row_by_name():
    params = resolve_params(SPEC.params, {"guidance_scale": 3.0})
    proc = CFGProcessor(params, [], [], RowContext(vocab_size=3, sampling=SamplingSettings(temperature=0.0)))
    assert proc.companion == "negative_prompt" == SPEC.logits.companions[0]
    cond, uncond = torch.tensor([2.0, 1.9, 0.0]), torch.tensor([3.0, 0.0, 0.0])
    assert proc.choose({"main": cond, "negative_prompt": uncond}, 0) == 1  # guidance moves off the negative's pick
    assert int(cond.argmax()) == 0


def test_parameters_defaults_and_bounds():
    params = resolve_params(SPEC.params, {})
    assert params == {"negative_prompt": "", "guidance_scale": 1.5}
    for bad in (math.nan, math.inf, -math.inf, -0.5, 30.5, "2", True, None):
        with pytest.raises(ValueError, match="declab.guidance_scale"):
            resolve_params(SPEC.params, {"guidance_scale": bad})
    with pytest.raises(ValueError, match="declab.negative_prompt"):
        resolve_params(SPEC.params, {"negative_prompt": 3})
    assert resolve_params(SPEC.params, {"guidance_scale": 30})["guidance_scale"] == 30.0


def test_spec_is_a_plugin_beyond_the_reading_list():
    assert SPEC.paper == 0 and SPEC.baseline_of is None and SPEC.status == "working"
    assert SPEC.logits.companions == ("negative_prompt",)
    assert SPEC.logits.empty_companion == EMPTY_COMPANION_LAST_PROMPT_TOKEN
    assert registry.get_spec("cad").logits.empty_companion == EMPTY_COMPANION_REFUSED


def test_an_empty_companion_prompt_is_the_last_prompt_token_where_the_hook_says_so():
    assert companion_prompt_ids([5, 6], [1, 2, 3], EMPTY_COMPANION_LAST_PROMPT_TOKEN) == [5, 6]
    assert companion_prompt_ids([], [1, 2, 3], EMPTY_COMPANION_LAST_PROMPT_TOKEN) == [3]
    assert companion_prompt_ids([], [1, 2, 3], EMPTY_COMPANION_REFUSED) == []
    assert companion_prompt_ids([], [], EMPTY_COMPANION_LAST_PROMPT_TOKEN) == []
    with pytest.raises(ValueError, match="empty_companion"):
        LogitsHook(row_processor="x:y", companions=("p",), empty_companion="bos")
