"""Declaration of the CAD plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import BenchEntry, ParamSpec, PluginSpec
from declab.plugins.shared.contrastive_args import CONTRAST_PROMPT_PARAM, contrastive_hook

SPEC = PluginSpec(
    name="cad",
    paper=53,
    status="working",
    summary=(
        "Context-aware decoding: each token from softmax[(1+alpha)*logit(y|context,x) - alpha*logit(y|x)], the main "
        "prompt (with the context) contrasted with a companion row on contrast_prompt (without it), in the same batch"
    ),
    logits=contrastive_hook(row_processor="declab.plugins.cad.core:CADProcessor"),
    params=(
        CONTRAST_PROMPT_PARAM,
        ParamSpec(
            "alpha",
            float,
            default=0.5,
            low=0.0,
            high=10.0,
            doc="contrast strength: (1+alpha)*logit(with context) - alpha*logit(without); 0 = plain decoding of the "
            "main prompt; the paper uses 0.5 for summarization and 1.0 for knowledge conflicts",
        ),
    ),
    # The contrastive family's benchmark (CAD / LQCD / M3ID faithfulness; CAD's cost), declared once, here.
    benches=(
        BenchEntry(name="contrastive", module="declab.plugins.cad.bench",
                   help="contrastive decoding (CAD / LQCD / M3ID): faithfulness vs alpha, cost at batch 16"),
    ),
)
