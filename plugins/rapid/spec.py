"""Declaration of the RAPID plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import ParamSpec, PluginSpec, ProposerBenchConfig, ProposerHook
from declab.integrations.sdk.draft_settings import DRAFT_MODEL_PARAM

PROPOSER_PATH = "declab.plugins.rapid.RapidProposer"

SPEC = PluginSpec(
    name="rapid",
    paper=58,
    status="partial",
    summary="RAPID: a draft model reading a retrieved, shortened context; the target verifies on the full prompt",
    reason=(
        "the lossless variant (draft on retrieved chunks, target verification unchanged) runs inside vLLM; retrieval "
        "is lexical over token ids (the paper uses a dense retriever); the knowledge-transfer variant is not built"
    ),
    settings=(
        DRAFT_MODEL_PARAM,
        ParamSpec("context_tokens", int, 256, low=16, high=2048,
                  doc="budget of the draft's context: retrieved chunks + the query (prompts that fit are unchanged)"),
        ParamSpec("query_tokens", int, 64, low=1, high=1024, doc="the prompt's last tokens taken as the query"),
        ParamSpec("chunk_tokens", int, 32, low=4, high=512, doc="size of the retrieval chunks, in tokens"),
        ParamSpec("keep_positions", bool, False,
                  doc="the draft reads each kept prompt token at its position in the prompt (as the target does), "
                      "not packed from 0"),
    ),
    patches=("cpu_expand_kernel",),
    proposer=ProposerHook(
        proposer=PROPOSER_PATH,
        max_speculative_tokens=16,
        num_speculative_tokens=4,
        bench_configs={"rapid": ProposerBenchConfig(num_speculative_tokens=4, color="#8c564b"),
                       # K = 2: on a CPU every drafted token costs the target a verified token; on the long prompts
                       # vLLM's draft_model is fastest at K = 1 or 2 (measurements/rapid-long-context, -long-code),
                       # so RAPID is compared with it at a K of that size too.
                       "rapid_k2": ProposerBenchConfig(num_speculative_tokens=2, color="#a0522d"),
                       "rapid_k2_positions": ProposerBenchConfig(settings={"keep_positions": True},
                                                                 num_speculative_tokens=2, color="#d2691e"),
                       # The same proposer reading the whole prompt: the full-context draft RAPID is compared with.
                       "rapid_full_context": ProposerBenchConfig(settings={"context_tokens": 2048},
                                                                 num_speculative_tokens=4, color="#c49c94")},
    ),
)
