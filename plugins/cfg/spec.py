"""Declaration of the CFG plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import ParamSpec, PluginSpec
from declab.plugins.shared.contrastive_args import contrastive_hook

NEGATIVE_PROMPT_PARAM = ParamSpec(
    "negative_prompt",
    str,
    default="",
    max_length=1_000_000,
    doc="prompt of the unconditional (negative) stream, raw text used verbatim as a completion prompt (for chat "
    "requests: the negative conversation already rendered with the chat template); empty (the default) = the "
    "stream starts from the prompt's last token alone, as HF transformers does without negative_prompt_ids; its "
    "token count must leave room for max_tokens within max_model_len",
)

SPEC = PluginSpec(
    name="cfg",
    paper=0,  # not in the reading list: classifier-free guidance, Sanchez et al. 2023 (arXiv 2306.17806)
    status="working",
    summary=(
        "Classifier-free guidance (HF transformers' guidance_scale / negative_prompt): each token from "
        "log p(y|negative) + g*(log p(y|prompt) - log p(y|negative)), the negative stream a companion row in the "
        "same batch; an empty negative_prompt starts it from the prompt's last token, as HF does"
    ),
    logits=contrastive_hook(row_processor="declab.plugins.cfg.core:CFGProcessor", companion=NEGATIVE_PROMPT_PARAM,
                            empty_companion="last_prompt_token"),
    params=(
        NEGATIVE_PROMPT_PARAM,
        ParamSpec(
            "guidance_scale",
            float,
            default=1.5,
            low=0.0,
            high=30.0,
            doc="g in uncond + g*(cond - uncond) on log-probabilities: 1 = plain decoding of the prompt, > 1 pushes "
            "away from the negative stream, 0 = decode the negative stream; default 1.5 (the paper's experiments "
            "favour moderate scales around 1.5; not checked against the PDF here); the same as CAD with "
            "alpha = g - 1 when negative_prompt is CAD's contrast_prompt",
        ),
    ),
)
