"""Declaration of TidalDecode (paper 54) and the StreamingLLM baseline: token selectors on the attention seam
(plain data: no torch, no vLLM)."""

from declab.integrations.sdk import AttentionHook, ParamSpec, PluginSpec

BUDGET = ParamSpec("budget", int, default=64, low=1, high=1 << 20,
                   doc="positions each decode token attends to per KV head in the sparse layers")
GPU_REASON = ("decode tokens really attend to the selected positions only, but on CPU vLLM's dense kernel runs "
              "first and the sparse rows are recomputed after it (more work, not less); a speed-up needs a kernel "
              "that gathers the selected positions (a GPU kernel)")

SPEC = PluginSpec(
    name="tidaldecode",
    paper=54,
    status="partial",
    summary="TidalDecode: full attention + top-k selection in a few layers, sparse attention over the selected "
            "positions in the others (position-persistent), re-selection in a middle layer",
    reason=GPU_REASON,
    attention=AttentionHook(policy="declab.plugins.tidaldecode.selectors:make_tidaldecode",
                            check="declab.plugins.tidaldecode.selectors:check_tidaldecode"),
    patches=("attention_backend",),
    settings=(
        BUDGET,
        ParamSpec("selection_layers", str, default="1,4", max_length=200,
                  doc="comma-separated layers that attend fully and choose the top-k positions (the first selects, "
                      "later ones re-select); layers before the first attend fully"),
    ),
)

EXTRA_SPECS = (
    PluginSpec(
        name="streamingllm",
        paper=0,
        status="partial",
        summary="baseline: StreamingLLM attention sinks + recent window at the same token budget, every layer",
        reason=GPU_REASON,
        attention=AttentionHook(policy="declab.plugins.tidaldecode.selectors:make_streaming",
                                check="declab.plugins.tidaldecode.selectors:check_streaming"),
        patches=("attention_backend",),
        settings=(BUDGET, ParamSpec("sinks", int, default=4, low=0, high=1 << 20,
                                    doc="first positions always attended (attention sinks)")),
        baseline_of="tidaldecode",
    ),
)
