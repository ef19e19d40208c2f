"""Declaration of the RSD plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import ParamSpec, PluginSpec, ProposerBenchConfig, ProposerHook
from declab.integrations.sdk.draft_settings import DRAFT_MODEL_PARAM, greedy_draft_temperature_param

PROPOSER_PATH = "declab.plugins.rsd.RSDProposer"
TREE_NODES = 48  # num_speculative_tokens of the bench configurations: the node budget of every draft tree

SPEC = PluginSpec(
    name="rsd",
    paper=38,
    status="partial",
    summary="RSD: a draft-model tree sampled without replacement (Gumbel-top-k or stochastic beam search)",
    reason=(
        "the tree (stochastic beam search by default, or Gumbel-top-k per node) is drafted by the draft model "
        "inside vLLM and verified in one target forward on vLLM's CPU backend: greedy requests token-identical to "
        "vanilla on all 485 fitting prompts in batches of 16 and one at a time, sampled requests by "
        "recursive rejection sampling without replacement (2,000 samples at temperature 1 and at 0.7 / top-p 0.9 "
        "pass a two-sample test, a biased verifier fails it); RSD-S commits 1.34x (greedy) and 1.42x (temperature "
        "1) the tokens per target forward of vLLM's best draft_model chain at batch 16; CPU only (the tree seam "
        "patches vLLM's CPU attention)"
    ),
    settings=(
        DRAFT_MODEL_PARAM,
        greedy_draft_temperature_param(0.0),
        # RSD-S by default: at the same node budget it committed more tokens per target forward than RSD-C at both
        # temperatures measured (declab bench spec, see the README).
        ParamSpec("variant", str, "beam", choices=("gumbel", "beam"),
                  doc="'beam': RSD-S, stochastic beam search (beam_width sequences per level, beam_depth levels); "
                      "'gumbel': RSD-C, Gumbel-top-k children per node (branching)"),
        ParamSpec("branching", str, "3,2,1,1,1,1,1,1", max_length=200,
                  doc="RSD-C: children per node at depth 0, 1, ... (the tree's depth is the list's length); "
                      "the tree is cut to num_speculative_tokens nodes in BFS order"),
        ParamSpec("beam_width", int, 6, low=1, high=64, doc="RSD-S: sequences kept per level"),
        ParamSpec("beam_depth", int, 8, low=1, high=32, doc="RSD-S: levels (tree depth)"),
    ),
    patches=("cpu_expand_kernel",),
    proposer=ProposerHook(
        proposer=PROPOSER_PATH,
        max_speculative_tokens=128,
        num_speculative_tokens=TREE_NODES,
        bench_configs={
            "rsd": ProposerBenchConfig(num_speculative_tokens=TREE_NODES, timeout_factor=3.0, color="#e377c2"),
            "rsd_gumbel": ProposerBenchConfig(settings={"variant": "gumbel"}, num_speculative_tokens=TREE_NODES,
                                              timeout_factor=3.0, color="#f7b6d2"),
        },
    ),
)
