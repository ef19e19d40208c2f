"""Declaration of the M3ID plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import ParamSpec, PluginSpec
from declab.plugins.shared.contrastive_args import CONTRAST_PROMPT_PARAM, contrastive_hook

SPEC = PluginSpec(
    name="m3id",
    paper=1,
    status="partial",
    summary=(
        "Multi-modal mutual-information decoding: conditioned logits amplified against an unconditioned companion "
        "row (contrast_prompt) by l_c + 1[max p_c < threshold]*(exp(lam*t)-1)*(l_c - l_u), a weight that grows as "
        "decoding goes on"
    ),
    reason=(
        "text conditioning only (the main prompt carries a conditioning prefix, contrast_prompt omits it); the "
        "image path is unverified: no multimodal fixture model here, and the companion row is a text prompt"
    ),
    logits=contrastive_hook(row_processor="declab.plugins.m3id.core:M3IDProcessor"),
    params=(
        CONTRAST_PROMPT_PARAM,
        ParamSpec(
            "lam",
            float,
            default=0.02,
            low=0.0,
            high=1.0,
            doc="forgetting rate lambda: weight exp(lam*t)-1 at the t-th generated token (t from 1); 0 = plain "
            "decoding; paper default 0.02",
        ),
        ParamSpec(
            "threshold",
            float,
            default=0.3,
            low=0.0,
            high=1.0,
            doc="confidence threshold (the paper's alpha): the contrast applies only at steps where the conditioned "
            "model's top probability is below it; 0 = never, 1 = (almost) always; paper default 0.3",
        ),
    ),
)
