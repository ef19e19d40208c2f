"""Declaration of the SpecTr plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import BenchEntry, ParamSpec, PluginSpec, ProposerBenchConfig, ProposerHook
from declab.integrations.sdk.draft_settings import DRAFT_MODEL_PARAM, greedy_draft_temperature_param

PROPOSER_PATH = "declab.plugins.spectr.SpecTrProposer"
TREE_NODES = 48  # num_speculative_tokens of the bench configuration: the node budget of the k chains

SPEC = PluginSpec(
    name="spectr",
    paper=56,
    status="partial",
    summary="SpecTr: k i.i.d. draft chains from the draft model, verified together as one tree",
    reason=(
        "the k i.i.d. drafts are drawn by the draft model inside vLLM and verified together in one target forward "
        "(a tree whose root has k chains; a greedy request's chains merged into a trie) on vLLM's CPU backend: "
        "greedy requests token-identical to vanilla on all 485 fitting prompts in batches of 16 and one at a "
        "time, sampled requests by k-sequential selection (2,000 samples at temperature 1 and at 0.7 / top-p 0.9 "
        "pass a two-sample test, a biased verifier fails it); 1.28x (greedy) and 1.36x (temperature 1) "
        "the tokens per target forward of vLLM's best draft_model chain at batch 16; CPU only (the tree seam "
        "patches vLLM's CPU attention)"
    ),
    settings=(
        DRAFT_MODEL_PARAM,
        # At 0 the k draws of a greedy request would coincide (one chain). Drawn at 0.5 and merged into a trie (core),
        # 16 chains committed the most tokens per target forward of the grid tried at temperature 0 (drafts 6-24,
        # length 8-16, 0.3-1.0; 14 Spec-Bench + code prompts), and 16 x 16 did better than 6 x 8 at temperature 1 too.
        greedy_draft_temperature_param(0.5),
        ParamSpec("drafts", int, 16, low=1, high=64, doc="k, i.i.d. draft chains per step"),
        ParamSpec("length", int, 16, low=1, high=32,
                  doc="tokens per draft chain (the chains are cut to num_speculative_tokens nodes, level by level)"),
    ),
    patches=("cpu_expand_kernel",),
    proposer=ProposerHook(
        proposer=PROPOSER_PATH,
        max_speculative_tokens=128,
        num_speculative_tokens=TREE_NODES,
        bench_configs={
            "spectr": ProposerBenchConfig(num_speculative_tokens=TREE_NODES, timeout_factor=3.0, color="#8c564b"),
        },
    ),
    benches=(
        BenchEntry(name="spectr-grid", module="declab.plugins.spectr.bench",
                   help="SpecTr: tokens per target forward over its settings grid (drafts, length, draw temperature)"),
    ),
)
