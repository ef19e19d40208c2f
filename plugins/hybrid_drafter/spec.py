"""Declaration of the hybrid drafter (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import ParamSpec, PluginSpec, ProposerBenchConfig, ProposerHook

PROPOSER_PATH = "declab.plugins.hybrid_drafter.HybridProposer"

SPEC = PluginSpec(
    name="hybrid_drafter",
    paper=0,  # not in the reading list: issue 16's hybrid of prompt lookup and recycled successors
    status="working",
    summary=("Hybrid self-speculation: the longest earlier match of the request's own suffix drafts first (prompt "
             "lookup), recycled successors of the target's top-k (shared matrix + per-request overlay) otherwise"),
    settings=(
        ParamSpec("min_ngram", int, 2, low=1, high=16,
                  doc="shortest suffix of the request's tokens that may match earlier in its context"),
        ParamSpec("max_ngram", int, 4, low=1, high=16, doc="longest suffix tried first (>= min_ngram)"),
        ParamSpec("extend", bool, True,
                  doc="a context match shorter than K is continued by recycled successors from its last token"),
        ParamSpec("successors", int, 8, low=1, high=64, doc="k, recycled successors kept per token"),
        ParamSpec("overlay", bool, True, doc="per-request overlay of recycled successors, read before the shared matrix"),
        ParamSpec("overlay_rows", int, 4096, low=16, high=1 << 20, doc="most rows one request's overlay keeps"),
        ParamSpec("stop_at_unseen", bool, True, doc="end a recycled chain before a token whose row was never written"),
        ParamSpec("hindsight", bool, False,
                  doc="bench diagnostic: also draft each source alone every step and count, in greedy hindsight, "
                      "the tokens each would have had accepted (stats hindsight_*); costs a second chain read"),
    ),
    proposer=ProposerHook(
        proposer=PROPOSER_PATH,
        max_speculative_tokens=16,
        num_speculative_tokens=6,
        bench_configs={"hybrid": ProposerBenchConfig(color="#2ca02c")},
    ),
    patches=("cpu_expand_kernel",),
)
