"""Prompt-rendering seam: tokenize a request's companion prompts at admission, in the front-end.

Why: the companion rows of a request group (``LogitsHook.companions``, decoded by ``request_groups``) are created in
the engine core, which has no tokenizer, and a companion prompt that cannot fit the model must be refused at
admission (HTTP 400 naming the parameter), not fail inside the engine. vLLM's logits-processor ``validate_params``
hook sees the sampling parameters but neither the tokenizer nor ``max_model_len``.

How: wraps ``InputProcessor.process_inputs`` (offline ``LLM`` and the OpenAI server both pass through it). For a
request naming a method with companion prompts it checks the sampling options a group cannot honour, tokenizes each
companion prompt with the served tokenizer exactly like a completion prompt (special tokens added), checks it leaves
room within ``max_model_len`` (an empty one is refused, or replaced by the main prompt's last token where the
hook's ``empty_companion`` says so: classifier-free guidance without a negative prompt), caps ``max_tokens`` so that every row ends on the same step, and stores the ids in
``extra_args`` for the engine core. Other requests are returned untouched. Any plugin that declares companion
prompts is served; the seam knows no plugin.

vLLM version: 0.32.0 (``vllm/v1/engine/input_processor.py::InputProcessor.process_inputs``).

Removal plan: goes with ``request_groups`` (a native request-group API would take all prompts itself).
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk import DeclabPatch


class PromptRenderingPatch(DeclabPatch):
    name = "prompt_rendering"
    target = "vllm.v1.engine.input_processor:InputProcessor"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        original = target.process_inputs

        from vllm.exceptions import VLLMValidationError

        class CompanionPromptError(VLLMValidationError, ValueError):
            """A ValueError offline; an HTTP 400 on the OpenAI server (which maps only vLLM's client errors)."""

        def process_inputs(self, *args, **kwargs):
            request = original(self, *args, **kwargs)
            sp = request.sampling_params
            if sp is not None and sp.extra_args:
                from declab.integrations import stat_logger

                try:
                    grouped = attach_companion_prompts(self, request)
                except ValueError as e:
                    stat_logger.record_rejection(sp.extra_args, e)
                    raise CompanionPromptError(str(e)) from e
                if grouped is not None:
                    stat_logger.record_request(grouped)
            return request

        process_inputs.__wrapped__ = original
        return {"process_inputs": process_inputs}


def attach_companion_prompts(input_processor: Any, request: Any) -> str | None:
    """Tokenize the companion prompts of a request whose method has companion rows; return that method (None for
    other requests)."""
    from declab.integrations.request_args import KEY, parse_request_args
    from declab.integrations.sdk.groups import COMPANION_IDS_KEY, check_group_sampling_options, companion_prompt_ids

    sp = request.sampling_params
    parsed = parse_request_args(sp.extra_args)
    if parsed is None or not parsed.spec.logits.companions:
        return None
    check_group_sampling_options(sp, parsed.spec.name)
    max_model_len = input_processor.model_config.max_model_len
    longest = len(request.prompt_token_ids or ())
    companion_ids = {}
    for name in parsed.spec.logits.companions:
        ids = companion_prompt_ids(list(input_processor.get_tokenizer().encode(parsed.params[name])),
                                   request.prompt_token_ids, parsed.spec.logits.empty_companion)
        if not ids:
            raise ValueError(f"{KEY}.{name} must not be empty")
        if len(ids) >= max_model_len:
            raise ValueError(
                f"{KEY}.{name} is {len(ids)} tokens long; it must be shorter than max_model_len={max_model_len}"
            )
        companion_ids[name] = ids
        longest = max(longest, len(ids))
    # Every row must be able to run for the same number of steps.
    room = max_model_len - longest
    if sp.max_tokens is None or sp.max_tokens > room:
        sp.max_tokens = room
    sp.extra_args[COMPANION_IDS_KEY] = companion_ids
    return parsed.spec.name
