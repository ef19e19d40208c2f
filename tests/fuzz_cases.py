"""Fuzz cases generated from the plugins' declared parameters (hypothesis strategies).

A case is one request a hostile but fair user could send: a plugin's ``declab`` arguments, drawn from each
``ParamSpec`` of its spec (a valid value, a borderline one, a value of the wrong type, or nothing), sometimes an
unknown or wrongly capitalised key, combined with vLLM's own sampling options and an endpoint. Nothing here names a
plugin: a new plugin is fuzzed from its ``PluginSpec`` alone. ``VALID_TEXT`` only helps string parameters whose
valid values have a syntax (a grammar, a JSON Schema), so that enough cases get past admission and generate;
``REFUSED_TEXT`` adds strings of the right type that must be refused all the same (an empty-language grammar).

The oracle is the declaration itself: a case whose declab arguments a ``ParamSpec`` refuses (or that miss a required
one, or carry an unknown key) is ``bad``: the request must be refused with a 4xx (offline: a ValueError) naming one
of ``case.bad``. Every 4xx must name a parameter the case sent (``case.names``).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from declab.integrations.sdk import ParamSpec, PluginSpec

MAX_TOKENS = (1, 2, 3, 4)  # small, so that 1,000 cases per plugin take minutes

# Valid values of string parameters with a syntax, by parameter name (else: plain text).
VALID_TEXT: dict[str, tuple[str, ...]] = {
    "grammar": ('root ::= ("0" | "1")+', 'root ::= "yes" | "no"', 'root ::= [a-z]+ " " [0-9]'),
    "json_schema": ('{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}',
                    '{"type": "string", "maxLength": 3}', '{"enum": ["x", "y"]}'),
    "regex": ("[ab]+", "(yes|no)", r"\d{1,3}"),
    "contrast_prompt": ("Question: Where is it?\nAnswer:", "def f():\n    ", "Bonjour, le monde ü 世界"),
    "passage": ("Mikagro Works is headquartered in Marrator.", "def fibonacci(n): return n", "a b c d e"),
    "stop": ("\n", ".", "Answer"),
    "namespace": ("", "run-1", "ns ü"),
}
# Strings of the right type that must still be refused (their syntax or content), by parameter name: the oracle adds
# them to ``Case.bad`` (a declaration's types and ranges cannot say it).
REFUSED_TEXT: dict[str, tuple[str, ...]] = {
    "grammar": ('root ::= root "a"', 'root ::= a\na ::= b\nb ::= a', "root ::= [^\\x00-\\U0010FFFF]",
                "root ::= ", 'root := "a"'),  # empty languages, then syntax errors
    "json_schema": ("{", '{"type": "nope"}', "[]"),
    "regex": ("(", "[z-a]"),
    "passage": ("", "   "),
}
PLAIN_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=24)

LONG_TEXT = "word " * 5000  # 25,000 characters: over max_length and the model's context
# Values of the wrong type, or text no tokenizer should see, for any parameter.
HOSTILE = (True, False, None, "", " ", "1", "abc", "\ud800abc", "héllo 🙂 世界 \u202e", LONG_TEXT, [], [1, 2],
           ["a"], {}, {"a": 1})
BORDER_NUMBERS = (0, -1, -0.0, 1, 0.5, 2.5, 3.0, 10**30, 2**63, -(2**63), 1e308, -1e308, math.inf, -math.inf,
                  math.nan, 5e-324)

PROMPTS = ("def fibonacci(n):\n    ", "Question: Where is Mikagro Works headquartered?\nAnswer:", "The capital of",
           "Écris une phrase 🙂:")
# The caps of valid numbers: the largest value of a declared range a case uses for a parameter (cost, not validity).
VALID_CAPS = {"max_tokens": 4, "beam_width": 4, "num_groups": 4, "max_span_tokens": 8, "top_k": 64}


@dataclass
class Case:
    """One request. ``declab``: the declab arguments as sent (key -> value, keys without the ``declab.`` prefix;
    ``declab_key``: the prefix / nested key used, possibly wrongly capitalised). ``sampling``: vLLM options in the
    HTTP body. ``bad``: names the plugin's declaration refuses; ``names``: every name a 4xx may cite."""

    plugin: str
    endpoint: str  # "completions" | "chat"
    prompt: str
    declab: dict[str, Any]
    sampling: dict[str, Any]
    declab_key: str = "declab"
    bad: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)  # what the case exercises, for KNOWN matching and the report
    declared: tuple[str, ...] = ()  # the method's declared parameters: an error may name one not sent ("give one of")

    @property
    def names(self) -> set[str]:
        out = {f"{self.declab_key}.{k}" for k in self.declab if k != "method" or "method" in self.tags}
        out |= {k for k in self.sampling if k not in ("stream", "model")}
        if "structured" in self.tags:
            out |= {"structured_outputs", "structured outputs", "response_format", "guided", "grammar", "json",
                    "regex", "choice", "schema"}
        if not out:  # a request with only declab.method: the method is what an error can name
            out.add(f"{self.declab_key}.method")
        if any(_beyond_64_bits(v) for v in self.declab.values()):  # vLLM's own check of extra_args comes first
            out.add("extra_args")
        return out | self.bad | {f"{self.declab_key}.{name}" for name in self.declared}

    def xargs(self) -> dict[str, Any]:
        """The flat ``vllm_xargs`` of the HTTP body."""
        return {f"{self.declab_key}.{k}": v for k, v in self.declab.items()}

    def body(self, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, **self.sampling}
        if self.declab:
            body["vllm_xargs"] = self.xargs()
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": self.prompt}]
            if "logprobs" in body:  # chat: a boolean plus top_logprobs
                body["top_logprobs"] = body.pop("logprobs")
                body["logprobs"] = True
        else:
            body["prompt"] = self.prompt
        return body

    def describe(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "endpoint": self.endpoint, "prompt": self.prompt[:60],
                "declab_key": self.declab_key, "declab": {k: _short(v) for k, v in self.declab.items()},
                "sampling": {k: _short(v) for k, v in self.sampling.items()}, "bad": sorted(self.bad),
                "tags": sorted(self.tags)}


