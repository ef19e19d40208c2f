"""Request groups: a request plus hidden companion rows decoded in lockstep with it (``LogitsHook.companions``).

Plain data shared by the three places of the request-group seam: admission (``declab.patches.prompt_rendering``
tokenizes each companion prompt), the scheduler (``declab.patches.request_groups`` adds the companion requests and
keeps the group aligned) and the router (``declab.integrations.router`` hands all rows to the group's
``GroupRowProcessor``). No torch, no vLLM import.
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk.sampling_options import refuse_sampling_options

# Keys of SamplingParams.extra_args written by the engine (never by users).
GROUP_KEY = "declab_group"  # {"id": main request id, "role": ROLE_MAIN | companion name, "sampling": {...}}
COMPANION_IDS_KEY = "declab_companion_prompt_ids"  # {companion name: prompt token ids}, filled at admission
ROLE_MAIN = "main"

# SamplingParams options a request group cannot honour: the engine decodes every member greedily over a one-hot
# row chosen by the group's processor, so the engine's own penalties, biases and masks would act after that choice
# (or empty the row), and a dropped step must not carry prompt logprobs.
GROUP_REFUSED_OPTIONS = (
    "presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens", "logit_bias", "allowed_token_ids",
    "bad_words", "prompt_logprobs", "structured_outputs",
)


# What an empty companion prompt means (``LogitsHook.empty_companion``).
EMPTY_COMPANION_REFUSED = "refuse"
EMPTY_COMPANION_LAST_PROMPT_TOKEN = "last_prompt_token"
EMPTY_COMPANION_RULES = (EMPTY_COMPANION_REFUSED, EMPTY_COMPANION_LAST_PROMPT_TOKEN)


def companion_prompt_ids(ids: list[int], main_prompt_ids: list[int] | None, empty_rule: str) -> list[int]:
    """The prompt of a companion row: its tokenized prompt ``ids``; when that is empty and the hook's
    ``empty_companion`` is ``"last_prompt_token"``, the main prompt's last token alone (HF transformers' unconditional
    stream for classifier-free guidance without a negative prompt). ``[]`` when the prompt stays empty (refused at
    admission)."""
    if ids:
        return list(ids)
    if empty_rule == EMPTY_COMPANION_LAST_PROMPT_TOKEN and main_prompt_ids:
        return [int(main_prompt_ids[-1])]
    return []


def check_group_sampling_options(sampling_params: Any, method: str) -> None:
    """Reject (ValueError naming the option) what a request with companion rows cannot combine with."""
    refuse_sampling_options(sampling_params, method, GROUP_REFUSED_OPTIONS)
