"""Grammar-constrained decoding (GCD) and ASAp grammar-aligned decoding as per-request logits transforms.

Paper: Kanghee Park, Jiayu Wang, Taylor Berg-Kirkpatrick, Nadia Polikarpova, Loris D'Antoni, "Grammar-Aligned
Decoding", arXiv 2405.21047 (NeurIPS 2024). Reading-list paper 65. Reference code: github.com/ebmoon/transformers-GAD
(``transformers_gad/oracle/oracle_trie.py``, ``generation/logits_process.py``). This file is a fresh implementation
of the algorithm on xgrammar, not a copy of that code. Pure torch + xgrammar: no vLLM import.

Problem. Let ``P`` be the LLM's distribution over token sequences (ending with EOS) and ``G`` the set of sequences
whose text is in the grammar's language. The goal (grammar-aligned decoding) is to sample from ``P(w | w in G) =
P(w) 1[w in G] / Z``. GCD masks, at every step, the tokens that cannot continue a grammatical prefix and renormalises
what is left, i.e. samples ``Q(w) = prod_t P(w_t | w_<t) / M(w_<t)`` with ``M(p) = sum_{allowed v} P(v | p)``. That
is grammatical but distorted: it ignores how much grammatical mass lies *behind* each allowed token.

Expected future grammaticality (EFG). ``EFG(p) = sum_{w in G, w extends p} P(w | p)`` is the exact correction:
sampling ``v`` with probability ``P(v | p) EFG(p v) / EFG(p)`` at every step yields ``P(. | G)`` exactly
(``EFG(p EOS) = 1`` when ``p`` is a complete sentence, ``0`` otherwise). It satisfies

    EFG(p) = sum_{v allowed at p} P(v | p) * EFG(p v).

ASAp (adaptive sampling with approximate expected futures) keeps, per (prompt, grammar), a trie of the prefixes
sampled so far and an over-approximation ``A(p) >= EFG(p)``. Unseen prefixes get ``A = 1``; a visited prefix gets
the recursion above with ``A`` of its visited children and ``1`` for every other allowed token. Each sample is
drawn from ``P(v | p) A(p v) / sum_u P(u | p) A(p u)`` over allowed tokens, then the trie is updated with the model
probabilities seen along the sampled path. ``A`` only decreases, stays an upper bound of ``EFG`` and becomes exact on
every prefix whose grammatical continuations have all been sampled, so the sampling distribution converges to
``P(. | G)`` (the paper's Theorem; verified here on finite grammars in ``tests/test_asap_core.py`` and, through
vLLM, in ``tests/test_asap_engine.py``).

What a trie node stores (sufficient statistics). Node ``p`` holds ``logp = log P(v | parent)`` for its own token
``v`` (the model's raw log-probability at the parent, recorded when the parent was visited) and ``rest = log sum of
P(u | p)`` over the tokens ``u`` allowed at ``p`` whose child has not been visited (EOS included: a completed
sentence has ``EFG = 1``, exact). Then ``log A(p) = logsumexp(rest, logp_c + log A(c) for visited children c)``.
``rest`` is recomputed from the model's full row whenever a child is added: a float64 sum of the step's float32
probabilities over the allowed, unvisited tokens (``_Step``; a subtraction only while it removes at most half of the
sum, and an exact float64 logsumexp near float32 underflow), so ``A`` keeps the model's relative precision when the
visited children carry almost all of the mass, at a third of a logsumexp's cost. ``A`` lives in log space (long
outputs take it far below the smallest double) and is recomputed lazily: an update marks the path to the root dirty
(stopping at the first dirty ancestor), a read cleans the dirty subtree under the node read, so a decoding step
costs O(1) trie work amortised.

When the trie is updated. The processor never learns that its request ended, so the trie is updated eagerly, one
step at a time, as in the reference implementation (which inserts a prefix's children and re-propagates success
rates while generating): when the processor sees that token ``v`` was appended at prefix ``p``, it adds node ``p v``
(with ``P(v | p)`` from the row it kept from the previous step) and recomputes ``rest(p)``; when it first visits a
prefix it stores ``rest`` from the current row. Every value written is an exact model probability and an exact
grammar mask, so any partial path (a request aborted, stopped by ``max_tokens`` or a stop string) leaves a sound
over-approximation: nothing needs rolling back. Within one request this is the same as updating at the end (a
request only reads nodes below its current prefix); concurrent requests on one trie read each other's updates as
soon as they are made, under one lock. EOS (or any stop token) never becomes a node: a sentence that ends has
``EFG = 1`` exactly, the value an unvisited allowed token already has.

Memory. All tries of a worker process live in one ``TrieStore``: an LRU over ``(prompt ids, grammar, namespace,
temperature)`` keys with a byte budget (``DECLAB_ASAP_TRIE_BUDGET_MB``, default 256, or ``configure()``); nodes are
charged ``NODE_BYTES`` each, and every trie ``TRIE_BYTES`` plus the size of its key data (grammar text, prompt ids),
so that many small tries cannot outgrow the budget unseen. Over budget, least-recently-used tries are dropped; if
the trie being grown is alone over budget, its requests stop adding nodes (they keep sampling with what the trie
knows, which is still sound). ``AsapTrie.export(path)`` / ``AsapTrie.load(path)`` write and read a trie as JSON;
with ``DECLAB_ASAP_TRIE_DIR`` set the store loads ``<dir>/<key>.json`` the first time a key is used.
``store_stats()`` reports the store's size (tries, nodes, charged bytes and their peak, evictions).

Temperature. The router hands the processor the raw logits row, before vLLM's temperature ``T``, and the request's
sampling settings in ``ctx.sampling``. At ``T = 1`` the returned row is ``logit + log A(p v)`` on allowed tokens
(``-inf`` elsewhere), so vLLM samples exactly ``P(v | p) A(p v) / Z``, the ASAp step. At another ``T`` the processor
is exact for the tempered model: it records ``log_softmax(logit / T)`` in a trie of its own (one trie per
temperature) and returns ``logit + T log A``, so vLLM, which samples ``softmax(row / T)``, samples
``P_T(v | p) A_T(p v) / Z``. Without ``ctx.sampling`` (pure tests) the processor assumes ``T = 1``. Greedy (``T = 0``) picks the argmax of
``P(v | p) A(p v)``. Exactness also needs ``top_p = 1``, ``top_k = -1``, ``min_p = 0``, no penalties, no
``logit_bias``/``min_tokens``/``bad_words``/``allowed_token_ids`` and no vLLM structured output on the same request
(vLLM applies them before or after this row transform and they change the distribution either way).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
import xgrammar as xgr

from declab.integrations.sdk.rows import RowContext, RowProcessor
from declab.plugins.asap.language import language_is_empty

NEG_INF = float("-inf")

# Per-request parameters that name the grammar (exactly one is given) and the xgrammar front-end of each.
GRAMMAR_PARAMS = ("grammar", "json_schema", "regex")

BUDGET_ENV = "DECLAB_ASAP_TRIE_BUDGET_MB"
TRIE_DIR_ENV = "DECLAB_ASAP_TRIE_DIR"
DEFAULT_BUDGET_MB = 256
# Charge per trie node: a __slots__ object (~100 B), three boxed floats (~72 B) and, on inner nodes, a small dict
# (~230 B). Measured with tracemalloc in tests/test_asap_core.py; a budget is an estimate, not an exact cap.
NODE_BYTES = 400
# Charge per trie besides its nodes: the AsapTrie object, its meta dict and the store's key (~700 B measured the
# same way); the grammar text (1 B a character) and the prompt ids (36 B each: list slot + int object) it keeps are
# charged on top (``AsapTrie.base_bytes``).
TRIE_BYTES = 1000
PROMPT_ID_BYTES = 36

TRIE_FORMAT = "declab-asap-trie/1"


# ---------------------------------------------------------------------------------------------------------------
# Grammar sources, validation and compilation
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GrammarSource:
    """The grammar a request names: ``param`` is ``grammar`` (EBNF), ``json_schema`` or ``regex``."""

    param: str
    text: str

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.param}\0{self.text}".encode()).hexdigest()[:32]


def grammar_source(params: Mapping[str, Any], *, prefix: str = "declab") -> GrammarSource:
    """The one grammar parameter of ``params``; ``ValueError`` naming the parameters if none or several are given."""
    given = [p for p in GRAMMAR_PARAMS if params.get(p) not in (None, "")]
    names = ", ".join(f"{prefix}.{p}" for p in GRAMMAR_PARAMS)
    if not given:
        raise ValueError(f"{prefix}.grammar: give exactly one of {names} (none was given)")
    if len(given) > 1:
        raise ValueError(f"{prefix}.{given[1]}: give exactly one of {names} (got {', '.join(given)})")
    text = params[given[0]]
    if not isinstance(text, str):
        raise ValueError(f"{prefix}.{given[0]} must be a string, got {type(text).__name__}")
    return GrammarSource(given[0], text)


_XGR_LOCATION = re.compile(r"^\s*\[[^\]]*\]\s*\S+?:\d+:\s*")


def _compiler_message(exc: BaseException) -> str:
    """xgrammar's error without its ``[time] file.cc:line:`` prefix, on one line."""
    msg = _XGR_LOCATION.sub("", str(exc)).strip()
    msg = msg.replace("Check failed: (error.empty()) is false: ", "")
    return " ".join(msg.split())[:500] or type(exc).__name__


