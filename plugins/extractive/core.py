"""Pure algorithm core of exact-extract (paper 55): answers that are contiguous spans of the passage's tokens.

No vLLM import. Three pieces:

* ``SpanAutomaton``: a suffix automaton over one or more token-id sequences ("segments"). Every path from
  ``start`` spells a distinct substring (span) of some segment, and every span is such a path, so "is the output
  still a span?" is one dict look-up per generated token.
* ``ExtractiveProcessor``: the per-request logits transform (greedy mode). It masks every token that would make the
  generated output stop being a span, keeping the automaton state incrementally across decoding steps.
* ``best_span``: exact mode. Best-first branch-and-bound over the span trie (walked through the automaton) for the
  single most probable span ``argmax_s  sum_i log p(s_i | s_<i) + log p(EOS | s)``, with batched ``score_fn`` calls.
  ``brute_force_best_span`` is the reference that scores every distinct span on its own.

Tokenization (byte-level BPE and friends). The model sees ``... Answer:`` and its answer usually begins with a
space, so it wants the *space-prefixed* token of the answer's first word (`` Marrator``). Mid-text words are
preceded by a space in the passage too, so their passage tokens already are the space-prefixed ones; but the
passage's first word (and a word at the start of a line, after ``\\n``) is tokenized without the leading space, so
the token the model wants never occurs in the passage tokenization. We therefore build the automaton over several
*tokenization variants* of the same text, kept apart by separators so that no span crosses two of them:

1. the passage tokenized as-is;
2. ``" " + passage`` (when the passage does not already start with whitespace): covers the first word;
3. for every line after the first that does not start with a single space, ``" " + line.lstrip()``: covers words
   at the start of a line.

The automaton's start state has a transition for every token that starts a span of any variant, so the *first*
answer token may be any token that starts a span in any tokenization; every later token must continue the span
inside the same variant. Each variant is a faithful tokenization of passage text (with at most one leading space
added or standing in for a line break), so an accepted output always decodes to passage text up to that leading
whitespace. Spans that start in the middle of a word are allowed exactly as the passage tokenization splits it.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from declab.integrations.sdk.rows import RowContext, RowProcessor

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------------------------
# Suffix automaton
# ----------------------------------------------------------------------------------------------------------------


class SpanAutomaton:
    """Suffix automaton (DAWG) of a token-id sequence, or of several kept apart by separators.

    ``SpanAutomaton(token_ids)`` builds it over one sequence; ``SpanAutomaton.from_segments([...])`` over several
    (a span is then a substring of one segment). Built online in O(n) (amortized, hash-map transitions; at most
    ``2n - 1`` states and ``3n - 4`` transitions). Token ids must be non-negative ints; negative ids are used
    internally as the separators between segments and are never reported by ``allowed`` or accepted by ``step``.

    * ``start``: the state of the empty span.
    * ``step(state, token)``: the state after appending ``token``, or ``None`` if that leaves the set of spans. O(1).
    * ``allowed(state)``: the tokens that extend the current span (sorted list; cached per state).
    * ``is_span(seq)``: whether ``seq`` is a contiguous sub-sequence of a segment (the empty sequence is). O(|seq|).
    """

    start = 0

    def __init__(self, token_ids: Iterable[int] = ()) -> None:
        self._build([list(token_ids)])

    @classmethod
    def from_segments(cls, segments: Iterable[Iterable[int]]) -> "SpanAutomaton":
        self = cls.__new__(cls)
        self._build([list(s) for s in segments])
        return self

    # -- construction ---------------------------------------------------------------------------------------------

    def _build(self, segments: list[list[int]]) -> None:
        for seg in segments:
            for t in seg:
                if not isinstance(t, int) or t < 0:
                    raise ValueError(f"token ids must be non-negative ints, got {t!r}")
        self.segments: tuple[tuple[int, ...], ...] = tuple(tuple(s) for s in segments)
        self._next: list[dict[int, int]] = [{}]
        self._link: list[int] = [-1]
        self._len: list[int] = [0]
        self._last = 0
        for k, seg in enumerate(self.segments):
            if k:
                self._extend(-k)  # unique separator: no span crosses two segments
            for t in seg:
                self._extend(t)
        self._allowed: dict[int, list[int]] = {}

    def _extend(self, c: int) -> None:
        nxt, link, length = self._next, self._link, self._len
        cur = len(nxt)
        nxt.append({})
        link.append(0)
        length.append(length[self._last] + 1)
        p = self._last
        while p != -1 and c not in nxt[p]:
            nxt[p][c] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][c]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(nxt)
                nxt.append(dict(nxt[q]))
                link.append(link[q])
                length.append(length[p] + 1)
                while p != -1 and nxt[p].get(c) == q:
                    nxt[p][c] = clone
                    p = link[p]
                link[q] = clone
                link[cur] = clone
        self._last = cur

    # -- queries --------------------------------------------------------------------------------------------------

    @property
    def num_states(self) -> int:
        return len(self._next)

    def step(self, state: int, token: int) -> int | None:
        if token < 0:
            return None
        return self._next[state].get(token)

    def allowed(self, state: int) -> list[int]:
        out = self._allowed.get(state)
        if out is None:
            out = sorted(t for t in self._next[state] if t >= 0)
            self._allowed[state] = out
        return out

    def walk(self, seq: Iterable[int], state: int | None = None) -> int | None:
        """State after ``seq`` from ``state`` (default ``start``), or ``None`` once it leaves the spans."""
        s: int | None = self.start if state is None else state
        for t in seq:
            s = self.step(s, t)
            if s is None:
                return None
        return s

    def is_span(self, seq: Iterable[int]) -> bool:
        return self.walk(seq) is not None

    def num_distinct_spans(self) -> int:
        """Number of distinct non-empty spans (single-segment automata only: separators count otherwise)."""
        if len(self.segments) > 1:
            raise ValueError("num_distinct_spans is only defined for a single-segment automaton")
        return sum(self._len[v] - self._len[self._link[v]] for v in range(1, len(self._next)))


# ----------------------------------------------------------------------------------------------------------------
# Tokenization variants
# ----------------------------------------------------------------------------------------------------------------


def passage_segments(passage: str, tokenize: Callable[[str], list[int]]) -> list[list[int]]:
    """The tokenization variants of ``passage`` the automaton is built over (see the module docstring)."""
    if not passage:
        return []
    segs: list[list[int]] = [list(tokenize(passage))]
    seen = {tuple(segs[0])}

    def add(text: str) -> None:
        ids = list(tokenize(text))
        key = tuple(ids)
        if ids and key not in seen:
            seen.add(key)
            segs.append(ids)

    if not passage[0].isspace():
        add(" " + passage)
    for line in passage.split("\n")[1:]:
        body = line.lstrip()
        if body and line != " " + body:
            add(" " + body)
    return segs


@functools.lru_cache(maxsize=16)
def _cached_passage_automaton(passage: str, tokenize: Callable[[str], list[int]]) -> SpanAutomaton:
    return SpanAutomaton.from_segments(passage_segments(passage, tokenize))


def build_passage_automaton(passage: str, tokenize: Callable[[str], list[int]]) -> SpanAutomaton:
    """Automaton over the tokenization variants of ``passage`` (cached per (passage, tokenize) pair)."""
    try:
        return _cached_passage_automaton(passage, tokenize)
    except TypeError:  # unhashable tokenizer callable
        return SpanAutomaton.from_segments(passage_segments(passage, tokenize))


# ----------------------------------------------------------------------------------------------------------------
# Greedy mode: the logits processor
# ----------------------------------------------------------------------------------------------------------------


class ExtractiveProcessor(RowProcessor):
    """Constrains generation to a span of the passage (greedy / sampled decoding under the span constraint).

    params: ``passage`` (str, required), ``mode`` ("greedy" | "exact"), ``max_span_tokens`` (int, default 32).
    Optional, for callers that already have the automaton or ids (not part of the declared spec):
    ``passage_ids`` (list of token ids, used instead of tokenizing ``passage``).

    Each step keeps exactly: the tokens that extend the current span (``SpanAutomaton.allowed``), plus
    ``ctx.eos_token_id`` once at least one token was generated. When ``max_span_tokens`` tokens were generated,
    when no token can extend the span (e.g. empty passage), or when the output already left the passage (the
    sampler ignored the mask), only EOS is kept. If every kept logit is ``-inf`` (another processor masked them),
    EOS is set to 0 so the row is never all ``-inf``. Without an EOS id and with nothing allowed, the row is
    returned unchanged (nothing valid to force).

    ``mode == "exact"`` is searched by the integration loop with ``best_span``; if this processor runs for such a
    request anyway it applies the same span constraint, so the output is still a span.
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        prompt_ids: Sequence[int],
        output_ids: Sequence[int],
        ctx: RowContext,
    ) -> None:
        super().__init__(params, prompt_ids, output_ids, ctx)
        self.mode = self.params.get("mode", "greedy")
        if self.mode not in ("greedy", "exact"):
            raise ValueError(f"declab.mode must be 'greedy' or 'exact', got {self.mode!r}")
        self.max_span_tokens = int(self.params.get("max_span_tokens", 32))
        if "passage_ids" in self.params and self.params["passage_ids"] is not None:
            self.automaton = SpanAutomaton(self.params["passage_ids"])
        else:
            if ctx.tokenize is None:
                raise ValueError("extractive: the router gave no tokenizer to tokenize declab.passage")
            self.automaton = build_passage_automaton(str(self.params.get("passage", "")), ctx.tokenize)
        self.eos = ctx.eos_token_id
        # "The span ending with a stop": the first token of `stop` (default newline) may end the span like EOS
        # (pair it with SamplingParams(stop=[...]) so vLLM ends the request there).
        stop = self.params.get("stop", "")
        self.stop_ids: list[int] = []
        if stop and ctx.tokenize is not None:
            first = ctx.tokenize(stop)[:1]
            self.stop_ids = [t for t in first if t != self.eos]
        self._state: int | None = self.automaton.start
        self._consumed = 0  # how many of output_ids were fed to the automaton
        self._index_cache: dict[tuple[int, bool, torch.device], torch.Tensor] = {}

    @property
    def state(self) -> int | None:
        """Automaton state of the output so far (``None`` once it left the passage)."""
        return self._state

    def _advance(self) -> None:
        out = self.output_ids
        while self._consumed < len(out):
            tok = int(out[self._consumed])
            self._consumed += 1
            if self._state is not None:
                self._state = self.automaton.step(self._state, tok)

    def _keep_index(self, state: int | None, with_eos: bool, vocab: int, device: torch.device) -> torch.Tensor:
        key = (-1 if state is None else state, with_eos, device)
        idx = self._index_cache.get(key)
        if idx is None:
            toks = [] if state is None else [t for t in self.automaton.allowed(state) if t < vocab]
            if with_eos and self.eos is not None and 0 <= self.eos < vocab and self.eos not in toks:
                toks.append(self.eos)
            if with_eos and state is not None:
                toks += [t for t in self.stop_ids if t < vocab and t not in toks]
            idx = torch.tensor(toks, dtype=torch.long, device=device)
            self._index_cache[key] = idx
        return idx

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        self._advance()
        n = self._consumed
        vocab = logits.shape[-1]
        has_eos = self.eos is not None and 0 <= self.eos < vocab
        if self._state is None or n >= self.max_span_tokens:
            state = None  # only EOS
        else:
            state = self._state
        idx = self._keep_index(state, n >= 1 or state is None, vocab, logits.device)
        if idx.numel() == 0:
            if not has_eos:
                return logits  # nothing valid to force; never return an all -inf row
            idx = self._keep_index(None, True, vocab, logits.device)
        vals = logits[idx]
        logits.fill_(NEG_INF)
        logits[idx] = vals
        if has_eos:
            # Device-side guard (no host sync): if every kept logit is -inf, make EOS the only finite one.
            any_finite = torch.isfinite(vals).any()
            logits[self.eos] = torch.where(any_finite, logits[self.eos], torch.zeros_like(logits[self.eos]))
        return logits


