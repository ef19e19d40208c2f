"""Declaration of the SJD plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import ParamSpec, PluginSpec, ProposerBenchConfig, ProposerHook

PROPOSER_PATH = "declab.plugins.sjd.SJDProposer"

SPEC = PluginSpec(
    name="sjd",
    paper=34,
    status="partial",
    summary=("SJD: speculative Jacobi decoding, drafts sampled from the target's own distributions of the previous "
             "Jacobi iteration, accepted by vLLM's rejection sampler with the draft probabilities (min(1, p/q))"),
    reason=(
        "the paper targets auto-regressive text-to-image models; here it runs on a text model, where a draft from "
        "the previous Jacobi iteration is rarely the target's next token (4 % accepted at the first draft position, "
        "1.05 tokens per target forward on 485 prompts, `declab bench spec`), and the paper's spatial "
        "initialisation of new positions does not apply (random tokens, as its default)"
    ),
    settings=(
        ParamSpec("init", str, "random", choices=("random", "repeat"),
                  doc="new window positions: uniform random tokens (the paper) or the last drafted token repeated"),
    ),
    proposer=ProposerHook(
        proposer=PROPOSER_PATH,
        max_speculative_tokens=16,
        num_speculative_tokens=4,
        bench_configs={"sjd": ProposerBenchConfig(color="#17becf")},
    ),
    patches=("cpu_expand_kernel",),
)