def _beyond_64_bits(value: Any) -> bool:
    """An integer vLLM's msgpack transport cannot carry (vLLM refuses it in ``extra_args`` before declab sees it)."""
    if isinstance(value, list):
        return any(_beyond_64_bits(v) for v in value)
    return isinstance(value, int) and not -(2**63) <= value < 2**64


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > 80:
        return value[:40] + f"...<{len(value)} chars>"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def refuses(spec: ParamSpec, value: Any) -> bool:
    """Whether the declaration refuses ``value`` (the oracle of bad cases)."""
    try:
        spec.validate(value)
    except Exception:  # noqa: BLE001 - a crash of the validator is a refusal too (the engine's answer is checked)
        return True
    return False


def valid_value(spec: ParamSpec) -> st.SearchStrategy:
    if spec.choices is not None:
        return st.sampled_from(spec.choices)
    if spec.kind is bool:
        return st.booleans()
    if spec.kind is int:
        low = int(spec.low) if spec.low is not None else -100
        high = int(spec.high) if spec.high is not None else low + 100
        return st.integers(low, max(low, min(high, VALID_CAPS.get(spec.name, high))))
    if spec.kind is float:
        low = spec.low if spec.low is not None else -100.0
        high = spec.high if spec.high is not None else low + 100.0
        return st.floats(low, high, allow_nan=False, allow_infinity=False)
    return st.sampled_from(VALID_TEXT[spec.name]) if spec.name in VALID_TEXT else PLAIN_TEXT


def borderline_value(spec: ParamSpec) -> st.SearchStrategy:
    """Edges of the declared range and numbers every validator must survive."""
    edges: list[Any] = list(BORDER_NUMBERS)
    for bound in (spec.low, spec.high):
        if bound is not None and spec.name not in VALID_CAPS:  # capped: the upper edge costs too much to run
            edges += [bound, bound - 1, bound + 1, bound - 1e-9, bound + 1e-9]
    if spec.choices is not None:
        edges += [str(c).upper() for c in spec.choices if isinstance(c, str)] + [f" {spec.choices[0]}"]
    if spec.max_length is not None:
        edges += ["x" * spec.max_length, "x" * (spec.max_length + 1)]
    edges += REFUSED_TEXT.get(spec.name, ())
    return st.sampled_from(edges)


@st.composite
def param_value(draw, spec: ParamSpec, hostile: bool) -> tuple[Any, bool]:
    """``(value, given)``: a value for ``spec`` or not given (a required parameter is given 9 times in 10). A
    ``hostile`` case draws a borderline or wrong-typed value for a third of its parameters, else valid ones."""
    rnd = _coins(draw)
    if rnd.random() < (0.1 if spec.required else 0.4):
        return None, False
    if hostile and rnd.random() < 1 / 3:
        return draw(borderline_value(spec) if rnd.random() < 0.5 else st.sampled_from(HOSTILE)), True
    return draw(valid_value(spec)), True


