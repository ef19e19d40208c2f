"""vLLM fix ``lone_surrogate_strings``: a ``stop``, ``bad_words`` or ``extra_args`` string with a lone surrogate is a
400 naming the field, not an HTTP 500 with an empty message (found by the fuzz suite: ``"bad_words": ["\\ud800"]`` and
``"stop": ["\\ud800"]`` on /v1/completions, with or without a plugin). In a child process: the patch changes vLLM's
``SamplingParams`` for the whole process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from helpers import child_env

from declab.patches.lone_surrogate_strings import invalid_extra_args, invalid_text

pytestmark = pytest.mark.core


def test_invalid_text_names_the_field_and_position():
    assert invalid_text("stop", ["ok", "a\ud800"]) == "stop[1] is not valid text: surrogates not allowed at position 1"
    assert invalid_text("stop", "\udfff") == "stop is not valid text: surrogates not allowed at position 0"
    assert invalid_text("bad_words", None) is None
    assert invalid_text("bad_words", ["héllo 🙂", "世界"]) is None


def test_invalid_extra_args_finds_strings_at_any_depth():
    # Found by the fuzz suite: {"vllm_xargs": {"declaB.alpha": "\ud800abc"}} (a namespace no validator reads).
    assert invalid_extra_args({"declaB.alpha": "\ud800abc"}) == (
        "extra_args['declaB.alpha'] is not valid text: surrogates not allowed at position 0")
    assert "extra_args['x'][1]" in invalid_extra_args({"x": [1, "\udfff"]})
    assert "extra_args key" in invalid_extra_args({"\ud800": 1})
    assert invalid_extra_args({"declab": {"method": "cad", "contrast_prompt": "é 世界"}, "n": [1.5, None]}) is None
    assert invalid_extra_args(None) is None
    # declab's own arguments are left to their declarations (the message names declab.contrast_prompt)
    assert invalid_extra_args({"declab": {"contrast_prompt": "\ud800"}, "declab.alpha": "\ud800"}) is None


def test_sampling_params_refuse_lone_surrogates_once_patched():
    script = textwrap.dedent("""
        from vllm import SamplingParams
        from vllm.exceptions import VLLMValidationError
        from declab.patches.lone_surrogate_strings import LoneSurrogateStringsPatch
        SamplingParams(stop=["\\ud800"], bad_words=["\\ud800"])  # vLLM alone accepts both
        assert LoneSurrogateStringsPatch.apply()
        for field in ("stop", "bad_words"):
            try:
                SamplingParams(**{field: ["fine", "x\\ud800"]})
            except VLLMValidationError as e:
                assert e.parameter == field and f"{field}[1] is not valid text" in str(e), str(e)
            else:
                raise AssertionError(field + " accepted")
        try:
            SamplingParams(extra_args={"other.key": "a\\ud800"})
        except VLLMValidationError as e:
            assert e.parameter == "extra_args" and "extra_args['other.key']" in str(e), str(e)
        else:
            raise AssertionError("extra_args accepted")
        SamplingParams(stop=["\\n", "é"], bad_words=["the"], extra_args={"declab": {"method": "cad"}})
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], env=child_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-2000:] + out.stderr[-4000:]
