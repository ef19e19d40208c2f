"""Declaration of GEAR (paper 36) and its plain 4-bit baseline (KIVI-like): KV-cache codecs on the attention seam
(plain data: no torch, no vLLM)."""

from declab.integrations.sdk import AttentionHook, BenchEntry, ParamSpec, PluginSpec

BITS = ParamSpec("bits", int, default=4, choices=(2, 4, 8), doc="bits per quantized key / value entry")
GPU_REASON = ("KV pages really are packed (vLLM reports the larger capacity at start-up), but on CPU every step "
              "decodes the context into a dense scratch cache before vLLM's kernel: memory is saved, time is not; a "
              "speed-up needs an attention kernel that reads the packed pages (a GPU kernel)")

SPEC = PluginSpec(
    name="gear",
    paper=36,
    status="partial",
    summary="GEAR: KV cache stored at ~4 bits in vLLM's pages, with a low-rank and a sparse-outlier correction of "
            "the quantization error, decoded on read",
    reason=GPU_REASON,
    attention=AttentionHook(policy="declab.plugins.gear.codec:make_codec",
                            check="declab.plugins.gear.codec:check_settings"),
    patches=("attention_backend",),
    benches=(BenchEntry(name="attention", module="declab.plugins.gear.bench",
                        help="attention: fidelity to full attention of GEAR / KIVI / TidalDecode / StreamingLLM "
                             "(KL, greedy agreement, perplexity, recall, KV capacity, tokens/s)"),),
    settings=(
        BITS,
        ParamSpec("rank", int, default=4, low=0, high=256,
                  doc="rank of the low-rank correction per block and head (full rank = min(block_size, head_size))"),
        ParamSpec("outlier_ratio", float, default=0.02, low=0.0, high=0.5,
                  doc="share of each token's entries kept exactly as sparse outliers (per-token values: half "
                      "largest, half smallest; per-channel keys: furthest from their channel's block mean)"),
        ParamSpec("keys", str, default="channel", choices=("channel", "token"),
                  doc="keys quantized per channel over each block's tokens (KIVI / GEAR-KIVI: keys have outlier "
                      "channels) or per token like the values"),
    ),
)

EXTRA_SPECS = (
    PluginSpec(
        name="kivi",
        paper=0,
        status="partial",
        summary="baseline: plain per-token KV quantization (KIVI-like, no corrections) on GEAR's page machinery",
        reason=GPU_REASON,
        attention=AttentionHook(policy="declab.plugins.gear.codec:make_codec"),
        patches=("attention_backend",),
        settings=(BITS,),
        baseline_of="gear",
    ),
)
