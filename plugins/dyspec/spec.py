"""Declaration of the DySpec plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import ParamSpec, PluginSpec, ProposerBenchConfig, ProposerHook
from declab.integrations.sdk.draft_settings import DRAFT_MODEL_PARAM, greedy_draft_temperature_param

PROPOSER_PATH = "declab.plugins.dyspec.DySpecProposer"
TREE_NODES = 48  # num_speculative_tokens of the bench configuration: the node budget

SPEC = PluginSpec(
    name="dyspec",
    paper=31,
    status="partial",
    summary="DySpec: a draft-model tree grown greedily by cumulative draft probability under a node budget",
    reason=(
        "the dynamic tree is grown by the draft model inside vLLM (a few nodes per batched draft forward) and "
        "verified in one target forward on vLLM's CPU backend: greedy requests token-identical to vanilla, sampled "
        "requests by recursive rejection sampling without replacement (the seam's sampling verifier; 2,000 samples "
        "at temperature 1 pass a two-sample test, a biased verifier fails it); CPU only; not yet run over every "
        "fitting prompt nor at temperature 1 in the bench"
    ),
    settings=(
        DRAFT_MODEL_PARAM,
        greedy_draft_temperature_param(0.0),
        ParamSpec("per_round", int, 8, low=1, high=128,
                  doc="nodes added per batched draft forward (1: the paper's exact greedy, one forward per node)"),
        ParamSpec("max_depth", int, 12, low=1, high=64, doc="deepest draft node"),
    ),
    patches=("cpu_expand_kernel",),
    proposer=ProposerHook(
        proposer=PROPOSER_PATH,
        max_speculative_tokens=128,
        num_speculative_tokens=TREE_NODES,
        bench_configs={
            "dyspec": ProposerBenchConfig(num_speculative_tokens=TREE_NODES, timeout_factor=3.0, color="#7f7f7f"),
        },
    ),
)