@lru_cache(maxsize=512)
def _parse_error(param: str, text: str) -> str | None:
    try:
        if param == "grammar":
            grammar = xgr.Grammar.from_ebnf(text)
        elif param == "json_schema":
            grammar = xgr.Grammar.from_json_schema(text)
        elif param == "regex":
            grammar = xgr.Grammar.from_regex(text)
        else:  # pragma: no cover - declaration error
            raise ValueError(f"unknown grammar parameter {param!r}")
    except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError (and friends) with the parser message
        return _compiler_message(e)
    if language_is_empty(grammar):
        return ("the grammar accepts no string (its root rule never derives a finite string: a rule that only "
                "refers to itself or to rules without a base case, or an empty character class [])")
    return None


def check_grammar(source: GrammarSource, *, prefix: str = "declab") -> None:
    """Parse the grammar without a tokenizer (admission time); ``ValueError("declab.<param>: <message>")``."""
    err = _parse_error(source.param, source.text)
    if err is not None:
        raise ValueError(f"{prefix}.{source.param}: {err}")


def validate_grammar_params(params: Mapping[str, Any], *, prefix: str = "declab") -> GrammarSource:
    source = grammar_source(params, prefix=prefix)
    check_grammar(source, prefix=prefix)
    return source


class GrammarCache:
    """Compiled xgrammar grammars for one tokenizer, compiled once per grammar text (LRU)."""

    def __init__(self, tokenizer_info: xgr.TokenizerInfo, *, max_entries: int = 256, max_threads: int = 8) -> None:
        self.tokenizer_info = tokenizer_info
        self.max_entries = max_entries
        self._compiler = xgr.GrammarCompiler(tokenizer_info, max_threads=max_threads, cache_enabled=False)
        self._compiled: OrderedDict[str, xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_tokenizer(
        cls, tokenizer: Any, *, vocab_size: int | None = None, stop_token_ids: Sequence[int] | None = None, **kw: Any
    ) -> "GrammarCache":
        """From a Hugging Face tokenizer object (what vLLM's ``get_tokenizer`` returns for HF models)."""
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids) if stop_token_ids else None
        )
        return cls(info, **kw)

    @classmethod
    def from_vocab(
        cls,
        encoded_vocab: Sequence[str] | Sequence[bytes],
        *,
        vocab_type: str = "raw",
        vocab_size: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        add_prefix_space: bool = False,
        **kw: Any,
    ) -> "GrammarCache":
        """From a vocabulary list (token id -> token string as stored in the tokenizer, or raw bytes).

        ``vocab_type``: ``"raw"`` (tokens are their text), ``"byte_level"`` (GPT-2 style byte-to-unicode, ``Ġ`` =
        space) or ``"byte_fallback"`` (SentencePiece style ``▁`` and ``<0xNN>``).
        """
        vt = {"raw": xgr.VocabType.RAW, "byte_level": xgr.VocabType.BYTE_LEVEL,
              "byte_fallback": xgr.VocabType.BYTE_FALLBACK}[vocab_type]
        info = xgr.TokenizerInfo(
            list(encoded_vocab), vt, vocab_size=vocab_size,
            stop_token_ids=list(stop_token_ids) if stop_token_ids else None, add_prefix_space=add_prefix_space,
        )
        return cls(info, **kw)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer_info.vocab_size)

    def compile(self, source: GrammarSource, *, prefix: str = "declab") -> xgr.CompiledGrammar:
        """The compiled grammar (cached by text); ``ValueError("declab.<param>: <message>")`` if it is invalid."""
        key = source.key
        with self._lock:
            hit = self._compiled.get(key)
            if hit is not None:
                self._compiled.move_to_end(key)
                return hit
        check_grammar(source, prefix=prefix)  # clean, cached parser message for the common errors
        try:
            if source.param == "grammar":
                compiled = self._compiler.compile_grammar(source.text)
            elif source.param == "json_schema":
                compiled = self._compiler.compile_json_schema(source.text)
            else:
                compiled = self._compiler.compile_regex(source.text)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{prefix}.{source.param}: {_compiler_message(e)}") from e
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > self.max_entries:
                self._compiled.popitem(last=False)
        return compiled


