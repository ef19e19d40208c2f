"""What every fuzz case must satisfy, the bugs already known (``KNOWN``), and the run's summary report.

Properties of one answer (``violations``): no status >= 500 (nor an error event >= 500 inside a stream); a 4xx (an
offline exception) names a parameter the case sent; a case the declaration refuses (``Case.bad``) is refused;
offline, the exception is a ``ValueError``; a 200 honours vLLM's own constraints that can be read off the answer
(``allowed_token_ids``, ``min_tokens``). After every batch the server answers ``/health`` and a plain request (the
engine generates): checked by the runners.

``KNOWN``: bugs another change is fixing. A violation a ``Known`` entry matches is counted under its name instead of
failing the test; remove the entry when the fix merges (the suite then checks the fix).
"""

from __future__ import annotations

import collections
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fuzz_cases import Case

from declab.integrations import registry


@dataclass
class Outcome:
    """The answer to one case. HTTP: ``status`` (200, 4xx, 5xx); offline: 200 or the exception's type name in
    ``error`` (status 400 for a ValueError). ``token_ids``/``completion_tokens`` of a 200 when known."""

    status: int
    message: str = ""
    error: str | None = None  # offline: exception type; HTTP: "stream" for an error event inside a 200 stream
    is_value_error: bool = True
    token_ids: list[list[int]] | None = None
    completion_tokens: list[int] | None = None


def _named(case: Case, message: str) -> bool:
    text = message.lower()
    if any(name.lower() in text for name in case.names):
        return True
    # Offline, a wrongly capitalised namespace is one key of extra_args ({"Declab": {...}}): the error names that key,
    # as sent (compared case-sensitively: "declab" alone is in most messages).
    return "wrong_case_namespace" in case.tags and re.search(rf"\b{re.escape(case.declab_key)}\b", message) is not None


def violations(case: Case, out: Outcome) -> list[str]:
    """The properties ``out`` breaks (empty: the answer is right)."""
    found = []
    if out.status >= 500:
        found.append(f"status {out.status}")
    elif out.status >= 400:
        if not _named(case, out.message):
            found.append("error does not name a parameter")
        if not out.is_value_error:
            found.append(f"{out.error} is not a ValueError")
    elif case.bad:
        found.append("refused argument accepted")
    if out.status == 200:
        allowed = case.sampling.get("allowed_token_ids")
        if allowed and out.token_ids is not None and any(set(ids) - set(allowed) for ids in out.token_ids):
            found.append("allowed_token_ids not honoured")
        min_tokens, max_tokens = case.sampling.get("min_tokens"), case.sampling.get("max_tokens")
        if (isinstance(min_tokens, int) and min_tokens > 0 and out.completion_tokens is not None
                and any(n < min(min_tokens, max_tokens or min_tokens) for n in out.completion_tokens)):
            found.append("min_tokens not honoured")
    return found


@dataclass(frozen=True)
class Known:
    """A known bug: ``matches(case, outcome, violation)``; ``fix``: where it is being fixed."""

    name: str
    fix: str
    matches: Callable[[Case, Outcome, str], bool]


def _bad_only(case: Case, why: Callable[[str, Any], bool]) -> bool:
    """Every refused name of ``case`` is a declab parameter whose (name, value) ``why`` explains."""
    names = [n.split(".", 1)[1] for n in case.bad]
    return bool(case.bad) and all(n.startswith("declab.") for n in case.bad) and all(
        name in case.declab and why(name, case.declab[name]) for name in names)


def _bad_only_bools(case: Case) -> bool:
    return _bad_only(case, lambda name, value: isinstance(value, bool))


KNOWN: tuple[Known, ...] = (
    # vLLM 0.32 itself (no plugin selected, VLLM_PLUGINS=""): a structured output whose grammar allows none of the
    # allowed_token_ids (or only banned words) makes xgrammar fail to advance; the request ends with
    # finish_reason "error", an HTTP 500 "Internal server error". Not declab's; reported upstream-style in the report.
    Known("vllm-structured-outputs-with-allowed-token-ids-or-bad-words-5xx", "vLLM 0.32 (not declab)",
          lambda c, o, v: "structured" in c.tags and v.startswith("status 5")
          and ("allowed_token_ids" in c.sampling or "bad_words" in c.sampling)),
    # vLLM 0.32 itself (VLLM_PLUGINS=""): a structured output whose grammar is complete before min_tokens ends the
    # request there (root ::= "a" | "b" with min_tokens 4 gives "a" + EOS, finish_reason "stop").
    Known("vllm-structured-output-ends-before-min-tokens", "vLLM 0.32 (not declab)",
          lambda c, o, v: "structured" in c.tags and v == "min_tokens not honoured"),
)


