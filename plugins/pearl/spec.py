"""Declaration of the PEARL plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import ParamSpec, PluginSpec, ProposerBenchConfig, ProposerHook
from declab.integrations.sdk.draft_settings import DRAFT_MODEL_PARAM

PROPOSER_PATH = "declab.plugins.pearl.PearlProposer"

SPEC = PluginSpec(
    name="pearl",
    paper=12,
    status="partial",
    summary="PEARL: draft-model speculation with pre-verify / post-verify windows (adaptive draft length)",
    reason=(
        "the pre-verify / post-verify schedule runs inside vLLM with a draft model of the proposer's own (lossless, "
        "adaptive length measured); vLLM runs the drafter after the target in one process, so the draft/verify "
        "overlap that makes PEARL fast is projected from measured costs (`declab bench spec`), not realised"
    ),
    settings=(
        DRAFT_MODEL_PARAM,
        ParamSpec("window", int, 4, low=1, high=16,
                  doc="gamma, tokens the draft writes per target forward (paper: the target/draft time ratio c); "
                      "must not exceed num_speculative_tokens"),
    ),
    patches=("cpu_expand_kernel",),
    proposer=ProposerHook(
        proposer=PROPOSER_PATH,
        max_speculative_tokens=16,
        num_speculative_tokens=8,
        bench_configs={"pearl": ProposerBenchConfig(num_speculative_tokens=8, color="#17becf")},
    ),
)
