"""Declaration of the ASAp grammar-aligned decoding plugin (paper 65) and, as ``EXTRA_SPECS``, of its baseline
``gcd`` (``gcd_spec.py``). Plain data: imports only ``declab.integrations``; ``validate_request`` imports xgrammar
lazily, on first use."""

from __future__ import annotations

from declab.integrations.sdk import BenchEntry, LogitsHook, ParamSpec, PluginSpec
from declab.plugins.asap.gcd_spec import GRAMMAR_PARAMS, GRAMMAR_REFUSED_OPTIONS, GRAMMAR_REFUSED_REASON
from declab.plugins.asap.gcd_spec import SPEC as GCD_SPEC
from declab.plugins.asap.gcd_spec import validate_request

__all__ = ["SPEC", "EXTRA_SPECS", "validate_request"]

SPEC = PluginSpec(
    name="asap",
    paper=65,
    status="working",
    summary=(
        "Grammar-aligned decoding (ASAp): grammar mask times an over-approximation of each prefix's expected "
        "future grammaticality, learned in a trie shared by the requests with the same prompt and grammar; "
        "the sampling distribution converges to the LLM's distribution conditioned on the grammar."
    ),
    reason=(
        "EBNF, JSON Schema and regex; exact at temperature 1 (KL to the grammar-conditioned distribution falls with "
        "N, measured against plain GCD by `declab bench grammar`, with the JSON-Schema-Test-Suite benchmark of "
        "paper 35); not reproduced: the paper's SyGuS and constituency-parsing tasks; tries live in one engine "
        "process (not shared across data-parallel engines)"
    ),
    params=GRAMMAR_PARAMS
    + (
        ParamSpec(
            "namespace",
            str,
            default="",
            max_length=200,
            doc="Extra trie key: requests share (and improve) one trie when prompt, grammar and namespace match; "
            "a new namespace starts from an empty trie (independent runs).",
        ),
    ),
    # Besides gcd's: min_tokens and logit_bias change the row before ASAp reads it, and what it learns from that row
    # goes into the trie shared by every request with the same prompt and grammar (which may not use them).
    logits=LogitsHook(row_processor="declab.plugins.asap.core:AsapProcessor",
                      validate="declab.plugins.asap.spec:validate_request",
                      refused_options=GRAMMAR_REFUSED_OPTIONS + ("min_tokens", "logit_bias"),
                      refused_reason=GRAMMAR_REFUSED_REASON + " (min_tokens and logit_bias would bias ASAp's trie, "
                                     "which requests with the same prompt and grammar share)"),
    benches=(
        BenchEntry(name="grammar", module="declab.plugins.asap.bench", paper=35,
                   help="ASAp vs GCD exactness; JSON-Schema-Test-Suite over vLLM's backends and gcd / asap "
                        "(JSONSchemaBench); trie budget"),
    ),
)

# Further specs this plugin folder declares (the registry reads one module per folder).
EXTRA_SPECS = (GCD_SPEC,)
