"""Plain data shared by the contrastive plugins (CAD, LQCD, M3ID, CFG): their common parameter and their logits hook.
No torch, no vLLM import (plugin specs read it); the torch side is ``declab.plugins.shared.contrastive``.

A contrastive method decodes ``contrast_prompt`` as a companion row in lockstep with the request (the SDK's
request-group seam does the scheduling, the admission-time tokenization and the sampling-option checks).
"""

from __future__ import annotations

from declab.integrations.sdk import LogitsHook, ParamSpec

CONTRAST_PROMPT_PARAM = ParamSpec(
    "contrast_prompt",
    str,
    max_length=1_000_000,
    doc="prompt of the companion row (without the context / neutral query / without the image), raw text used "
    "verbatim as a completion prompt (for chat requests: the contrast conversation already rendered with the chat "
    "template); its token count must leave room for max_tokens within max_model_len",
)


def contrastive_hook(row_processor: str, companion: ParamSpec = CONTRAST_PROMPT_PARAM,
                     empty_companion: str = "refuse") -> LogitsHook:
    """The logits hook of a contrastive method: ``companion`` (``contrast_prompt`` unless the method names it
    otherwise, e.g. CFG's ``negative_prompt``) is its one companion row; ``empty_companion`` is
    ``LogitsHook.empty_companion``."""
    return LogitsHook(row_processor=row_processor, companions=(companion.name,), empty_companion=empty_companion)
