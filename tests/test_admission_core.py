"""Admission regressions of issue #13 that need no engine: every declab validation error names its parameter,
misspelt ``declab`` keys, empty grammars (the pure emptiness check), vLLM options a method refuses."""

from __future__ import annotations

import math

import pytest
import xgrammar as xgr

from declab.integrations import registry
from declab.integrations.request_args import parse_request_args
from declab.integrations.sdk.params import ParamSpec, resolve_params
from declab.plugins.asap.language import GrammarLanguage, language_is_empty

pytestmark = pytest.mark.core

EMPTY_GRAMMARS = {
    "left recursion only": 'root ::= root "a"',
    "mutual recursion without base case": 'root ::= "a" b\nb ::= "b" root',
    "rules that only refer to each other": "root ::= a\na ::= b\nb ::= a",
    "empty character class": "root ::= []",
    "empty class after a literal": 'root ::= "x" []',
    "negated class of every character": r"root ::= [^\0-\U0010FFFF]",
}
NON_EMPTY_GRAMMARS = {
    "bits": 'root ::= ("0" | "1")+',
    "empty string": 'root ::= ""',
    "recursion with a base case": 'root ::= "a" | root "b" root',
    "star of an empty class": "root ::= []*",
    "zero repetitions of nothing": "root ::= ([]){0,3}",
    "negated class": "root ::= [^a]",
}
# Valid values of the parameters a plugin requires, so that one bad parameter at a time is what is refused.
REQUIRED = {"passage": "Marrator is a city.", "contrast_prompt": "Answer:", "grammar": 'root ::= "a"'}


# -- empty grammars (the pure core) ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", EMPTY_GRAMMARS.values(), ids=EMPTY_GRAMMARS.keys())
def test_a_grammar_whose_language_is_empty_is_detected(text):
    assert language_is_empty(xgr.Grammar.from_ebnf(text))


@pytest.mark.parametrize("text", NON_EMPTY_GRAMMARS.values(), ids=NON_EMPTY_GRAMMARS.keys())
def test_a_grammar_with_strings_is_not_refused(text):
    assert not language_is_empty(xgr.Grammar.from_ebnf(text))


def test_json_schema_regex_and_builtin_json_grammars_are_not_empty():
    for grammar in (xgr.Grammar.from_json_schema('{"type": "object", "properties": {"a": {"type": "integer"}}}'),
                    xgr.Grammar.from_regex("[0-9]+(\\.[0-9]+)?"), xgr.Grammar.builtin_json_grammar()):
        assert not language_is_empty(grammar)


def test_an_unknown_serialisation_format_is_never_refused():
    class Future:
        def serialize_json(self):
            return '{"__VERSION__": "v99", "rules": []}'

    assert GrammarLanguage.of(Future()) is None
    assert not language_is_empty(Future())


@pytest.mark.parametrize("method", ["asap", "gcd"])
@pytest.mark.parametrize("text", EMPTY_GRAMMARS.values(), ids=EMPTY_GRAMMARS.keys())
def test_an_empty_grammar_is_refused_at_admission_naming_the_parameter(method, text):
    with pytest.raises(ValueError, match=r"^declab\.grammar: the grammar accepts no string"):
        parse_request_args({"declab": {"method": method, "grammar": text}}, selected=(method,))


# -- misspelt declab keys -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra_args,named,meant",
    [
        ({"Declab.method": "momentum"}, "Declab.method", "declab.method"),
        ({"DECLAB.METHOD": "momentum"}, "DECLAB.METHOD", "declab.method"),
        ({"DECLAB": {"method": "momentum"}}, "DECLAB", "declab"),
        ({"Declab": {"method": "momentum"}}, "Declab", "declab"),
        ({"declab.Method": "momentum"}, "declab.Method", "declab.method"),
        ({"declab": {"Method": "momentum"}}, "declab.Method", "declab.method"),
        ({"declab.method": "momentum", "declab.Alpha": 0.3}, "declab.Alpha", "declab.alpha"),
    ],
)
def test_a_declab_key_with_another_capitalisation_is_refused_naming_it(extra_args, named, meant):
    with pytest.raises(ValueError) as e:
        parse_request_args(extra_args, selected=("momentum",))
    assert named in str(e.value) and f"did you mean {meant}?" in str(e.value)


def test_keys_that_only_start_like_declab_are_left_alone():
    assert parse_request_args({"declabel": 1, "session_id": "x"}, selected=("momentum",)) is None


