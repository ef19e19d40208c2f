"""Declaration of the EAD plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import BenchEntry, ParamSpec, PluginSpec, ProposerBenchConfig, ProposerHook
from declab.integrations.sdk.draft_settings import DRAFT_MODEL_PARAM

PROPOSER_PATH = "declab.plugins.ead.EADProposer"
MAX_THRESHOLD = 100.0  # nats; any threshold above ln(vocabulary) never hands over (decoder-29m: ln 8192 = 9.0)

SPEC = PluginSpec(
    name="ead",
    paper=10,
    status="partial",
    summary=("Entropy Adaptive Decoding: the draft model writes while the rolling entropy of the active model's "
             "next-token distributions stays below a threshold, decoder-29m writes while it is above (lossy)"),
    reason=(
        "lossy by design: selecting EAD replaces vLLM's rejection sampler by one that accepts every draft token "
        "(patch ead_accepts_drafts), for every request of that engine; the switch, the per-request threshold and "
        "the quality-vs-target-share curve (`declab bench ead`) are built; greedy drafts only (the paper samples "
        "from whichever model is active), and the target still runs one forward per step over the accepted draft "
        "tokens (vLLM's verification step), so the target share counts target-written tokens, not saved compute"
    ),
    params=(
        ParamSpec("entropy_threshold", float, None, low=0.0, high=MAX_THRESHOLD,
                  doc="this request's threshold h in nats (default: the engine-wide ead.threshold); 0 = plain "
                      "target greedy decoding; any h above ln(vocabulary) = the draft writes every token it can"),
    ),
    settings=(
        DRAFT_MODEL_PARAM,
        ParamSpec("threshold", float, 1.5, low=0.0, high=MAX_THRESHOLD,
                  doc="engine-wide default of h: hand over to the target while the rolling entropy is >= h nats"),
        ParamSpec("window", int, 4, low=1, high=64,
                  doc="w, next-token entropies (of whichever model wrote them) in the rolling mean"),
    ),
    patches=("cpu_expand_kernel",),
    worker_patches=("ead_accepts_drafts",),
    proposer=ProposerHook(
        proposer=PROPOSER_PATH,
        max_speculative_tokens=16,
        num_speculative_tokens=8,
        # In `declab bench spec` at the default threshold for its tokens per target forward and draft cost next to
        # the lossless proposers (its token-identical share shows what it changes); `declab bench ead` measures
        # quality against the target share.
        bench_configs={"ead": ProposerBenchConfig(num_speculative_tokens=8, color="#7f7f7f")},
    ),
    benches=(
        BenchEntry(name="ead", module="declab.plugins.ead.bench", paper=None,
                   help="EAD: target share vs quality (agreement with greedy, answer accuracy, rep-n) per threshold"),
    ),
)
