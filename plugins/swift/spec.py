"""Declaration of the SWIFT plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import ParamSpec, PluginSpec, ProposerBenchConfig, ProposerHook

PROPOSER_PATH = "declab.plugins.swift.SWIFTProposer"

SPEC = PluginSpec(
    name="swift",
    paper=49,
    status="partial",
    summary=("SWIFT: the target drafts for itself with intermediate attention / MLP sublayers skipped, on its own "
             "paged KV cache; the skipped set chosen on the fly (random search + Bayesian optimisation on the "
             "matchness of the text just generated), drafting stopped early on low confidence"),
    reason=(
        "lossless drafting from the target's own layers inside vLLM (kept layers read the target's paged KV cache): "
        "greedy token-identical to vanilla on all 486 fitting prompts at batch 1, 16 and 64; the on-the-fly set "
        "accepts 0.41-0.43 drafted tokens against 0.26 for a uniform set of the same size (`declab bench spec`); "
        "on this CPU a draft forward costs 0.41 of a target step for a 29M model (per-call overheads) and SWIFT is "
        "slower than vanilla; the GPU speed-up is only projected (0.90x on a Llama-2-7B shape with this model's "
        "acceptance); Llama-style decoders, one KV-cache group, no tensor/pipeline parallelism"
    ),
    settings=(
        ParamSpec("skip_ratio", float, 0.45, low=0.01, high=0.99,
                  doc="share of the 2 x num_layers sublayers skipped (the paper's default 0.45)"),
        ParamSpec("layer_set", str, "adaptive", choices=("adaptive", "uniform"),
                  doc="'adaptive': chosen on the fly (SWIFT); 'uniform': a fixed set spread evenly over the "
                      "intermediate layers (the non-adaptive baseline)"),
        ParamSpec("skip_sublayers", str, "", max_length=2000,
                  doc="a fixed set instead: comma-separated sublayer ids (2*i = layer i's attention, 2*i+1 its "
                      "MLP), e.g. one a previous search reported; overrides skip_ratio and layer_set"),
        ParamSpec("context_window", int, 32, low=2, high=512,
                  doc="last committed tokens a candidate set is scored on (matchness)"),
        ParamSpec("search_rows", int, 4, low=1, high=256, doc="requests whose windows score one candidate"),
        ParamSpec("max_search_iters", int, 1000, low=0, high=100000, doc="candidates scored at most"),
        ParamSpec("search_patience", int, 300, low=1, high=100000,
                  doc="stop the search after this many candidates without a better one"),
        ParamSpec("target_score", float, 0.95, low=0.0, high=1.0, doc="stop the search at this matchness"),
        ParamSpec("bayes_interval", int, 25, low=1, high=10000,
                  doc="every n-th candidate is proposed by Bayesian optimisation, the others at random"),
        ParamSpec("stop_threshold", float, 0.8, low=0.0, high=1.0,
                  doc="stop drafting a request after a token whose draft probability is below this (0: never)"),
        ParamSpec("seed", int, 0, low=0, high=2**31 - 1, doc="seed of the random search"),
    ),
    proposer=ProposerHook(
        proposer=PROPOSER_PATH,
        max_speculative_tokens=32,
        num_speculative_tokens=8,
        bench_configs={
            "swift": ProposerBenchConfig(color="#9467bd"),
            "swift_uniform": ProposerBenchConfig(settings={"layer_set": "uniform"}, color="#c5b0d5"),
        },
    ),
    patches=("cpu_expand_kernel",),
)
