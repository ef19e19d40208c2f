"""Declaration of plain grammar-constrained decoding (GCD), the baseline that ASAp (paper 65) corrects, and of the
grammar parameters both plugins take. Plain data: imports only ``declab.integrations``; ``validate_request`` imports
xgrammar lazily, on first use."""

from __future__ import annotations

from typing import Any, Mapping

from declab.integrations.sdk import LogitsHook, ParamSpec, PluginSpec

MAX_GRAMMAR_CHARS = 200_000

# Exactly one of these must be given; the cross-field check and the grammar's syntax are ``validate_request``'s job.
GRAMMAR_PARAMS = (
    ParamSpec(
        "grammar",
        str,
        default=None,
        max_length=MAX_GRAMMAR_CHARS,
        doc="EBNF grammar in xgrammar's GBNF dialect, start rule `root` (e.g. 'root ::= (\"0\" | \"1\")+'). "
        "Give exactly one of grammar, json_schema, regex.",
    ),
    ParamSpec(
        "json_schema",
        str,
        default=None,
        max_length=MAX_GRAMMAR_CHARS,
        doc="JSON Schema (as a JSON string) the output must satisfy (xgrammar, any whitespace, strict mode).",
    ),
    ParamSpec(
        "regex",
        str,
        default=None,
        max_length=MAX_GRAMMAR_CHARS,
        doc="Regular expression the whole output must match (xgrammar's regex dialect).",
    ),
)


# vLLM options that constrain tokens besides the grammar. vLLM masks allowed_token_ids / bad_words before the router
# runs and a structured output both masks before and checks the sampled token after it; where no token satisfies
# both constraints, one of them had to be broken (the grammar processor used to win: a 200 with tokens outside
# allowed_token_ids, or a request terminated by the structured-output grammar, an HTTP 500). min_tokens composes
# for gcd (vLLM bans EOS before the grammar mask applies; a grammar that must end earlier still ends: README).
GRAMMAR_REFUSED_OPTIONS = ("structured_outputs", "allowed_token_ids", "bad_words")
GRAMMAR_REFUSED_REASON = ("the grammar decides which tokens may come next, and a second token constraint can leave "
                          "none that satisfies both; put the restriction into the grammar")


def validate_request(params: Mapping[str, Any], *, prefix: str = "declab") -> None:
    """Admission-time check (front-end): exactly one grammar parameter is given, and it parses.

    Raises ``ValueError("declab.<param>: <message>")``. Parsing needs no tokenizer and is cached by text.
    """
    from declab.plugins.asap.core import validate_grammar_params

    validate_grammar_params(params, prefix=prefix)


SPEC = PluginSpec(
    name="gcd",
    paper=0,  # not a reading-list paper: the baseline of asap (baseline_of)
    status="working",
    summary=(
        "Grammar-constrained decoding: tokens the grammar (EBNF, JSON Schema or regex, via xgrammar) forbids are "
        "masked, EOS only where the grammar may end; grammatical but distorted (the baseline of asap)."
    ),
    params=GRAMMAR_PARAMS,
    logits=LogitsHook(row_processor="declab.plugins.asap.core:GcdProcessor",
                      validate="declab.plugins.asap.gcd_spec:validate_request",
                      refused_options=GRAMMAR_REFUSED_OPTIONS, refused_reason=GRAMMAR_REFUSED_REASON),
    baseline_of="asap",
)