# vLLM's own sampling options: (plain values, borderline ones); each option is left out most of the time.
SAMPLING_OPTIONS: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {
    "temperature": ((0, 0.0, 0.7, 1.0, 2.0), (-1.0, 1e9, -0.0)),
    "top_k": ((-1, 0, 1, 5), (10**9, -2)),
    "top_p": ((0.5, 1.0, 0.9), (0.0, 1.5, -0.1)),
    "n": ((1, 2, 3), (0, -1)),
    "logprobs": ((0, 1, 5, 20), (21, -1)),
    "seed": ((0, 42, 2**31), (-1, 2**63 - 1, 2**64)),
    "max_tokens": ((1, 2, 4), (0, -1)),
    "stop": ((["\n"], ".", ["a", "b", "c", "d", "e"]), ("", [""], "\ud800")),
    "allowed_token_ids": (([1, 2, 3], list(range(0, 400, 7))), ([], [-1], [10**9])),
    "bad_words": ((["0", "1"], ["the"], [" the"]), ([""], ["\ud800"])),
    "min_tokens": ((0, 1, 2, 4), (10, -1)),
    "stream": ((True, False), ()),
}
STRUCTURED = (
    ({"structured_outputs": {"json": {"type": "object"}}},
     {"structured_outputs": {"regex": "[ab]+"}},
     {"structured_outputs": {"choice": ["yes", "no"]}},
     {"structured_outputs": {"grammar": 'root ::= "a" | "b"'}},
     {"response_format": {"type": "json_object"}},
     {"response_format": {"type": "text"}},
     {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}}}),
    ({"structured_outputs": {"regex": "("}},  # does not parse
     {"structured_outputs": {"regex": "[ab]+", "choice": ["a"]}},  # two at once
     {"response_format": {"type": "nope"}}),
)


@st.composite
def sampling_options(draw, hostile: bool) -> tuple[dict[str, Any], set[str]]:
    """vLLM options of one request: each option in one case of ten (a hostile case: a borderline value in one of
    three), structured outputs in one of eight."""
    rnd = _coins(draw)
    out: dict[str, Any] = {"max_tokens": draw(st.sampled_from(MAX_TOKENS)), "temperature": 0}
    tags: set[str] = set()

    def pick(plain: tuple, border: tuple) -> Any:
        return draw(st.sampled_from(border if border and hostile and rnd.random() < 1 / 3 else plain))

    for name, (plain, border) in SAMPLING_OPTIONS.items():
        if rnd.random() < 0.1:
            out[name] = pick(plain, border)
            tags.add(name)
    if rnd.random() < 1 / 8:
        out.update(pick(*STRUCTURED))
        tags.add("structured")
    return out, tags


def _coins(draw) -> random.Random:
    """Weighted coin flips of one case: a ``Random`` seeded by hypothesis (its own draws favour the simplest value,
    which would make every rare option frequent)."""
    return random.Random(draw(st.integers(0, 2**32 - 1)))


def _recase(name: str, how: int) -> str:
    return (name.upper(), name.capitalize(), name.swapcase())[how % 3] if name.lower() == name else name.lower()


@st.composite
def declared_values(draw, params: tuple[ParamSpec, ...], prefix: str, fill_defaults: bool = False):
    """``(values, bad, tags)``: a value (or none) for each declared parameter; ``bad``: ``prefix.name`` of those the
    declaration refuses or a required one missing. ``fill_defaults``: an omitted parameter gets its default (an API
    whose arguments are all keywords)."""
    values: dict[str, Any] = {}
    bad: set[str] = set()
    tags: set[str] = set()
    hostile = _coins(draw).random() < 0.5
    for p in params:
        value, given = draw(param_value(p, hostile))
        if not given and fill_defaults and not p.required:
            value, given = p.default, True
        if given:
            values[p.name] = value
            if refuses(p, value) or (isinstance(value, str) and value in REFUSED_TEXT.get(p.name, ())):
                bad.add(f"{prefix}.{p.name}")
                if isinstance(value, bool):
                    tags.add("bool_as_number")
        elif p.required:
            bad.add(f"{prefix}.{p.name}")
    return values, bad, tags | ({"hostile"} if hostile else set())