# Cases that kill the engine of a known bug: not sent (every later request would fail), counted as skipped. Remove
# an entry when the fix merges.
ENGINE_KILLERS: tuple[Known, ...] = (
    # (none known: vLLM's CPU spec decoding with a sampled top_k request is fixed by patches/spec_decode_top_k_cpu.py
    # and patches/cpu_expand_kernel.py, VLLM_FIXES; tests/test_spec_decode_top_k.py)
)
# Plugins whose engine runs speculative decoding: the proposers.
SPECULATIVE = tuple(n for n, s in registry.all_specs().items() if s.hook == registry.HOOK_PROPOSER)


def engine_killer(case: Case) -> str | None:
    return next((k.name for k in ENGINE_KILLERS if k.matches(case, Outcome(0), "")), None)


def known_bug(case: Case, out: Outcome, violation: str) -> str | None:
    return next((k.name for k in KNOWN if k.matches(case, out, violation)), None)


@dataclass
class FuzzLog:
    """Every answer of one (channel, plugin) run: histogram, known-bug hits and the unexplained failures."""

    channel: str  # "http" | "offline" | "http-search" | ...
    plugin: str
    cases: int = 0
    batches: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    known: collections.Counter = field(default_factory=collections.Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    known_examples: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasons: collections.Counter = field(default_factory=collections.Counter)  # 4xx messages, first words
    skipped: collections.Counter = field(default_factory=collections.Counter)  # ENGINE_KILLERS: not sent

    def sendable(self, cases: list[Case]) -> list[Case]:
        """``cases`` without those that would kill the engine (``ENGINE_KILLERS``), counted as skipped."""
        out = []
        for case in cases:
            killer = engine_killer(case)
            if killer is None:
                out.append(case)
            else:
                self.skipped[killer] += 1
        return out

    def record(self, case: Case, out: Outcome) -> None:
        self.cases += 1
        if out.status >= 400:
            self.reasons[" ".join(out.message.split())[:90]] += 1
        self.statuses[str(out.status) if out.error is None else f"{out.status} {out.error}"] += 1
        for v in violations(case, out):
            entry = {"violation": v, "status": out.status, "error": out.error, "message": out.message[:400],
                     "case": case.describe()}
            name = known_bug(case, out, v)
            if name is None:
                self.failures.append(entry)
            else:
                self.known[name] += 1
                self.known_examples.setdefault(name, entry)

    def summary(self) -> dict[str, Any]:
        return {"channel": self.channel, "plugin": self.plugin, "cases": self.cases, "batches": self.batches,
                "statuses": dict(sorted(self.statuses.items())), "known": dict(self.known),
                "skipped_engine_killers": dict(self.skipped),
                "known_examples": self.known_examples, "failures": self.failures[:50],
                "top_refusals": dict(self.reasons.most_common(25)),
                "failure_count": len(self.failures)}

    def assert_clean(self, min_cases: int) -> None:
        """At least ``min_cases`` cases were sent or counted as engine killers, and none broke a property."""
        assert self.cases + sum(self.skipped.values()) >= min_cases, (self.channel, self.plugin, self.cases)
        assert not self.failures, (f"{len(self.failures)} fuzz failures ({self.channel}, {self.plugin}):\n"
                                   + "\n".join(json.dumps(f, default=repr) for f in self.failures[:10]))


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None


class FuzzReport:
    """The session's fuzz logs; written as JSON to ``DECLAB_FUZZ_REPORT`` (a path) when it is set."""

    def __init__(self) -> None:
        from declab.integrations.sdk.bench import load_average

        self.logs: list[FuzzLog] = []
        self.load_at_start = load_average()

    def log(self, channel: str, plugin: str) -> FuzzLog:
        entry = FuzzLog(channel, plugin)
        self.logs.append(entry)
        return entry

    def write(self, path: str | None = None) -> Path | None:
        path = path or os.environ.get("DECLAB_FUZZ_REPORT")
        if not path or not self.logs:
            return None
        from declab.integrations.sdk.bench import provenance

        per_plugin: dict[str, dict[str, int]] = collections.defaultdict(dict)
        for entry in self.logs:
            per_plugin[entry.plugin][entry.channel] = entry.cases
        made_by = provenance(self.load_at_start)
        made_by["command"] = os.environ.get("DECLAB_FUZZ_COMMAND") or made_by["command"]
        made_by["commit"] = _git_commit()
        report = {
            "provenance": made_by,
            "cases_per_plugin_requested": int(os.environ.get("DECLAB_FUZZ_CASES", 0)) or None,
            "cases_per_plugin": per_plugin,
            "total_cases": sum(e.cases for e in self.logs),
            "failures": sum(len(e.failures) for e in self.logs),
            "known_bugs": {k.name: k.fix for k in KNOWN + ENGINE_KILLERS},
            "runs": [e.summary() for e in self.logs],
        }
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, default=repr, ensure_ascii=True) + "\n")
        return out