_CACHES: dict[int, tuple[Any, GrammarCache]] = {}
_CACHES_LOCK = threading.Lock()


def _context_tokenizer(ctx: Any) -> Any:
    """The served model's HF tokenizer: ``ctx.tokenizer`` (object or zero-argument getter), else the router's."""
    tok = getattr(ctx, "tokenizer", None)
    if tok is not None:
        return tok if hasattr(tok, "get_vocab") else tok()
    # Until RowContext carries the tokenizer: the router's ``tokenize`` is a bound method of the router, whose
    # lazily loaded ``_tokenizer`` is vLLM's tokenizer for the served model.
    owner = getattr(getattr(ctx, "tokenize", None), "__self__", None)
    tok = getattr(owner, "_tokenizer", None) if owner is not None else None
    if tok is None:
        raise RuntimeError("asap/gcd need the served model's tokenizer: RowContext.tokenizer is not set")
    return tok


def context_stop_ids(ctx: Any) -> list[int]:
    """The tokens that end a request: ``ctx.stop_token_ids`` (every EOS id of the generation config) when the
    context carries it, else ``[ctx.eos_token_id]``. The grammar allows them only where it may end."""
    ids = getattr(ctx, "stop_token_ids", None)
    if ids:
        return list(dict.fromkeys(int(t) for t in ids))
    eos = getattr(ctx, "eos_token_id", None)
    return [int(eos)] if eos is not None else []


def grammar_cache_for_context(ctx: Any) -> GrammarCache:
    """The ``GrammarCache`` of the context's tokenizer (``ctx.grammar_cache`` if the context carries one)."""
    cache = getattr(ctx, "grammar_cache", None)
    if isinstance(cache, GrammarCache):
        return cache
    tok = _context_tokenizer(ctx)
    with _CACHES_LOCK:
        hit = _CACHES.get(id(tok))
        if hit is not None and hit[0] is tok:
            return hit[1]
    cache = GrammarCache.from_tokenizer(tok, vocab_size=ctx.vocab_size, stop_token_ids=context_stop_ids(ctx) or None)
    with _CACHES_LOCK:
        _CACHES[id(tok)] = (tok, cache)  # the strong reference keeps id(tok) unique
    return cache


# ---------------------------------------------------------------------------------------------------------------
# Bitmask helpers
# ---------------------------------------------------------------------------------------------------------------
_BIT_SHIFTS: dict[torch.device, torch.Tensor] = {}