# -- every declab validation error names its parameter -------------------------------------------------------------
def bad_values(spec: ParamSpec) -> list:
    """Values ``spec`` must refuse: wrong types (a JSON boolean included), non-finite numbers, out of range,
    not a choice, too long, not valid text."""
    if spec.kind is bool:
        return [1, 0, "true", None, 1.0]
    if spec.kind is str:
        out: list = [5, True, None, ["a"], "\ud800abc"]
        if spec.max_length is not None:
            out.append("a" * (spec.max_length + 1))
        if spec.choices is not None:
            out.append("not-a-choice")
        return out
    out = [True, False, "1", None, math.inf, -math.inf, math.nan, [1]]
    if spec.kind is int:
        out.append(1.5)
    if spec.low is not None:
        out.append(spec.low - 1)
    if spec.high is not None:
        out.append(spec.high + 1)
    return out


def _cases():
    for name, spec in sorted(registry.all_specs().items()):
        for param in spec.params:
            for value in bad_values(param):
                yield pytest.param(spec, param, value, id=f"{name}.{param.name}={value!r:.20}")


@pytest.mark.parametrize("spec,param,value", list(_cases()))
def test_every_bad_parameter_value_is_a_value_error_naming_it(spec, param, value):
    given = {p.name: REQUIRED[p.name] for p in spec.params if p.name in REQUIRED and p.name != param.name}
    given[param.name] = value
    with pytest.raises(ValueError) as e:
        if spec.logits is not None:  # the whole admission path of a per-request method (ParamSpec + validate)
            parse_request_args({"declab": {"method": spec.name, **given}}, selected=(spec.name,))
        else:  # search loops and other hooks validate with the same declarations
            resolve_params(spec.params, given, prefix="declab")
    assert f"declab.{param.name}" in str(e.value)


def test_every_plugin_with_parameters_is_walked():
    walked = {spec.name for spec, _, _ in (c.values for c in _cases())}
    assert walked == {n for n, s in registry.all_specs().items() if s.params}


# -- vLLM options a method cannot honour -----------------------------------------------------------------------------
def _sampling_params(method, **options):
    from vllm import SamplingParams

    args = {"method": method, "grammar": 'root ::= ("0" | "1")+'} if method in ("asap", "gcd") else {
        "method": method, "passage": REQUIRED["passage"]}
    return SamplingParams(extra_args={"declab": args}, **options)


def _structured():
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(json_object=True)


@pytest.mark.parametrize(
    "method,option,value",
    [
        ("asap", "structured_outputs", None), ("gcd", "structured_outputs", None),
        ("extractive", "structured_outputs", None),
        ("asap", "allowed_token_ids", [15, 16]), ("gcd", "allowed_token_ids", [15, 16]),
        ("asap", "bad_words", ["0", "1"]), ("gcd", "bad_words", ["0", "1"]),
        ("asap", "min_tokens", 4), ("asap", "logit_bias", {15: 1.0}),
    ],
)
def test_vllm_options_a_method_cannot_honour_are_refused_naming_them(monkeypatch, method, option, value):
    from declab.integrations.router import DeclabLogitsRouter

    monkeypatch.setenv(registry.PLUGINS_ENV, "asap,gcd,extractive")
    sp = _sampling_params(method, **{option: _structured() if option == "structured_outputs" else value})
    with pytest.raises(ValueError, match=rf"^(response_format / )?{option} is not supported together with "
                                         rf"declab.method='{method}'"):
        DeclabLogitsRouter.validate_params(sp)


def test_gcd_composes_with_min_tokens(monkeypatch):
    from declab.integrations.router import DeclabLogitsRouter

    monkeypatch.setenv(registry.PLUGINS_ENV, "gcd")
    DeclabLogitsRouter.validate_params(_sampling_params("gcd", min_tokens=4))


def test_a_refused_option_must_be_a_known_sampling_option():
    from declab.integrations.sdk import LogitsHook, PluginSpec

    with pytest.raises(ValueError, match="refused_options"):
        PluginSpec(name="x", paper=0, status="working", summary="",
                   logits=LogitsHook(row_processor="m:C", refused_options=("temperatur",)))


# -- JSON booleans over HTTP (the front-end patch's pure part) -------------------------------------------------------
def test_json_booleans_of_declab_keys_are_put_back_and_other_keys_left_alone():
    import asyncio
    from types import SimpleNamespace

    from declab.patches.xargs_json_types import restore_json_booleans

    class RawRequest:
        async def json(self):
            return {"vllm_xargs": {"declab.alpha": True, "declab.top_k": 3, "diffusion_read_only": True}}

    # What vLLM's pydantic model made of that body: JSON true narrowed to 1.
    request = SimpleNamespace(vllm_xargs={"declab.alpha": 1, "declab.top_k": 3, "diffusion_read_only": 1})
    asyncio.run(restore_json_booleans(request, RawRequest()))
    assert request.vllm_xargs == {"declab.alpha": True, "declab.top_k": 3, "diffusion_read_only": 1}
    assert request.vllm_xargs["declab.alpha"] is True
    with pytest.raises(ValueError, match=r"declab\.alpha must be a finite number, got True"):
        parse_request_args({"declab.method": "momentum", **request.vllm_xargs}, selected=("momentum",))
