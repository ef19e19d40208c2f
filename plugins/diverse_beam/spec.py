"""Declaration of the Diverse Beam Search plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import BenchEntry, ParamSpec, PluginSpec, SearchHook

SPEC = PluginSpec(
    name="diverse_beam",
    paper=20,
    status="working",
    summary="Diverse beam search: beam_width beams in num_groups groups expanded in turn each step; a group's "
    "candidates lose diversity_penalty per earlier-group beam that picked the same token this step (Hamming)",
    search=SearchHook(
        offline="declab.plugins.diverse_beam.search:diverse_beam_search",
        http="declab.plugins.diverse_beam.search:diverse_beam_search_http",
    ),
    params=(
        ParamSpec(
            "beam_width",
            int,
            default=4,
            low=1,
            high=256,
            doc="total number of beams B (returned hypotheses); each step asks the engine for the top 2*B "
            "log-probs, so 2*B must not exceed the engine's max_logprobs (vLLM default 20)",
        ),
        ParamSpec(
            "num_groups",
            int,
            default=4,
            low=1,
            high=256,
            doc="number of groups G; must divide beam_width (B/G beams per group); G=B is the paper's most "
            "exploratory setting; G=1 with penalty 0 is vLLM's beam search",
        ),
        ParamSpec(
            "diversity_penalty",
            float,
            default=0.5,
            low=0.0,
            high=100.0,
            doc="lambda: log-prob units subtracted per beam of an earlier group that chose the same token at "
            "this step (Hamming diversity); paper range 0.2-0.8; 0 = independent beam searches",
        ),
        ParamSpec("max_tokens", int, default=16, low=1, high=1_000_000, doc="number of search steps (new tokens)"),
        ParamSpec(
            "length_penalty",
            float,
            default=1.0,
            low=-10.0,
            high=10.0,
            doc="vLLM's: score = cum_logprob / length**length_penalty, length counting the prompt",
        ),
        ParamSpec("ignore_eos", bool, default=False, doc="keep expanding through EOS instead of finishing a beam"),
    ),
    benches=(
        BenchEntry(name="diverse-beam", module="declab.plugins.diverse_beam.bench",
                   help="vLLM's beam search vs diverse beam search (groups, penalties): distinct-n, log-probs, "
                        "exact match at G=1"),
    ),
)
