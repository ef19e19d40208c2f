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
        "verified in one target forward on vLLM's CPU backend: greedy requests token-identical to vanilla on all "
        "485 fitting prompts in batches of 16 and one at a time, sampled requests by recursive rejection "
        "sampling without replacement (2,000 samples at temperature 1 and at 0.7 / top-p 0.9 pass a two-sample "
        "test, a biased verifier fails it); 1.46x (greedy) and 1.33x (temperature 1) the tokens per target forward "
        "of vLLM's best draft_model chain at batch 16; CPU only (the tree seam patches vLLM's CPU attention)"
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
