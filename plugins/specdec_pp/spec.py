"""Declaration of the SpecDec++ plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import ParamSpec, PluginSpec, ProposerBenchConfig, ProposerHook
from declab.integrations.sdk.draft_settings import DRAFT_MODEL_PARAM

PROPOSER_PATH = "declab.plugins.specdec_pp.SpecDecPPProposer"

SPEC = PluginSpec(
    name="specdec_pp",
    paper=47,
    status="working",
    summary="SpecDec++: draft-model speculation that stops drafting when a trained head predicts a rejection",
    reason=(
        "the acceptance head (trained by plugins/specdec_pp/train_head.py on draft-5m's hidden states) stops each "
        "request's draft inside vLLM once P(some drafted token is rejected) > threshold; lossless (vLLM verifies)"
    ),
    settings=(
        DRAFT_MODEL_PARAM,
        ParamSpec("threshold", float, 0.7, low=0.0, high=1.0,
                  doc="h: stop drafting once 1 - prod(p_accept) of the tokens drafted so far exceeds it (paper 0.7)"),
        ParamSpec("head", str, "", max_length=4096,
                  doc="acceptance head file (empty: the head trained for draft-5m, shipped with the plugin)"),
    ),
    patches=("cpu_expand_kernel",),
    proposer=ProposerHook(
        proposer=PROPOSER_PATH,
        max_speculative_tokens=16,
        num_speculative_tokens=8,
        bench_configs={"specdec_pp": ProposerBenchConfig(num_speculative_tokens=8, color="#bcbd22")},
    ),
)
