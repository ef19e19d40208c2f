"""Refuse ``stop``, ``bad_words`` and ``extra_args`` strings that are not valid text (a lone surrogate) with a 400
naming the field.

Why: JSON may carry a lone UTF-16 surrogate (``"\\ud800"``); Python decodes it into a ``str`` that cannot be encoded
as UTF-8. vLLM 0.32 accepts such a string in ``stop`` or ``bad_words``: ``bad_words`` then reaches the tokenizer
(``SamplingParams.update_from_tokenizer``), which raises ``TypeError``, and a ``stop`` string fails later; either
way the server answers HTTP 500 with an empty message. A string value of ``vllm_xargs`` / ``extra_args`` that no
validator reads (a key of another namespace) fails when the request is sent to the engine core: HTTP 500 too.
Found by the fuzz suite (``tests/test_fuzz.py``), with ``VLLM_PLUGINS=""`` too: a bug of vLLM, not of a plugin.
vLLM answers the same string as a prompt with a 400.

How: ``SamplingParams._verify_args`` (run by ``__post_init__`` on every request, offline and over HTTP) first checks
that each ``stop`` / ``bad_words`` string, and each string key or value inside ``extra_args``, encodes as UTF-8, else raises ``VLLMValidationError`` (HTTP 400; a
``ValueError`` offline is what the rest of ``_verify_args`` raises) naming the field and the position; then runs the
original. Applied whenever any declab plugin is selected (``VLLM_FIXES``): it fixes vLLM, not one plugin.

vLLM version: 0.32.0 (``vllm/sampling_params.py::SamplingParams._verify_args``).

Removal plan: drop it when vLLM validates these strings itself; check: ``tests/test_lone_surrogate_strings.py``
with the patch removed (and the fuzz suite's HTTP runs).
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk import DeclabPatch

CHECKED_FIELDS = ("stop", "bad_words")


# declab's own arguments are validated by their declarations, which name the parameter the user wrote.
OWN_NAMESPACE = "declab"


def invalid_extra_args(value: Any, where: str = "extra_args") -> str | None:
    """Why a string somewhere in ``extra_args`` (keys included; not declab's own arguments) is not valid text."""
    if where == "extra_args" and isinstance(value, dict):
        value = {k: v for k, v in value.items()
                 if not (k == OWN_NAMESPACE or (isinstance(k, str) and k.startswith(OWN_NAMESPACE + ".")))}
    if isinstance(value, str):
        return invalid_text(where, value)
    if isinstance(value, dict):
        for key, item in value.items():
            reason = invalid_text(f"{where} key", key) if isinstance(key, str) else None
            reason = reason or invalid_extra_args(item, f"{where}[{key!r}]")
            if reason:
                return reason
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            reason = invalid_extra_args(item, f"{where}[{i}]")
            if reason:
                return reason
    return None


def invalid_text(field: str, value: Any) -> str | None:
    """Why ``value`` (a string or list of strings) of ``field`` is not valid text, or None."""
    for i, text in enumerate([value] if isinstance(value, str) else list(value or ())):
        if not isinstance(text, str):
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            where = field if isinstance(value, str) else f"{field}[{i}]"
            return f"{where} is not valid text: {e.reason} at position {e.start}"
    return None


class LoneSurrogateStringsPatch(DeclabPatch):
    name = "lone_surrogate_strings"
    target = "vllm.sampling_params:SamplingParams"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        from vllm.exceptions import VLLMValidationError

        original = target._verify_args

        def _verify_args(self) -> None:
            for field in CHECKED_FIELDS:
                reason = invalid_text(field, getattr(self, field))
                if reason is not None:
                    raise VLLMValidationError(reason, parameter=field)
            reason = invalid_extra_args(self.extra_args)
            if reason is not None:
                raise VLLMValidationError(reason, parameter="extra_args")
            return original(self)

        _verify_args.__wrapped__ = original
        return {"_verify_args": _verify_args}
