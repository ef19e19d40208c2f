"""Declaration of the LQCD plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import ParamSpec, PluginSpec
from declab.plugins.shared.contrastive_args import CONTRAST_PROMPT_PARAM, contrastive_hook

SPEC = PluginSpec(
    name="lqcd",
    paper=25,
    status="working",
    summary=(
        "Leading query contrastive decoding: the main prompt is the leading query, contrast_prompt its neutral "
        "version; each token from softmax[(1+alpha)*logit(y|neutral) - alpha*logit(y|leading)], which suppresses "
        "what the leading cue adds"
    ),
    logits=contrastive_hook(row_processor="declab.plugins.lqcd.core:LQCDProcessor"),
    params=(
        CONTRAST_PROMPT_PARAM,
        ParamSpec(
            "alpha",
            float,
            default=0.5,
            low=0.0,
            high=10.0,
            doc="contrast strength: (1+alpha)*logit(neutral) - alpha*logit(leading); 0 = decode the neutral "
            "contrast_prompt (the paper's own default could not be confirmed)",
        ),
        ParamSpec(
            "beta",
            float,
            default=0.0,
            low=0.0,
            high=1.0,
            doc="optional adaptive plausibility constraint (VCD): keep only tokens with p(y|neutral) >= "
            "beta * max p(.|neutral); 0 = off (not confirmed to be part of LQCD)",
        ),
    ),
)
