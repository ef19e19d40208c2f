"""Declaration of the ADED plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import ParamSpec, PluginSpec, ProposerBenchConfig, ProposerHook

PROPOSER_PATH = "declab.plugins.aded.AdedProposer"
TREE_NODES = 24  # tree mode's draft nodes (num_speculative_tokens)

SPEC = PluginSpec(
    name="aded",
    paper=8,
    status="partial",
    summary=("ADED: lossless self-speculation from an adaptive tri-gram table of the model's own outputs, drafts "
             "built by a Monte-Carlo tree search over it (chain, or the search tree on the tree seam)"),
    reason=(
        "no corpus to initialise the tri-gram representation from (each request's prompt is observed instead), "
        "and the decay, row size and bigram back-off are ours where the paper leaves them open; the search tree "
        "is verified inside the engine on vLLM's CPU backend (mode 'tree'; sampled requests by the tree seam's "
        "sampling verifier, point-mass rule), requests with logprobs or penalties get its most-visited chain; measured in `declab bench spec` next to ngram and Token Recycling"
    ),
    settings=(
        ParamSpec("mode", str, "chain", choices=("chain", "tree"),
                  doc="'chain': the most-visited path, vLLM's verifier; 'tree': the most-visited nodes, greedy, CPU"),
        ParamSpec("iterations", int, 48, low=1, high=4096, doc="simulations of the draft search per request and step"),
        ParamSpec("branch", int, 4, low=1, high=16, doc="successors a node is expanded with"),
        ParamSpec("c_puct", float, 1.0, low=0.0, high=100.0, doc="exploration weight of the PUCT selection rule"),
        ParamSpec("decay", float, 0.9, low=0.0, high=1.0,
                  doc="a context's successor weights are multiplied by this before each update (1 = plain counts)"),
        ParamSpec("row_size", int, 8, low=1, high=64, doc="successors a tri-gram context keeps (heaviest first)"),
        ParamSpec("max_rows", int, 1 << 18, low=16, high=1 << 24,
                  doc="contexts the table keeps (least recently updated dropped)"),
        ParamSpec("observe_prompt", bool, True,
                  doc="observe each request's prompt when it starts (stands in for the paper's corpus)"),
    ),
    proposer=ProposerHook(
        proposer=PROPOSER_PATH,
        max_speculative_tokens=64,
        num_speculative_tokens=6,
        bench_configs={
            "aded": ProposerBenchConfig(color="#8c564b"),
            "aded_tree": ProposerBenchConfig(settings={"mode": "tree"}, num_speculative_tokens=TREE_NODES,
                                             timeout_factor=2.0, color="#e377c2"),
        },
    ),
    patches=("cpu_expand_kernel",),
)
