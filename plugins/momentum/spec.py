"""Declaration of the Momentum Decoding plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import BenchEntry, LogitsHook, ParamSpec, PluginSpec

SPEC = PluginSpec(
    name="momentum",
    paper=15,
    status="working",
    summary="Momentum decoding: greedy over the top-k by p(v) - alpha*R(depth of the loop v closes in the token graph)",
    logits=LogitsHook(row_processor="declab.plugins.momentum.core:MomentumProcessor"),
    benches=(
        BenchEntry(name="degeneration", module="declab.plugins.momentum.bench",
                   help="degeneration: greedy / nucleus / momentum / contrastive search (repetition, likelihood, "
                        "speed)"),
    ),
    params=(
        ParamSpec(
            "top_k",
            int,
            default=5,
            low=1,
            high=2048,
            doc="size of the candidate pool (the k most likely tokens); reference beam_width=5",
        ),
        ParamSpec(
            "alpha",
            float,
            default=0.2,
            low=0.0,
            high=10.0,
            doc="resistance scale: score = p - alpha * R(depth); 0 = plain greedy; reference 0.2",
        ),
        ParamSpec(
            "max_ngram",
            int,
            default=5,
            low=1,
            high=16,
            doc="longest loop (n-gram) measured for the resistance; reference max_length=5",
        ),
        ParamSpec(
            "resistance",
            str,
            default="ours",
            choices=("ours", "linear", "constant", "log", "exp"),
            doc="resistance function R(d): ours R(1..5)=1,3,4,5,5; linear d; constant 2; log log6(1+d)/0.2; "
            "exp 1.5^d/2 (R(0)=0)",
        ),
    ),
)
