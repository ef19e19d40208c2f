"""Declaration of the no-repeat n-gram example plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import LogitsHook, ParamSpec, PluginSpec

SPEC = PluginSpec(
    name="no_repeat_ngram",
    paper=0,  # not a reading-list paper: an example of the plugin SDK
    status="working",
    summary="No-repeat n-gram blocking: a token that would complete an n-gram already present in the prompt or the "
    "output is masked (HF transformers' no_repeat_ngram_size)",
    params=(
        ParamSpec("ngram_size", int, default=3, low=1, high=16,
                  doc="n: no n-gram of prompt + output may occur twice; 1 = no token repeats at all"),
    ),
    logits=LogitsHook(row_processor="declab_no_repeat_ngram.core:NoRepeatNGramProcessor"),
)
