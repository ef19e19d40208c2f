"""EAD's rolling-entropy switch (``plugins/ead/core.py``) against its naive reference, and its edge thresholds."""

from __future__ import annotations

import math
import random

import pytest

from declab.plugins.ead.core import DRAFT, TARGET, EntropySwitch, reference_modes


def run(switch: EntropySwitch, entropies) -> list[str]:
    return [switch.observe(e) for e in entropies]


@pytest.mark.parametrize("seed", range(200))
def test_switch_equals_the_naive_reference_on_random_sequences(seed):
    rng = random.Random(seed)
    window = rng.randint(1, 8)
    threshold = rng.choice([0.0, 0.3, 1.0, 1.5, 2.5, 5.0])
    entropies = [rng.choice([0.0, rng.random() * 4, rng.random() * 0.5]) for _ in range(rng.randint(1, 60))]
    assert run(EntropySwitch(threshold, window), entropies) == reference_modes(entropies, threshold, window)


def test_threshold_zero_never_drafts():
    switch = EntropySwitch(0.0, 4)
    assert run(switch, [0.0, 0.0, 1e-9, 0.0]) == [TARGET] * 4


def test_threshold_above_the_largest_entropy_never_hands_over():
    assert run(EntropySwitch(math.log(32000) + 1e-6, 3), [math.log(32000)] * 10) == [DRAFT] * 10


def test_hand_over_and_back_with_hysteresis_from_the_window():
    # window 2, h 1: [0.2] ok; [0.2, 2.4] mean 1.3 -> target; [2.4, 0.4] mean 1.4 stays; [0.4, 0.2] mean 0.3 -> draft
    assert run(EntropySwitch(1.0, 2), [0.2, 2.4, 0.4, 0.2]) == [DRAFT, TARGET, TARGET, DRAFT]


def test_window_one_follows_each_entropy():
    assert run(EntropySwitch(1.0, 1), [0.5, 1.0, 0.99, 3.0]) == [DRAFT, TARGET, DRAFT, TARGET]


@pytest.mark.parametrize("threshold,window,message", [(-0.1, 4, "threshold"), (1.0, 0, "window")])
def test_bad_switch_settings_name_the_setting(threshold, window, message):
    with pytest.raises(ValueError, match=message):
        EntropySwitch(threshold, window)


def test_request_threshold_is_validated_at_admission_naming_the_parameter(monkeypatch):
    from declab.integrations.request_args import parse_request_args

    ok = parse_request_args({"declab": {"method": "ead", "entropy_threshold": 0.5}}, selected=("ead",))
    assert ok.spec.name == "ead" and ok.params["entropy_threshold"] == 0.5
    assert parse_request_args({"declab": {"method": "ead"}}, selected=("ead",)).params["entropy_threshold"] is None
    for bad in (-1, "high", float("nan"), 1e9):
        with pytest.raises(ValueError, match="declab.entropy_threshold"):
            parse_request_args({"declab": {"method": "ead", "entropy_threshold": bad}}, selected=("ead",))
    with pytest.raises(ValueError, match="not enabled"):
        parse_request_args({"declab": {"method": "ead", "entropy_threshold": 1.0}}, selected=("pearl",))
