"""Declaration of the contrastive search plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import BenchEntry, ParamSpec, PluginSpec, ProposerHook

PROPOSER_PATH = "declab.plugins.contrastive_search.ContrastiveSearchProposer"
MAX_TOP_K = 16

SPEC = PluginSpec(
    name="contrastive_search",
    paper=27,
    status="partial",
    summary=("Contrastive search: each token the top-k candidate with the best (1-alpha)*p(v) - alpha*max cos(h_v, "
             "h_context), the k candidates evaluated in one forward as a depth-1 tree inside vLLM's batch"),
    reason=(
        "CPU only: the k candidates are one depth-1 tree per step, and the tree-verification seam patches vLLM's CPU "
        "attention (on GPU the engine refuses to start); token-identical to a transformers reference on 100 code and "
        "Spec-Bench prompts, alone and mixed with plain rows (`declab bench contrastive-search`); k + 1 token "
        "evaluations per output token, as HF's; the engine's speculative proposer must be contrastive search's, so "
        "it does not combine with a speculative decoder; sampling, n > 1 and logprobs are refused"
    ),
    params=(
        ParamSpec("top_k", int, 4, low=1, high=MAX_TOP_K,
                  doc="k, candidates per step (at most the engine's num_speculative_tokens); 1 = greedy"),
        ParamSpec("alpha", float, 0.6, low=0.0, high=1.0,
                  doc="degeneration penalty weight (HF's penalty_alpha); 0 = greedy"),
    ),
    worker_patches=("runner_forward_to_proposer",),
    patches=("recompute_root",),
    proposer=ProposerHook(
        proposer=PROPOSER_PATH,
        max_speculative_tokens=MAX_TOP_K,
        num_speculative_tokens=8,
        check_request="declab.plugins.contrastive_search.admission:check_request",
    ),
    benches=(
        BenchEntry(name="contrastive-search", module="declab.plugins.contrastive_search.bench",
                   help="contrastive search: token identity with the plain-transformers reference on code and "
                        "Spec-Bench prompts (batch 1 and mixed with plain rows)"),
    ),
)
