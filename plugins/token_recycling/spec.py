"""Declaration of the Token Recycling plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import BenchEntry, ParamSpec, PluginSpec, ProposerBenchConfig, ProposerHook

PROPOSER_PATH = "declab.plugins.token_recycling.TokenRecyclingProposer"
CONFIG_ENV = "DECLAB_TOKEN_RECYCLING"  # deprecated: engine-wide settings as JSON; use additional_config
# Tree templates by name -> draft nodes (the templates themselves live in core.py, which imports torch).
TREE_TEMPLATES = {"paper": 80}

SPEC = PluginSpec(
    name="token_recycling",
    paper=21,
    status="partial",
    summary="Token Recycling: lossless self-speculation from an adjacency matrix of the target's recycled top-k",
    reason=(
        "the paper's whole 80-node tree is verified inside the engine (mode 'tree') on vLLM's CPU backend, for greedy "
        "and for sampled requests (temperature, top-k, top-p, seed; distribution-preserving); on GPU, and for "
        "requests with logprobs or penalties, the engine drafts the tree's main branch as a chain; on decoder-29m on "
        "CPU the tree verifies 81 tokens per step, so it commits more tokens per forward than chain and ngram but is "
        "slower than both (`declab bench spec`)"
    ),
    # Engine-wide, not per request: additional_config={"declab": {"token_recycling": {...}}} (DECLAB_TOKEN_RECYCLING,
    # JSON, still works with a deprecation warning). K is num_speculative_tokens.
    settings_env=CONFIG_ENV,
    settings=(
        ParamSpec("successors", int, 8, low=1, high=64, doc="k, successors kept per token (paper: 8)"),
        ParamSpec("mode", str, "chain", choices=("chain", "tree"),
                  doc="'chain': the tree's rank-0 branch, vLLM's verifier; 'tree': the whole tree (greedy and "
                      "sampled), CPU"),
        ParamSpec("template", str, "paper", choices=tuple(TREE_TEMPLATES),
                  doc="tree mode's static tree ('paper': 80 nodes, depth 6; num_speculative_tokens must match)"),
        ParamSpec("overlay", bool, True,
                  doc="per-request overlay: draft from the rows the request's own stream wrote, else the shared "
                      "matrix (not in the paper; false = the paper's single matrix, which concurrent streams overwrite)"),
        ParamSpec("overlay_rows", int, 4096, low=16, high=1 << 20,
                  doc="most rows one request's overlay keeps (least recently written evicted; k*4 bytes per row)"),
        ParamSpec("stop_at_unseen", bool, True,
                  doc="end a draft before a token whose row was never written (paper drafts the zero row)"),
    ),
    # The worker patches (runner-to-proposer feed; tree verification in tree mode) are opened by the SDK's
    # DeclabProposer base class when the proposer starts.
    patches=("cpu_expand_kernel",),
    benches=(
        BenchEntry(name="spec-tree", module="declab.plugins.token_recycling.bench",
                   help="Token Recycling tree vs chain with a reference verifier (transformers, batch 1, greedy)"),
    ),
    proposer=ProposerHook(
        proposer=PROPOSER_PATH,
        max_speculative_tokens=16,
        num_speculative_tokens=6,
        bench_alias="tr",  # declab bench spec --tr-config JSON / --tr-k K (deprecated: --settings, --proposer-k)
        bench_configs={
            # The tree's rank-0 branch, K = the K the ngram sweep picked.
            "token_recycling_chain": ProposerBenchConfig(color="#ff7f0e"),
            # The paper's whole tree (80 draft nodes); its batch-16 phase verifies 1,296 tokens per step on CPU.
            "token_recycling_tree": ProposerBenchConfig(settings={"mode": "tree"},
                                                        num_speculative_tokens=TREE_TEMPLATES["paper"],
                                                        timeout_factor=3.0, color="#9467bd"),
        },
    ),
)