def unpack_bitmask(bitmask: torch.Tensor, size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """xgrammar's int32 bitmask row ``[ceil(V/32)]`` -> bool ``[size]`` (bit ``i`` of word ``j`` = token ``32j+i``);
    positions past the bitmask are False."""
    device = torch.device(device) if device is not None else bitmask.device
    words = bitmask.reshape(-1).to(device, non_blocking=True)
    shifts = _BIT_SHIFTS.get(device)
    if shifts is None:
        shifts = _BIT_SHIFTS[device] = torch.arange(32, dtype=torch.int32, device=device)
    bits = ((words.unsqueeze(-1) >> shifts) & 1).reshape(-1).bool()
    if bits.numel() >= size:
        return bits[:size]
    return torch.cat([bits, torch.zeros(size - bits.numel(), dtype=torch.bool, device=device)])


def _logsumexp(values: Iterable[float]) -> float:
    vals = [v for v in values if v != NEG_INF]
    if not vals:
        return NEG_INF
    m = max(vals)
    if m == math.inf:
        return math.inf
    return m + math.log(math.fsum(math.exp(v - m) for v in vals))


# ---------------------------------------------------------------------------------------------------------------
# The trie
# ---------------------------------------------------------------------------------------------------------------
class TrieNode:
    """One sampled prefix. ``logp``: log P(token | parent prefix); ``rest``: log of the allowed, unvisited mass at
    this prefix (None until the prefix is visited); ``log_efg``: cached log A(prefix), valid when not ``dirty``."""

    __slots__ = ("parent", "token", "logp", "rest", "log_efg", "dirty", "children", "visits")

    def __init__(self, parent: "TrieNode | None", token: int, logp: float) -> None:
        self.parent = parent
        self.token = token
        self.logp = logp
        self.rest: float | None = None
        self.log_efg = 0.0  # A = 1 until visited
        self.dirty = False
        self.children: dict[int, TrieNode] = {}
        self.visits = 0  # requests that reached this prefix (bookkeeping for checks; no part of A)


class AsapTrie:
    """Sampled prefixes of one (prompt, grammar) with their over-approximated expected future grammaticality."""

    def __init__(self, key: str = "", meta: Mapping[str, Any] | None = None) -> None:
        self.key = key
        self.meta: dict[str, Any] = dict(meta or {})
        self.root = TrieNode(None, -1, 0.0)
        self.n_nodes = 1
        self.samples = 0  # requests that visited the root

    # -- structure -----------------------------------------------------------------------------------------
    @property
    def base_bytes(self) -> int:
        """What the trie costs besides its nodes (charged once, when it enters the store)."""
        grammar = self.meta.get("grammar") or ""
        return TRIE_BYTES + len(str(grammar)) + PROMPT_ID_BYTES * len(self.meta.get("prompt_ids") or ())

    @property
    def nbytes(self) -> int:
        return self.base_bytes + self.n_nodes * NODE_BYTES

    def find(self, prefix: Sequence[int]) -> TrieNode | None:
        node = self.root
        for t in prefix:
            node = node.children.get(int(t))
            if node is None:
                return None
        return node

    def add_child(self, parent: TrieNode, token: int, logp: float, parent_rest: float) -> TrieNode:
        """Record that ``token`` (model log-prob ``logp`` at ``parent``) was sampled at ``parent``; ``parent_rest`` is
        the log of the allowed mass at ``parent`` that is left unvisited once ``token`` is visited."""
        token = int(token)
        child = parent.children.get(token)
        if child is None:
            child = TrieNode(parent, token, float(logp))
            parent.children[token] = child
            self.n_nodes += 1
        parent.rest = float(parent_rest)
        self._mark_dirty(parent)
        return child

    def visit(self, node: TrieNode, rest: float) -> None:
        """First visit of a prefix: ``rest`` = log of its allowed mass not covered by visited children."""
        node.rest = float(rest)
        self._mark_dirty(node)

    @staticmethod
    def _mark_dirty(node: TrieNode | None) -> None:
        # Invariant: a dirty node's parent is dirty, so the walk stops at the first dirty ancestor.
        while node is not None and not node.dirty:
            node.dirty = True
            node = node.parent

    # -- values --------------------------------------------------------------------------------------------
    def log_efg(self, node: TrieNode) -> float:
        """log A(node), recomputing the dirty part of its subtree (iterative post-order)."""
        if not node.dirty:
            return node.log_efg
        stack: list[tuple[TrieNode, bool]] = [(node, False)]
        while stack:
            n, expanded = stack.pop()
            if expanded:
                terms = [c.logp + c.log_efg for c in n.children.values()]
                if n.rest is not None:
                    terms.append(n.rest)
                    n.log_efg = _logsumexp(terms)
                else:  # pragma: no cover - nodes are visited when created; a loaded file may hold such a node
                    n.log_efg = 0.0
                n.dirty = False
            else:
                stack.append((n, True))
                stack.extend((c, False) for c in n.children.values() if c.dirty)
        return node.log_efg

    def efg(self, prefix: Sequence[int] = ()) -> float:
        """A(prefix) (1 for a prefix the trie has never seen)."""
        node = self.find(prefix)
        return 1.0 if node is None else math.exp(self.log_efg(node))

    def child_log_efgs(self, node: TrieNode) -> tuple[list[int], list[float]]:
        ids, vals = [], []
        for t, c in node.children.items():
            ids.append(t)
            vals.append(self.log_efg(c))
        return ids, vals

    def iter_nodes(self) -> Iterator[tuple[tuple[int, ...], TrieNode]]:
        stack: list[tuple[tuple[int, ...], TrieNode]] = [((), self.root)]
        while stack:
            prefix, node = stack.pop()
            yield prefix, node
            stack.extend((prefix + (t,), c) for t, c in node.children.items())

    # -- persistence ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self.log_efg(self.root)
        parent, token, logp, rest, visits = [], [], [], [], []
        index = {id(self.root): 0}
        order = [self.root]
        for node in order:  # breadth-first: parents before children
            for c in node.children.values():
                index[id(c)] = len(order)
                order.append(c)
        for node in order:
            parent.append(-1 if node.parent is None else index[id(node.parent)])
            token.append(node.token)
            logp.append(node.logp)
            rest.append(node.rest)
            visits.append(node.visits)
        return {
            "format": TRIE_FORMAT, "key": self.key, "meta": self.meta, "samples": self.samples,
            "nodes": {"parent": parent, "token": token, "logp": logp, "rest": rest, "visits": visits},
            "log_efg_root": self.root.log_efg,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AsapTrie":
        if d.get("format") != TRIE_FORMAT:
            raise ValueError(f"not an ASAp trie file (format {d.get('format')!r}, expected {TRIE_FORMAT!r})")
        trie = cls(d.get("key", ""), d.get("meta"))
        trie.samples = int(d.get("samples", 0))
        nodes = d["nodes"]
        parent, token, logp, rest = nodes["parent"], nodes["token"], nodes["logp"], nodes["rest"]
        visits = nodes.get("visits") or [0] * len(parent)  # absent in files written before visit counts
        if not parent or parent[0] != -1:
            raise ValueError("trie file: node 0 must be the root")
        built = [trie.root]
        trie.root.rest = None if rest[0] is None else float(rest[0])
        trie.root.visits = int(visits[0])
        for i in range(1, len(parent)):
            p = built[parent[i]]  # parents come first
            node = TrieNode(p, int(token[i]), float(logp[i]))
            node.rest = None if rest[i] is None else float(rest[i])
            node.visits = int(visits[i])
            p.children[node.token] = node
            built.append(node)
        trie.n_nodes = len(built)
        for node in reversed(built):  # everything dirty: values are recomputed on first read
            node.dirty = True
        return trie

    def export(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, separators=(",", ":"))  # -inf is written as -Infinity (Python json)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AsapTrie":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def reachable_bytes(root: Any) -> int:
    """``sys.getsizeof`` summed over every object reachable from ``root`` through dicts, sequences, sets and
    ``__slots__`` / ``__dict__`` attributes, each object once (classes and tensors excluded)."""
    import sys

    seen: set[int] = set()
    stack, total = [root], 0
    while stack:
        o = stack.pop()
        if o is None or id(o) in seen or isinstance(o, (type, torch.Tensor)):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif hasattr(type(o), "__slots__"):
            stack.extend(getattr(o, a) for a in type(o).__slots__ if hasattr(o, a))
        elif hasattr(o, "__dict__"):
            stack.append(vars(o))
    return total


def trie_key(prompt_ids: Sequence[int], source: GrammarSource, namespace: str = "", temperature: float = 1.0) -> str:
    h = hashlib.sha256()
    h.update(f"{source.param}\0{source.text}\0{namespace}\0{temperature!r}\0".encode())
    h.update(struct.pack(f"<{len(prompt_ids)}q", *[int(t) for t in prompt_ids]))
    return h.hexdigest()[:40]


class TrieStore:
    """Every trie of the process: an LRU over keys with a byte budget. Callers hold ``LOCK`` while using tries."""

    def __init__(self, budget_bytes: int, preload_dir: str | os.PathLike | None = None) -> None:
        self.budget_bytes = int(budget_bytes)
        self.preload_dir = Path(preload_dir) if preload_dir else None
        self._tries: OrderedDict[str, AsapTrie] = OrderedDict()
        self.total_bytes = 0
        self.evictions = 0
        self.peak_bytes = 0  # the most total_bytes has been after any change (a budget check reads it)

    def __len__(self) -> int:
        return len(self._tries)

    def __contains__(self, key: str) -> bool:
        return key in self._tries

    def keys(self) -> list[str]:
        return list(self._tries)

    def get(self, key: str) -> AsapTrie | None:
        trie = self._tries.get(key)
        if trie is not None:
            self._tries.move_to_end(key)
        return trie

    def get_or_create(self, key: str, meta: Mapping[str, Any] | None = None) -> AsapTrie:
        trie = self.get(key)
        if trie is None:
            trie = self._preload(key) or AsapTrie(key, meta)
            if trie.nbytes > self.budget_bytes:
                return trie  # alone over the budget: never stored, so its requests read it but cannot grow it
            self.put(trie)
        return trie

    def _preload(self, key: str) -> AsapTrie | None:
        if self.preload_dir is None:
            return None
        path = self.preload_dir / f"{key}.json"
        if not path.is_file():
            return None
        trie = AsapTrie.load(path)
        return trie if trie.key == key else None

    def put(self, trie: AsapTrie) -> None:
        old = self._tries.pop(trie.key, None)
        if old is not None:
            self.total_bytes -= old.nbytes
        self._tries[trie.key] = trie
        self.total_bytes += trie.nbytes
        self._evict(keep=trie)
        self.peak_bytes = max(self.peak_bytes, self.total_bytes)

    def remove(self, key: str) -> None:
        old = self._tries.pop(key, None)
        if old is not None:
            self.total_bytes -= old.nbytes

    def clear(self) -> None:
        self._tries.clear()
        self.total_bytes = 0
        self.peak_bytes = 0

    def measured_bytes(self) -> int:
        """What the tries really hold (``reachable_bytes`` over the store): a check of the ``NODE_BYTES`` /
        ``TRIE_BYTES`` charges, linear in the number of nodes (benchmarks and tests, not the hot path)."""
        return reachable_bytes(self._tries)

    def stats(self) -> dict[str, Any]:
        """Size of the store: tries, nodes, charged bytes (now and peak), budget, evictions."""
        return {
            "tries": len(self._tries),
            "nodes": sum(t.n_nodes for t in self._tries.values()),
            "bytes": self.total_bytes,
            "peak_bytes": self.peak_bytes,
            "budget_bytes": self.budget_bytes,
            "evictions": self.evictions,
        }

    def may_grow(self, trie: AsapTrie, nodes: int = 1) -> bool:
        """Whether ``trie`` may add ``nodes`` nodes: evicts other tries, least recently used first, to make room.
        False if ``trie`` is no longer in the store or is alone over the budget."""
        if self._tries.get(trie.key) is not trie:
            return False
        self._tries.move_to_end(trie.key)
        need = nodes * NODE_BYTES
        self._evict(keep=trie, extra=need)
        return self.total_bytes + need <= self.budget_bytes

    def charge(self, trie: AsapTrie, nodes: int = 1) -> None:
        if self._tries.get(trie.key) is trie:
            self.total_bytes += nodes * NODE_BYTES
            self.peak_bytes = max(self.peak_bytes, self.total_bytes)

    def _evict(self, keep: AsapTrie, extra: int = 0) -> None:
        while self.total_bytes + extra > self.budget_bytes and len(self._tries) > 1:
            key = next(iter(self._tries))
            if self._tries[key] is keep:  # keep is the most recent; only it is left
                break
            self.remove(key)
            self.evictions += 1

    def export_all(self, folder: str | os.PathLike) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for key, trie in list(self._tries.items()):
            path = folder / f"{key}.json"
            trie.export(path)
            out.append(path)
        return out


def _env_budget() -> int:
    try:
        mb = float(os.environ.get(BUDGET_ENV, DEFAULT_BUDGET_MB))
    except ValueError:
        mb = DEFAULT_BUDGET_MB
    return int(mb * 1024 * 1024)


LOCK = threading.RLock()
STORE = TrieStore(_env_budget(), os.environ.get(TRIE_DIR_ENV) or None)


def store_stats() -> dict[str, Any]:
    """``TrieStore.stats`` of this process's store (in the vLLM worker: the engine's ASAp state). With an in-process
    engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) the caller's process is the worker; otherwise ask the worker with
    ``llm.collective_rpc(worker_store_stats)`` (needs ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` for the callable)."""
    with LOCK:
        return STORE.stats()


def worker_store_stats(_worker: Any = None) -> dict[str, Any]:
    """``store_stats`` in the form ``collective_rpc`` calls (the worker object is passed first and ignored)."""
    return store_stats()


def configure(*, budget_bytes: int | None = None, preload_dir: str | os.PathLike | None = None) -> TrieStore:
    """Change the process-wide trie budget (evicting at once if needed) and/or the preload folder."""
    with LOCK:
        if budget_bytes is not None:
            STORE.budget_bytes = int(budget_bytes)
            newest = next(reversed(STORE._tries.values()), None)  # noqa: SLF001
            if newest is not None:
                STORE._evict(keep=newest)  # noqa: SLF001
            if STORE.total_bytes > STORE.budget_bytes:
                STORE.clear()
        if preload_dir is not None:
            STORE.preload_dir = Path(preload_dir) if preload_dir else None
    return STORE


# ---------------------------------------------------------------------------------------------------------------
# Row processors
# ---------------------------------------------------------------------------------------------------------------
class GcdProcessor(RowProcessor):
    """Plain grammar-constrained decoding: tokens the grammar forbids get ``-inf``; EOS only where the grammar may
    end; once the grammar is complete with no possible continuation only EOS is left (forced)."""

    def __init__(
        self, params: Mapping[str, Any], prompt_ids: Sequence[int], output_ids: Sequence[int], ctx: RowContext
    ) -> None:
        super().__init__(params, prompt_ids, output_ids, ctx)
        self.source = grammar_source(self.params)
        cache = grammar_cache_for_context(ctx)
        self.compiled = cache.compile(self.source)
        self.stop_ids = context_stop_ids(ctx) or [int(t) for t in cache.tokenizer_info.stop_token_ids]
        self.vocab_size = int(ctx.vocab_size)
        self.matcher = xgr.GrammarMatcher(self.compiled, override_stop_tokens=self.stop_ids or None)
        self._bitmask = xgr.allocate_token_bitmask(1, max(self.vocab_size, cache.vocab_size))
        self._n = 0  # output tokens fed to the matcher
        self.dead = False  # a token the grammar rejects was generated (or the grammar already ended)

    # -- matcher state -------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.matcher.reset()
        self._n = 0
        self.dead = False

    def _sync(self) -> list[int]:
        """Feed the tokens appended to ``output_ids`` since the last call; returns them (empty on a rollback)."""
        n = len(self.output_ids)
        if n < self._n:  # the engine rolled tokens back: replay from scratch
            self._reset()
            self._on_rollback()
        new = [int(t) for t in self.output_ids[self._n:n]]
        self._n = n
        for t in new:
            if self.dead:
                break
            if self.matcher.is_terminated() or not self.matcher.accept_token(t):
                self.dead = True
        return new

    def _on_rollback(self) -> None:
        pass

    @property
    def finished(self) -> bool:
        return self.dead or self.matcher.is_terminated()

    def allowed_mask(self, size: int, device: torch.device | str) -> torch.Tensor:
        self.matcher.fill_next_token_bitmask(self._bitmask)
        return unpack_bitmask(self._bitmask[0], size, device)

    def _force_eos(self, row: torch.Tensor) -> torch.Tensor:
        if not self.stop_ids:
            return row  # nothing to force; never hand back an all -inf row
        row.fill_(NEG_INF)
        row[self.stop_ids[0]] = 0.0
        return row

    @staticmethod
    def _never_empty(row: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        # If every allowed token is -inf (banned upstream), fall back to uniform over the allowed tokens. No sync.
        fallback = torch.zeros_like(row).masked_fill_(~allowed, NEG_INF)
        return torch.where(torch.isfinite(row).any(), row, fallback)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        self._sync()
        row = logits
        if self.finished:
            return self._force_eos(row)
        allowed = self.allowed_mask(row.shape[-1], row.device)
        row.masked_fill_(~allowed, NEG_INF)
        return self._never_empty(row, allowed)


# Below these the float32 fast paths of ``_Step`` are replaced by exact float64 log-space computations.
FAST_MIN_MASS = 1e-20  # an allowed probability mass
FAST_MIN_PROB = 1e-30  # one token's probability


class _Step:
    """One decoding step's row as ASAp's trie updates need it, and the rest masses computed from it.

    Why not a logsumexp per rest mass: a float64 logsumexp over the vocabulary costs ~120 us on one CPU thread (the
    vLLM worker's), more than half of GCD's whole step, and a fresh prefix needs two (its first visit, then the
    child it samples). Instead the step's probabilities are computed once (one float32 softmax: relative error
    ~1e-7 per token, like the float32 logits they come from), masked to the allowed tokens and summed in float64.
    The tokens a rest mass excludes (visited children) only ever grow within a step, so they are zeroed in place
    and their probabilities subtracted from the sum while what is removed is at most half of it (no cancellation:
    the result keeps the sum's relative precision); otherwise the sum is recomputed from the zeroed vector. Only
    float32 underflow can hurt it (probabilities below 1e-38 lose digits, below 1e-45 vanish), so a mass under
    ``FAST_MIN_MASS`` (where 8192 such tokens could matter at 1e-14) and a log-probability under
    ``FAST_MIN_LOGP`` are recomputed exactly in log space (float64 logsumexp).
    """

    __slots__ = ("x", "allowed", "probs", "mass", "excluded", "_logp")

    def __init__(self, x: torch.Tensor, allowed: torch.Tensor) -> None:
        self.x = x  # the (tempered) float32 logits row
        self.allowed = allowed
        self.probs = torch.softmax(x, dim=-1)  # allowed, not excluded tokens' probabilities once masked
        self.mass: float | None = None  # float64 sum of the masked probs
        self.excluded: set[int] = set()
        self._logp: torch.Tensor | None = None

    @property
    def logp(self) -> torch.Tensor:
        if self._logp is None:
            self._logp = torch.log_softmax(self.x.double(), dim=-1)
        return self._logp

    def token_logp(self, t: int) -> float:
        """``log P(t | prefix)``: from the softmax when it is far from float32 underflow, else exact."""
        p = float(self.probs[t])  # an allowed token not excluded yet: masking left its value as it was
        return math.log(p) if p >= FAST_MIN_PROB else float(self.logp[t])

    def rest(self, exclude: Iterable[int]) -> float:
        """``log`` of the allowed probability mass outside ``exclude`` (which must contain every token excluded by
        an earlier call on this step)."""
        if self.mass is None:
            self.probs.mul_(self.allowed)  # NaN stays NaN (caught by the caller)
            self.mass = float(self.probs.sum(dtype=torch.float64))
        new = [int(t) for t in exclude if t not in self.excluded]
        if new:
            self.excluded.update(new)
            removed = 0.0
            for t in new:
                removed += float(self.probs[t])
                self.probs[t] = 0.0
            if removed <= 0.5 * self.mass:
                self.mass -= removed
            else:
                self.mass = float(self.probs.sum(dtype=torch.float64))
        if self.mass >= FAST_MIN_MASS or math.isnan(self.mass):
            return math.log(self.mass) if self.mass > 0 else self.mass
        if int(self.allowed.sum()) <= sum(1 for t in self.excluded if self.allowed[t]):
            return NEG_INF  # nothing allowed is left (a forced token was sampled): exact, no logsumexp needed
        masked = self.logp.masked_fill(~self.allowed, NEG_INF)
        if self.excluded:
            masked[torch.tensor(sorted(self.excluded), dtype=torch.long, device=masked.device)] = NEG_INF
        return float(torch.logsumexp(masked, dim=-1))


class AsapProcessor(GcdProcessor):
    """ASAp: the GCD mask plus ``log A(prefix + token)`` on every allowed token, with the shared trie updated from
    the model's raw probabilities as the request decodes (see the module docstring)."""

    def __init__(
        self, params: Mapping[str, Any], prompt_ids: Sequence[int], output_ids: Sequence[int], ctx: RowContext
    ) -> None:
        super().__init__(params, prompt_ids, output_ids, ctx)
        # The request's temperature (the router fills ctx.sampling; None outside the engine = untempered).
        t = float(ctx.sampling.temperature) if getattr(ctx, "sampling", None) is not None else 1.0
        # T = 0 (greedy) and T = 1 use the untempered model; another T gets its own trie of tempered probabilities.
        self.temperature = 1.0 if t <= 0.0 or not math.isfinite(t) else t
        self.namespace = str(self.params.get("namespace") or "")
        self.prompt_ids = list(prompt_ids or ())
        key = trie_key(self.prompt_ids, self.source, self.namespace, self.temperature)
        meta = {
            "param": self.source.param, "grammar": self.source.text, "namespace": self.namespace,
            "temperature": self.temperature, "prompt_ids": self.prompt_ids, "vocab_size": self.vocab_size,
            "eos_token_id": getattr(ctx, "eos_token_id", None),
        }
        with LOCK:
            self.trie: AsapTrie | None = STORE.get_or_create(key, meta)
        self.node: TrieNode | None = self.trie.root if self.trie is not None else None
        self._depth = 0  # tokens of output_ids that self.node accounts for
        self._prev: _Step | None = None  # the last row seen (log-probs, allowed mask, allowed probabilities)
        self._counted = False

    def _on_rollback(self) -> None:
        self._detach()

    def _detach(self) -> None:
        """Stop reading/updating the trie for this request (what it wrote so far stays valid)."""
        self.node = None
        self._prev = None

    def _advance(self, new: list[int]) -> None:
        """Walk (and grow) the trie along the tokens appended since the last call."""
        trie, node = self.trie, self.node
        if trie is None or node is None or not new:
            return
        stop = set(self.stop_ids)
        for i, t in enumerate(new):
            child = node.children.get(t)
            if child is None:
                if i > 0 or self._prev is None or t in stop or self.dead or not STORE.may_grow(trie):
                    # No row for this prefix (several tokens at once), an ended sentence, a rejected token or the
                    # budget: nothing is recorded and the request stops using the trie.
                    self._detach()
                    return
                step = self._prev
                logp = step.token_logp(t)
                rest = step.rest([*node.children.keys(), t])
                if math.isnan(rest) or math.isnan(logp):  # a NaN row must never reach the shared trie
                    self._detach()
                    return
                child = trie.add_child(node, t, logp, rest)
                STORE.charge(trie)
            child.visits += 1
            node = child
        self.node = node
        self._prev = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        new = self._sync()
        row = logits
        if self.finished:
            self._detach()
            return self._force_eos(row)
        allowed = self.allowed_mask(row.shape[-1], row.device)
        with LOCK:
            self._advance(new)
            trie, node = self.trie, self.node
            ids: list[int] = []
            vals: list[float] = []
            if trie is not None and node is not None:
                # A copy: the row is masked in place below, the step may need the raw values at the next call.
                x = row.float() / self.temperature if self.temperature != 1.0 else row.float().clone()
                step = _Step(x, allowed)
                if node.rest is None:  # first visit of this prefix
                    rest = step.rest(node.children.keys())
                    if math.isnan(rest):  # a NaN row must never reach the shared trie
                        self._detach()
                        step = None
                    else:
                        trie.visit(node, rest)
                if step is not None:
                    if node is trie.root and not self._counted:
                        trie.samples += 1
                        node.visits += 1
                        self._counted = True
                    ids, vals = trie.child_log_efgs(node)
                    self._prev = step
        row.masked_fill_(~allowed, NEG_INF)
        if ids:
            adj = torch.tensor(vals, dtype=row.dtype) * self.temperature
            index = torch.tensor(ids, dtype=torch.long)
            if row.device.type != "cpu":
                adj, index = adj.to(row.device, non_blocking=True), index.to(row.device, non_blocking=True)
            row.index_add_(0, index, adj)
        return self._never_empty(row, allowed)


# ---------------------------------------------------------------------------------------------------------------
# Exact reference distributions for finite grammars (tests and benchmarks)
# ---------------------------------------------------------------------------------------------------------------
def grammar_prefix_tree(
    compiled: xgr.CompiledGrammar,
    *,
    vocab_size: int,
    stop_token_ids: Sequence[int],
    max_tokens: int = 32,
    max_prefixes: int = 200_000,
) -> dict[tuple[int, ...], list[int]]:
    """Every token prefix a finite grammar allows -> the tokens allowed after it (stop tokens included).

    Complete sequences are ``prefix + (stop,)`` for each allowed stop token. ``ValueError`` if a prefix reaches
    ``max_tokens`` tokens (the language is infinite or too long) or there are more than ``max_prefixes`` prefixes.
    """
    stop = [int(t) for t in stop_token_ids]
    stop_set = set(stop)
    bitmask = xgr.allocate_token_bitmask(1, vocab_size)
    tree: dict[tuple[int, ...], list[int]] = {}
    stack: list[tuple[tuple[int, ...], xgr.GrammarMatcher]] = [
        ((), xgr.GrammarMatcher(compiled, override_stop_tokens=stop or None))
    ]
    while stack:
        prefix, matcher = stack.pop()
        matcher.fill_next_token_bitmask(bitmask)
        allowed = unpack_bitmask(bitmask[0], vocab_size).nonzero().flatten().tolist()
        tree[prefix] = allowed
        if len(tree) > max_prefixes:
            raise ValueError(f"grammar has more than {max_prefixes} token prefixes")
        for t in allowed:
            if t in stop_set:
                continue
            if len(prefix) + 1 >= max_tokens:
                raise ValueError(f"grammar allows token sequences of {max_tokens} tokens or more")
            m = matcher.fork()
            if not m.accept_token(t):  # pragma: no cover - the mask said it was allowed
                raise RuntimeError(f"matcher rejected allowed token {t}")
            stack.append((prefix + (t,), m))
    return tree


def complete_sequences(
    tree: Mapping[tuple[int, ...], Sequence[int]], stop_token_ids: Sequence[int]
) -> list[tuple[int, ...]]:
    """The complete token sequences of a prefix tree (each ends with a stop token), sorted."""
    stop = set(int(t) for t in stop_token_ids)
    return sorted(p + (t,) for p, allowed in tree.items() for t in allowed if t in stop)


def exact_distributions(
    tree: Mapping[tuple[int, ...], Sequence[int]],
    logprobs: Mapping[tuple[int, ...], torch.Tensor],
    stop_token_ids: Sequence[int],
) -> tuple[dict[tuple[int, ...], float], dict[tuple[int, ...], float], float]:
    """Given the model's log-prob row at every prefix of ``tree``, return ``(target, gcd, log_z)``.

    ``target[w] = P(w) / Z`` (the grammar-conditioned distribution that ASAp converges to), ``gcd[w]`` = the
    probability that plain grammar-constrained sampling produces ``w``, ``Z`` = total grammatical mass. Keys are
    complete token sequences (ending with a stop token). Float64 throughout.
    """
    seqs = complete_sequences(tree, stop_token_ids)
    log_m: dict[tuple[int, ...], float] = {}
    for prefix, allowed in tree.items():
        row = logprobs[prefix].double()
        log_m[prefix] = float(torch.logsumexp(row[torch.tensor(list(allowed), dtype=torch.long)], dim=-1))
    log_p: dict[tuple[int, ...], float] = {}
    log_q: dict[tuple[int, ...], float] = {}
    for w in seqs:
        lp = lq = 0.0
        for i, t in enumerate(w):
            prefix = w[:i]
            step = float(logprobs[prefix].double()[t])
            lp += step
            lq += step - log_m[prefix]
        log_p[w], log_q[w] = lp, lq
    log_z = _logsumexp(log_p.values())
    target = {w: math.exp(v - log_z) for w, v in log_p.items()}
    gcd = {w: math.exp(v) for w, v in log_q.items()}
    return target, gcd, log_z


def kl_divergence(p: Mapping[Any, float], q: Mapping[Any, float]) -> float:
    """KL(p || q) in nats over the keys of ``p`` (``0 log 0 = 0``; ``inf`` if ``p`` has mass where ``q`` has none)."""
    total = 0.0
    for k, pk in p.items():
        if pk <= 0:
            continue
        qk = q.get(k, 0.0)
        if qk <= 0:
            return math.inf
        total += pk * math.log(pk / qk)
    return max(total, 0.0)


def empirical(samples: Iterable[Any]) -> dict[Any, float]:
    counts: dict[Any, int] = {}
    n = 0
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
        n += 1
    return {k: c / n for k, c in counts.items()} if n else {}
