"""vLLM sampling options a per-request method cannot honour, refused at admission (plain data, no vLLM import).

vLLM applies some ``SamplingParams`` options to the logits row *before* the router's processors run (in
``vllm.v1.sample.sampler.Sampler.apply_logits_processors``: the ``allowed_token_ids`` mask, ``bad_words``, then the
built-in ``min_tokens`` and ``logit_bias`` processors), some *after* (penalties, temperature, top-k/p), and a
structured output (``structured_outputs``, ``response_format``) both before (its token bitmask, in the model runner)
and after (its grammar must accept the sampled token, or the engine terminates the request). A method that chooses
or masks tokens itself may contradict them; it declares the options it cannot combine with
(``LogitsHook.refused_options``, or a request group's own list) and such a request is a ``ValueError`` naming the
option (HTTP 400) instead of a silently wrong answer or a failed request.
"""

from __future__ import annotations

from typing import Any, Iterable

# The value of each option that means "not used" (a request that leaves it there is accepted).
NEUTRAL = {
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "min_tokens": 0,
    "logit_bias": None,
    "allowed_token_ids": None,
    "bad_words": None,
    "prompt_logprobs": None,
    "structured_outputs": None,
}


def refuse_sampling_options(sampling_params: Any, method: str, options: Iterable[str], reason: str = "") -> None:
    """``ValueError`` naming the first of ``options`` the request uses (a value other than its ``NEUTRAL`` one)."""
    for name in options:
        neutral = NEUTRAL[name]
        value = getattr(sampling_params, name, neutral)
        if value is not None and value != neutral and not (neutral is None and not value):
            shown = "response_format / structured_outputs" if name == "structured_outputs" else name
            got = repr(value) if len(repr(value)) <= 120 else repr(value)[:117] + "..."
            raise ValueError(f"{shown} is not supported together with declab.method={method!r} (got {got})"
                             + (f": {reason}" if reason else ""))
