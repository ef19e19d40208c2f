"""Admission of declab request arguments when no logits plugin is selected (no router to validate them).

Why: a request's ``declab`` arguments are validated by the logits-processor router's ``validate_params`` at
admission, and the router is attached only when a logits plugin is selected. With only a proposer (or a search loop)
selected, ``{"declab.method": <the proposer's name>}`` or the name of a logits plugin was accepted and silently
ignored (HTTP 200; found by the fuzz suite, ``tests/test_fuzz.py``), where the docs promise a 400 naming the
parameter for a method that is not a per-request method or not enabled.

How: wraps ``InputProcessor._build_logits_processors_params_validator`` (vLLM builds the per-request validator once,
in the front-end, offline and on the server): the validator it returns also runs ``parse_request_args`` on the
request's ``extra_args`` (and a proposer method's own ``check_request`` with the engine's config) and raises a ``VLLMValidationError`` that is also a ``ValueError`` (HTTP 400 on the server,
a ValueError offline), the parameter named. Applied by the entry point only when no selected plugin is a logits
plugin (otherwise the router validates). Requests without declab arguments are untouched.

vLLM version: 0.32.0 (``vllm/v1/engine/input_processor.py::InputProcessor._build_logits_processors_params_validator``).

Removal plan: drop it if vLLM gains a request-validation hook that is not a logits processor (then register the
validation there), or when the router is attached whatever the selection.
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk import DeclabPatch


class DeclabArgsAdmissionPatch(DeclabPatch):
    name = "declab_args_admission"
    target = "vllm.v1.engine.input_processor:InputProcessor"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        from vllm.exceptions import VLLMValidationError

        from declab.integrations.request_args import check_proposer_request, parse_request_args

        class DeclabArgumentError(VLLMValidationError, ValueError):
            """A ValueError offline; an HTTP 400 on the OpenAI server (which maps only vLLM's client errors)."""

        original = target._build_logits_processors_params_validator

        def _build_logits_processors_params_validator(self):
            validate = original(self)

            def validate_with_declab_args(params) -> None:
                validate(params)
                if params.extra_args:
                    try:
                        request = parse_request_args(params.extra_args)
                        check_proposer_request(request, params, getattr(self, "vllm_config", None))
                    except ValueError as e:
                        raise DeclabArgumentError(str(e)) from e

            return validate_with_declab_args

        _build_logits_processors_params_validator.__wrapped__ = original
        return {"_build_logits_processors_params_validator": _build_logits_processors_params_validator}
