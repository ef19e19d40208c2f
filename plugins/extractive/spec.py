"""Declaration of the exact-extract plugin (paper 55). Plain data: imports only ``declab.integrations``."""

from declab.integrations.sdk import LogitsHook, ParamSpec, PluginSpec

SPEC = PluginSpec(
    name="extractive",
    paper=55,
    status="partial",
    summary=(
        "Extractive QA decoding: the answer is forced to be a contiguous span of the passage's tokens "
        "(greedy: span-constrained decoding through a suffix automaton; exact: exact-extract, the single most "
        "probable span by best-first branch-and-bound)."
    ),
    reason=(
        "greedy mode is a per-request logits processor (offline and HTTP); exact mode (the most probable span) is a "
        "search loop over engine requests reached from Python (declab.plugins.extractive.search), not yet over HTTP"
    ),
    params=(
        ParamSpec(
            "passage",
            str,
            max_length=20000,
            doc="The passage (context) whose token spans are the only allowed answers; tokenized with the served "
            "model's tokenizer (plus leading-space variants of its first word and line starts).",
        ),
        ParamSpec(
            "mode",
            str,
            default="greedy",
            choices=("greedy", "exact"),
            doc="greedy: decode under the span constraint; exact: search the most probable span (exact-extract).",
        ),
        ParamSpec(
            "max_span_tokens",
            int,
            default=32,
            low=1,
            high=512,
            doc="Longest answer span, in tokens; EOS is forced once it is reached.",
        ),
        ParamSpec(
            "stop",
            str,
            default="\n",
            max_length=16,
            doc="Its first token may also end the span (use with SamplingParams(stop=[...])); '' = EOS only.",
        ),
    ),
    # A structured output masks the row before the span constraint and must accept the token after it: where they
    # disagree the engine terminated the request (HTTP 500). allowed_token_ids / bad_words mask the row before it too:
    # where they leave no span token, the span constraint forces EOS (an empty answer), and a forced EOS overrides
    # min_tokens (all three found by the fuzz suite: 200 with tokens outside allowed_token_ids or fewer than
    # min_tokens).
    logits=LogitsHook(row_processor="declab.plugins.extractive.core:ExtractiveProcessor",
                      validate="declab.plugins.extractive.spec:validate_request",
                      refused_options=("structured_outputs", "allowed_token_ids", "bad_words", "min_tokens"),
                      refused_reason="the answer is a span of the passage; a second restriction over it can leave "
                                     "no token that satisfies both, and the span ends where the passage allows"),
)


def validate_request(params, *, prefix: str = "declab") -> None:
    """Admission-time checks of a served request (HTTP 400 / ``ValueError`` naming the parameter).

    ``mode="exact"`` is the search loop ``declab.plugins.extractive.search.exact_extract`` (Python), not a per-request
    logits method: served, it would silently run the greedy span constraint, so it is refused here. A blank passage
    has no span to answer with."""
    if params.get("mode") == "exact":
        raise ValueError(f"{prefix}.mode='exact' is not served per request: the most probable span is searched by "
                         "declab.plugins.extractive.search.exact_extract from Python; use mode 'greedy' here")
    if not str(params.get("passage", "")).strip():
        raise ValueError(f"{prefix}.passage must not be empty or blank")

