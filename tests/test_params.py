import math

import pytest
from hypothesis import given, strategies as st

from declab.integrations.sdk.params import ParamSpec, resolve_params

ALPHA = ParamSpec("alpha", float, 0.5, low=0.0, high=10.0)
K = ParamSpec("k", int, 4, low=1, high=16)
MODE = ParamSpec("mode", str, "greedy", choices=("greedy", "exact"))
TEXT = ParamSpec("passage", str, max_length=10)


def test_defaults_and_required():
    assert resolve_params((ALPHA, K), {}) == {"alpha": 0.5, "k": 4}
    with pytest.raises(ValueError, match=r"declab\.passage is required"):
        resolve_params((TEXT,), {})


@pytest.mark.parametrize(
    "spec,value,match",
    [
        (ALPHA, -0.1, r"declab\.alpha must be >= 0"),
        (ALPHA, 11, r"declab\.alpha must be <= 10"),
        (ALPHA, "x", r"declab\.alpha must be a finite number"),
        (ALPHA, math.nan, r"declab\.alpha must be a finite number"),
        (ALPHA, True, r"declab\.alpha must be a finite number"),
        (K, 2.5, r"declab\.k must be an integer"),
        (K, 0, r"declab\.k must be >= 1"),
        (MODE, "fast", r"declab\.mode must be one of"),
        (TEXT, "x" * 11, r"declab\.passage is longer than 10"),
        (TEXT, 3, r"declab\.passage must be a string"),
    ],
)
def test_invalid_values_name_the_parameter(spec, value, match):
    with pytest.raises(ValueError, match=match):
        spec.validate(value)


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"declab\.alpah is not a parameter"):
        resolve_params((ALPHA,), {"alpah": 1.0})


def test_int_accepts_integral_float():
    assert K.validate(3.0) == 3 and isinstance(K.validate(3.0), int)


@given(st.floats(min_value=0.0, max_value=10.0))
def test_in_range_floats_pass_unchanged(x):
    assert ALPHA.validate(x) == x


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 2.5])
def test_integer_parameter_refuses_non_finite_and_fractional_numbers_naming_it(value):
    # int(inf) used to raise OverflowError (HTTP 500 with an empty message) instead of a ValueError naming it.
    with pytest.raises(ValueError, match=r"declab\.k must be an integer"):
        ParamSpec("k", int, default=1).validate(value)


def test_string_parameter_with_a_lone_surrogate_is_refused_naming_it():
    # "\ud800abc" as contrast_prompt reached the tokenizer, whose TypeError was an HTTP 500 with an empty message.
    with pytest.raises(ValueError, match=r"declab\.contrast_prompt is not valid text: surrogates not allowed"):
        ParamSpec("contrast_prompt", str).validate("\ud800abc", prefix="declab")
    assert ParamSpec("contrast_prompt", str).validate("héllo ✓") == "héllo ✓"