@st.composite
def plugin_cases(draw, spec: PluginSpec, endpoints: tuple[str, ...] = ("completions", "chat")) -> Case:
    """A request for ``spec``'s method, its arguments drawn from its declared parameters. A plugin that is not a
    per-request method (a proposer without per-request parameters) gets plain requests, and sometimes declab
    arguments it must refuse; a proposer that declares parameters (EAD's threshold) is named like a method."""
    rnd = _coins(draw)
    declab, bad, tags = draw(declared_values(spec.params, "declab"))
    declab = {"method": spec.name, **declab}
    if spec.logits is None and not spec.params:
        if rnd.random() < 0.75:
            declab, bad = {}, set()
        else:
            bad.add("declab.method")
    hostile = "hostile" in tags
    extra = rnd.randrange(12) if declab and hostile else -1
    if extra == 0:  # an unknown key
        key = draw(st.sampled_from(("nope", "alpha_", "Method", "temperature", "")))
        declab[key] = draw(st.sampled_from((1, "x", 0.5)))
        bad.add(f"declab.{key}")
    elif extra == 1 and len(declab) > 1:  # a declared key wrongly capitalised
        name = draw(st.sampled_from(sorted(k for k in declab if k != "method")))
        recased = _recase(name, draw(st.integers(0, 2)))
        declab[recased] = declab.pop(name)
        bad.add(f"declab.{recased}")
        tags.add("wrong_case_key")
    elif extra == 2:  # the method itself: wrongly capitalised, unknown, of the wrong type or missing
        declab["method"] = draw(st.sampled_from((spec.name.upper(), "nope", "", 1, None)))
        tags.add("method")
        bad.add("declab.method")
        if declab["method"] is None:
            del declab["method"]
            if not declab:  # nothing left to send: a plain request
                bad.discard("declab.method")
    declab_key = "declab"
    if declab and hostile and rnd.random() < 0.1:  # the namespace wrongly capitalised: not to be silently ignored
        declab_key = draw(st.sampled_from(("Declab", "DECLAB", "declaB")))
        bad.add(f"{declab_key}.method")
        tags.add("wrong_case_namespace")
    sampling, sampling_tags = draw(sampling_options(hostile))
    bundled = spec.logits.bundled_completions if spec.logits is not None else None
    if bundled and rnd.random() < 0.75:  # most cases ask for as many completions as the method bundles, sampled
        count = declab.get(bundled, next(p.default for p in spec.params if p.name == bundled))
        if isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= 16:  # n is a cost too
            sampling["n"] = count
            if not sampling.get("temperature"):
                sampling["temperature"] = 1.0
            sampling_tags.add("bundled_n")
    return Case(plugin=spec.name, endpoint=draw(st.sampled_from(endpoints)), prompt=draw(st.sampled_from(PROMPTS)),
                declab=declab, sampling=sampling, declab_key=declab_key, bad=bad, tags=tags | sampling_tags,
                declared=tuple(p.name for p in spec.params))


@st.composite
def search_cases(draw, spec: PluginSpec) -> Case:
    """Keyword arguments of a search loop (``declab``: every declared parameter, defaults where not drawn)."""
    options, bad, tags = draw(declared_values(spec.params, "declab", fill_defaults=True))
    return Case(plugin=spec.name, endpoint="search", prompt=draw(st.sampled_from(PROMPTS)), declab=options,
                sampling={}, bad=bad, tags=tags | {"method"})


@st.composite
def settings_cases(draw, spec: PluginSpec) -> Case:
    """Engine-wide settings ``additional_config.declab.<plugin>``, drawn from the declared settings."""
    where = f"additional_config.declab.{spec.name}"
    settings, bad, tags = draw(declared_values(spec.settings, where))
    if _coins(draw).random() < 0.1:
        key = draw(st.sampled_from(("nope", "Mode", "MODE", "")))
        settings[key] = draw(st.sampled_from((1, "x", None)))
        bad.add(f"{where}.{key}")
    return Case(plugin=spec.name, endpoint="settings", prompt="", declab=settings, sampling={}, declab_key=where,
                bad=bad, tags=tags | {"method"})


def batches(case_strategy: st.SearchStrategy, size: int) -> st.SearchStrategy:
    return st.lists(case_strategy, min_size=size, max_size=size)


def case_budget(default: int) -> int:
    """Cases per plugin: ``DECLAB_FUZZ_CASES`` (the full run: 1000), else the ``make test`` size."""
    return int(os.environ.get("DECLAB_FUZZ_CASES", default))
