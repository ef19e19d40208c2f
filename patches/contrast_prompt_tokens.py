"""Tokenize a contrastive request's ``contrast_prompt`` at admission, in the front-end.

Why: the companion row of a contrastive request (``contrastive_pairs``) is created in the engine core, which has
no tokenizer, and a contrast prompt that cannot fit the model must be refused at admission (HTTP 400 naming the
parameter), not fail inside the engine. vLLM's logits-processor ``validate_params`` hook sees the sampling
parameters but neither the tokenizer nor ``max_model_len``.

How: wraps ``InputProcessor.process_inputs`` (offline ``LLM`` and the OpenAI server both pass through it). For a
request naming a contrastive method it checks the sampling options the pair machinery cannot honour, tokenizes
``contrast_prompt`` with the served tokenizer exactly like a completion prompt (special tokens added), checks it
leaves room within ``max_model_len``, caps ``max_tokens`` so that both rows end on the same step, and stores the ids
in ``extra_args`` for the engine core. Other requests are returned untouched.

vLLM version: 0.32.0 (``vllm/v1/engine/input_processor.py::InputProcessor.process_inputs``).

Removal plan: goes with ``contrastive_pairs`` (a native request-group API would take both prompts itself).
"""

from __future__ import annotations

from typing import Any

from declab.patches import DeclabPatch


class ContrastPromptTokensPatch(DeclabPatch):
    name = "contrast_prompt_tokens"
    target = "vllm.v1.engine.input_processor:InputProcessor"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        original = target.process_inputs

        from vllm.exceptions import VLLMValidationError

        class ContrastiveRequestError(VLLMValidationError, ValueError):
            """A ValueError offline; an HTTP 400 on the OpenAI server (which maps only vLLM's client errors)."""

        def process_inputs(self, *args, **kwargs):
            request = original(self, *args, **kwargs)
            sp = request.sampling_params
            if sp is not None and sp.extra_args:
                try:
                    attach_contrast_prompt(self, request)
                except ValueError as e:
                    raise ContrastiveRequestError(str(e)) from e
            return request

        process_inputs.__wrapped__ = original
        return {"process_inputs": process_inputs}


def attach_contrast_prompt(input_processor: Any, request: Any) -> None:
    from declab.integrations.request_args import KEY, parse_request_args
    from declab.plugins.shared.contrastive_args import CONTRAST_IDS_KEY, check_sampling_options, is_contrastive

    sp = request.sampling_params
    parsed = parse_request_args(sp.extra_args)
    if parsed is None or not is_contrastive(parsed.spec):
        return
    check_sampling_options(sp, parsed.spec.name)
    text = parsed.params["contrast_prompt"]
    ids = list(input_processor.get_tokenizer().encode(text))
    max_model_len = input_processor.model_config.max_model_len
    if not ids:
        raise ValueError(f"{KEY}.contrast_prompt must not be empty")
    if len(ids) >= max_model_len:
        raise ValueError(
            f"{KEY}.contrast_prompt is {len(ids)} tokens long; it must be shorter than max_model_len={max_model_len}"
        )
    # Both rows must be able to run for the same number of steps.
    room = max_model_len - max(len(ids), len(request.prompt_token_ids or ()))
    if sp.max_tokens is None or sp.max_tokens > room:
        sp.max_tokens = room
    sp.extra_args[CONTRAST_IDS_KEY] = ids
