"""Declaration of the LOL plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import BenchEntry, LogitsHook, ParamSpec, PluginSpec

SPEC = PluginSpec(
    name="lol",
    paper=29,
    status="partial",
    summary=(
        "LOL multi-layer fusion contrastive decoding: the served model's final and lower layer (early-exit logits, "
        "layer-capture seam) each contrasted with an amateur fine-tuned to hallucinate (decoder-29m + a shipped "
        "LoRA delta, run in plain torch beside vLLM), fused; mode=layers is the training-free final-vs-lower-layer "
        "contrast (DoLa-style), mode=amateur the final-layer amateur contrast alone (ICD)"
    ),
    reason=(
        "The paper's truthfulness-refocused module (contextual guidance) is not built, and its code is not "
        "published, so the lower layer and the fusion weight are this plugin's defaults, not the paper's; the "
        "amateur delta fits decoder-29m only; the layer capture needs enforce_eager and no speculative decoding"
    ),
    logits=LogitsHook(row_processor="declab.plugins.lol.core:LOLProcessor"),
    params=(
        ParamSpec("mode", str, default="lol", choices=("lol", "layers", "amateur"),
                  doc="lol = final- and lower-layer amateur contrasts fused; layers = final vs lower layer of the "
                  "served model alone (training-free, DoLa-style with a fixed lower layer); amateur = final-layer "
                  "amateur contrast alone (ICD)"),
        ParamSpec("lower_layer", int, default=4, low=1, high=1024,
                  doc="the lower layer: the residual stream after this many decoder layers, through the final norm "
                  "and lm_head (HF's hidden_states[k]); a value at or past the model's depth means its last lower "
                  "layer (depth - 1); 4 = half of decoder-29m's 8 layers"),
        ParamSpec("alpha", float, default=1.0, low=0.0, high=10.0,
                  doc="amateur contrast strength: (1+alpha)*log p_orig - alpha*log p_amateur at each layer; "
                  "0 = no amateur (modes lol / amateur)"),
        ParamSpec("lower_weight", float, default=0.5, low=0.0, high=10.0,
                  doc="weight of the lower-layer contrast added to the final-layer one (mode lol); 0 = mode amateur"),
        ParamSpec("beta", float, default=0.1, low=0.0, high=1.0,
                  doc="adaptive plausibility constraint: only tokens with p_orig(y) >= beta * max p_orig (final "
                  "layer) can be chosen; 0 = off; 0.1 as in DoLa and ICD"),
    ),
    patches=("layer_capture",),
    benches=(
        BenchEntry(name="lol", module="declab.plugins.lol.bench",
                   help="LOL: closed-book and leading-query accuracy of greedy, layer contrast, CAD, ICD and LOL"),
    ),
)
