"""Does a grammar accept any string at all? (Admission-time check of asap / gcd grammars.)

Why: xgrammar parses and compiles grammars whose language is empty (``root ::= root "a"``, rules that only refer to
each other, an empty character class ``[]``). Decoded, such a grammar leaves no token allowed (the request ended at
once with ``""`` and finish reason ``stop``) or allows tokens forever without ever allowing the end (``root ::= "a"
b`` / ``b ::= "b" root``). Neither is an answer, so the request is refused at admission, the grammar parameter named.

How: the classic productivity fixpoint of a context-free grammar. A rule is *productive* when one of its
alternatives derives a finite string; the language is empty iff the root rule is not productive. It reads the
grammar xgrammar built (``Grammar.serialize_json``: its rules and expressions, after xgrammar's own normalisation of
``?``, ``*``, ``+`` and ``{m,n}``), so JSON Schema and regex grammars are checked the same way. It is conservative:
an expression kind it does not know (structural tags, token-level expressions) or a serialisation format it was not
written for counts as productive, so an unusual grammar is never refused by mistake; lookahead assertions are
ignored (they can only remove strings).

Pure Python over xgrammar's data (no tokenizer, no torch).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

# xgrammar's GrammarExprType (cpp/grammar_impl.h) in the serialisation format below: [type, length, data...].
KNOWN_FORMATS = ("v16",)
BYTE_STRING, CHARACTER_CLASS, CHARACTER_CLASS_STAR, EMPTY_STR, RULE_REF, SEQUENCE, CHOICES = range(7)
REPEAT = 8  # data: [rule_id, min_repeat, max_repeat]
MAX_CODEPOINT = 0x10FFFF


def _class_is_empty(data: Sequence[int]) -> bool:
    """A character class ``[is_negative, lo0, hi0, lo1, hi1, ...]`` that matches no character."""
    negative, ranges = bool(data[0]), list(zip(data[1::2], data[2::2]))
    if not negative:
        return not any(lo <= hi for lo, hi in ranges)
    covered = 0  # [^...]: empty only if the ranges cover every code point
    for lo, hi in sorted(ranges):
        if lo > covered:
            return False
        covered = max(covered, hi + 1)
    return covered > MAX_CODEPOINT


class GrammarLanguage:
    """The rules and expressions of one serialised xgrammar ``Grammar``, and which of them derive a string."""

    def __init__(self, serialized: dict[str, Any]) -> None:
        self.rules = serialized["rules"]  # [name, body_expr_id, lookahead_expr_id, ...]
        self.root = int(serialized["root_rule_id"])
        data, indptr = serialized["grammar_expr_data"], serialized["grammar_expr_indptr"]
        # Expression i starts at indptr[i]: [type, length, data...].
        self.exprs = [data[start:start + 2 + data[start + 1]] for start in indptr]

    @classmethod
    def of(cls, grammar: Any) -> "GrammarLanguage | None":
        """From an ``xgrammar.Grammar``; None when its serialisation format is not one this module reads."""
        serialized = json.loads(grammar.serialize_json())
        if serialized.get("__VERSION__") not in KNOWN_FORMATS:
            return None
        return cls(serialized)

    def _productive_expr(self, expr_id: int, rules: set[int]) -> bool:
        expr = self.exprs[expr_id]
        kind, body = expr[0], expr[2:]
        if kind in (BYTE_STRING, CHARACTER_CLASS_STAR, EMPTY_STR):
            return True
        if kind == CHARACTER_CLASS:
            return not _class_is_empty(body)
        if kind == RULE_REF:
            return body[0] in rules
        if kind == SEQUENCE:
            return all(self._productive_expr(e, rules) for e in body)
        if kind == CHOICES:
            return any(self._productive_expr(e, rules) for e in body)
        if kind == REPEAT:
            return body[1] == 0 or body[0] in rules
        return True  # tag dispatch, token-level expressions, later kinds: assume they derive something

    def productive_rules(self) -> set[int]:
        """The rules that derive at least one finite string (least fixpoint)."""
        productive: set[int] = set()
        changed = True
        while changed:
            changed = False
            for rule_id, rule in enumerate(self.rules):
                if rule_id not in productive and self._productive_expr(int(rule[1]), productive):
                    productive.add(rule_id)
                    changed = True
        return productive

    @property
    def empty(self) -> bool:
        return self.root not in self.productive_rules()


def language_is_empty(grammar: Any) -> bool:
    """True when the ``xgrammar.Grammar`` accepts no string (False when unsure: an unknown serialisation format)."""
    language = GrammarLanguage.of(grammar)
    return language is not None and language.empty