# ----------------------------------------------------------------------------------------------------------------
# Exact mode: the most probable span
# ----------------------------------------------------------------------------------------------------------------

ScoreFn = Callable[[list[list[int]]], torch.Tensor]


def _as_automaton(passage: Sequence[int] | SpanAutomaton) -> SpanAutomaton:
    return passage if isinstance(passage, SpanAutomaton) else SpanAutomaton(list(passage))


def _score_rows(score_fn: ScoreFn, prefixes: list[list[int]]) -> torch.Tensor:
    rows = score_fn(prefixes)
    if rows.ndim != 2 or rows.shape[0] != len(prefixes):
        raise ValueError(f"score_fn returned shape {tuple(rows.shape)} for {len(prefixes)} prefixes")
    return rows


def best_span(
    passage_ids: Sequence[int] | SpanAutomaton,
    score_fn: ScoreFn,
    max_len: int,
    eos_id: int,
    *,
    batch_size: int = 32,
) -> tuple[list[int], float, int]:
    """The most probable span and its log-probability, exactly: ``(span_ids, logprob, n_scored_rows)``.

    ``logprob(s) = sum_i log p(s_i | s_<i) + log p(eos_id | s)`` over non-empty spans ``s`` of at most ``max_len``
    tokens (tokens equal to ``eos_id`` never occur inside a span). ``passage_ids`` is the passage's token ids or a
    ready ``SpanAutomaton`` (e.g. ``build_passage_automaton`` with the tokenization variants).
    ``score_fn(prefixes)`` returns next-token **log**-probabilities ``[len(prefixes), vocab]`` after each generated
    prefix; it must be <= 0 (normalized), which makes a prefix's accumulated log-prob an upper bound on every span
    that extends it, including itself.

    Best-first branch-and-bound over the trie of distinct spans (the automaton enumerates each distinct span once):
    the frontier holds unscored prefixes keyed by their accumulated log-prob ``g``; the ``batch_size`` best ones
    with ``g`` above the incumbent are scored in one ``score_fn`` call, each giving a complete candidate
    (``g + log p(EOS)``) and its children (``g + log p(t)`` for the allowed ``t``). The search stops when the best
    frontier bound is <= the incumbent, so the result is the exact argmax (ties: the first one found). Each
    distinct prefix is scored at most once, so ``n_scored_rows <= 1 + #distinct spans`` (the empty prefix plus
    every span up to ``max_len``), against ``sum_s (|s| + 1)`` rows for scoring every span on its own; with peaked
    distributions it scores only a small part of the trie. Returns ``([], -inf, rows)`` if there is no span.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    sam = _as_automaton(passage_ids)
    best: list[int] = []
    best_lp = NEG_INF
    n_rows = 0
    if max_len < 1 or not any(t != eos_id for t in sam.allowed(sam.start)):
        return best, best_lp, n_rows

    tie = itertools.count()
    # heap entries: (-g, tiebreak, prefix tuple, state)
    heap: list[tuple[float, int, tuple[int, ...], int]] = [(-0.0, next(tie), (), sam.start)]
    while heap:
        batch: list[tuple[float, tuple[int, ...], int]] = []
        while heap and len(batch) < batch_size:
            neg_g, _, prefix, state = heapq.heappop(heap)
            g = -neg_g
            if g <= best_lp:  # every remaining prefix is bounded by the incumbent
                heap.clear()
                break
            batch.append((g, prefix, state))
        if not batch:
            break
        rows = _score_rows(score_fn, [list(p) for _, p, _ in batch])
        n_rows += len(batch)
        # One gather + one host transfer per batch: [EOS, children...] of every scored prefix.
        ri: list[int] = []
        ti: list[int] = []
        children: list[list[int]] = []
        for b, (_, prefix, state) in enumerate(batch):
            toks = [t for t in sam.allowed(state) if t != eos_id] if len(prefix) < max_len else []
            children.append(toks)
            ri.extend([b] * (len(toks) + 1))
            ti.append(eos_id)
            ti.extend(toks)
        dev = rows.device
        vals = rows[torch.tensor(ri, dtype=torch.long, device=dev), torch.tensor(ti, dtype=torch.long, device=dev)]
        vals = vals.double().cpu().tolist()
        pos = 0
        for (g, prefix, state), toks in zip(batch, children):
            eos_lp = vals[pos]
            pos += 1
            if prefix:
                cand = g + eos_lp
                if cand > best_lp:
                    best_lp, best = cand, list(prefix)
            nxt = sam._next[state]
            for t in toks:
                gc = g + vals[pos]
                pos += 1
                if gc > best_lp:
                    heapq.heappush(heap, (-gc, next(tie), prefix + (t,), nxt[t]))
    return best, best_lp, n_rows


def all_spans(passage_ids: Sequence[int] | SpanAutomaton, max_len: int, eos_id: int | None = None) -> list[list[int]]:
    """Every distinct non-empty span of at most ``max_len`` tokens without ``eos_id``, enumerated from the
    segments directly (no automaton walk), in first-occurrence order."""
    segments = passage_ids.segments if isinstance(passage_ids, SpanAutomaton) else (tuple(passage_ids),)
    seen: set[tuple[int, ...]] = set()
    out: list[list[int]] = []
    for seg in segments:
        for i in range(len(seg)):
            for j in range(i + 1, min(len(seg), i + max_len) + 1):
                s = seg[i:j]
                if eos_id is not None and eos_id in s:
                    break
                if s not in seen:
                    seen.add(s)
                    out.append(list(s))
    return out


def brute_force_best_span(
    passage_ids: Sequence[int] | SpanAutomaton,
    score_fn: ScoreFn,
    max_len: int,
    eos_id: int,
) -> tuple[list[int], float, int]:
    """Reference for ``best_span``: scores every distinct span independently (one ``score_fn`` call per span with
    its ``|s| + 1`` prefixes). Same return convention; ties keep the first span in first-occurrence order."""
    best: list[int] = []
    best_lp = NEG_INF
    n_rows = 0
    for span in all_spans(passage_ids, max_len, eos_id):
        prefixes = [span[:i] for i in range(len(span) + 1)]
        rows = _score_rows(score_fn, prefixes)
        n_rows += len(prefixes)
        lp = 0.0
        for i, t in enumerate(span):
            lp += float(rows[i, t].double())
        lp += float(rows[len(span), eos_id].double())
        if lp > best_lp:
            best_lp, best = lp, span
    return best, best_lp, n_rows


def span_logprob(span: Sequence[int], score_fn: ScoreFn, eos_id: int) -> float:
    """``sum_i log p(span_i | span_<i) + log p(eos | span)`` with one batched ``score_fn`` call."""
    span = list(span)
    rows = _score_rows(score_fn, [span[:i] for i in range(len(span) + 1)])
    lp = 0.0
    for i, t in enumerate(span):
        lp += float(rows[i, t].double())
    return lp + float(rows[len(span), eos_id].double())


__all__ = [
    "SpanAutomaton",
    "ExtractiveProcessor",
    "passage_segments",
    "build_passage_automaton",
    "best_span",
    "brute_force_best_span",
    "all_spans",
    "span_logprob",
]
