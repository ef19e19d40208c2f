"""Admission of extractive requests (no engine): what the served path cannot do is refused with the parameter named."""

import pytest

from declab.integrations.request_args import parse_request_args

pytestmark = pytest.mark.core


def _parse(**args):
    return parse_request_args({"declab": {"method": "extractive", **args}}, selected=("extractive",))


def test_exact_mode_is_refused_over_the_served_path():
    with pytest.raises(ValueError, match=r"declab\.mode='exact' is not served per request"):
        _parse(passage="Marrator is a city.", mode="exact")
    assert _parse(passage="Marrator is a city.").params["mode"] == "greedy"


@pytest.mark.parametrize("passage", ["", "   ", "\n\t"])
def test_blank_passage_is_refused(passage):
    with pytest.raises(ValueError, match=r"declab\.passage must not be empty or blank"):
        _parse(passage=passage)
