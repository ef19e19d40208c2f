"""The n-gram filter of Superposed Decoding: interpolated count-based n-gram models (pure numpy / torch).

The paper filters the k x k candidate drafts with an interpolation of 2- to 6-gram models built from a large corpus
(its repository pickles ``{context tuple: {next token: count}}`` dictionaries). We cannot ship a web-scale corpus, so
the tables are built from text every install has: the Python standard library's own ``.py`` sources (code and
English docstrings), tokenized with the served model's tokenizer, at most ``MAX_CORPUS_BYTES`` of them in sorted
path order. They are built at first use and cached under ``~/.cache/declab/superposed/`` (``DECLAB_CACHE_DIR``
overrides), keyed by the tokenizer's vocabulary, the corpus files and ``MIN_COUNT``; ``NGramTables.describe()``
reports their size.

Compact layout, per context length ``c`` (1..5, i.e. 2- to 6-grams): the 64-bit hash of every context seen at least
``MIN_COUNT`` times (``MIN_COUNT`` drops the long tail of singletons of c >= 2), sorted, with a CSR of its next
tokens and their counts. A lookup is one ``searchsorted``. ``prob(c, context, next)`` is ``count / total`` of that
context, or ``None`` when the context was never seen (the paper's ``-1``: that order then adds nothing).
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

MAX_CONTEXT = 5  # 6-grams: the paper's default interpolation uses context lengths 1..5
MAX_CORPUS_BYTES = 6_000_000
MIN_COUNT = 2  # contexts of length >= 2 seen once are dropped (length 1 keeps everything)
_MULT = np.uint64(0x9E3779B97F4A7C15)
_FORMAT = 1


def _hash_windows(tokens: np.ndarray, c: int) -> np.ndarray:
    """64-bit hash of every window ``tokens[i : i + c]`` (i = 0 .. len - c), as uint64 (wrapping arithmetic)."""
    n = len(tokens) - c + 1
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(c):
            h = h * _MULT + (tokens[j : j + n].astype(np.uint64) + np.uint64(1))
    return h


def hash_context(context: Sequence[int]) -> int:
    return int(_hash_windows(np.asarray(context, dtype=np.int64), len(context))[0])


@dataclass
class _Order:
    keys: np.ndarray  # uint64 [contexts], sorted
    starts: np.ndarray  # int64 [contexts + 1], CSR into next_ids / counts
    next_ids: np.ndarray  # int32
    counts: np.ndarray  # int32
    totals: np.ndarray  # int64 [contexts]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.starts, self.next_ids, self.counts, self.totals))


def _build_order(tokens: np.ndarray, c: int, min_count: int) -> _Order:
    ctx = _hash_windows(tokens[:-1], c)  # context ending before position i + c
    nxt = tokens[c:].astype(np.int64)
    order = np.lexsort((nxt, ctx))
    ctx, nxt = ctx[order], nxt[order]
    new_pair = np.ones(len(ctx), dtype=bool)
    new_pair[1:] = (ctx[1:] != ctx[:-1]) | (nxt[1:] != nxt[:-1])
    pair_starts = np.flatnonzero(new_pair)
    pair_ctx, pair_next = ctx[pair_starts], nxt[pair_starts]
    pair_counts = np.diff(np.append(pair_starts, len(ctx)))
    new_ctx = np.ones(len(pair_ctx), dtype=bool)
    new_ctx[1:] = pair_ctx[1:] != pair_ctx[:-1]
    ctx_starts = np.flatnonzero(new_ctx)
    totals = np.add.reduceat(pair_counts, ctx_starts) if len(ctx_starts) else np.zeros(0, dtype=np.int64)
    keep_ctx = totals >= (min_count if c > 1 else 1)
    ctx_id = np.cumsum(new_ctx) - 1
    keep_pair = keep_ctx[ctx_id]
    kept_counts_per_ctx = np.diff(np.append(ctx_starts, len(pair_ctx)))[keep_ctx]
    return _Order(
        keys=pair_ctx[ctx_starts][keep_ctx],
        starts=np.concatenate([[0], np.cumsum(kept_counts_per_ctx)]).astype(np.int64),
        next_ids=pair_next[keep_pair].astype(np.int32),
        counts=pair_counts[keep_pair].astype(np.int32),
        totals=totals[keep_ctx].astype(np.int64),
    )


class NGramTables:
    """Count tables for context lengths 1..``MAX_CONTEXT`` and the paper's interpolated next-token probability."""

    def __init__(self, orders: dict[int, _Order], corpus_tokens: int, source: str) -> None:
        self.orders = orders
        self.corpus_tokens = corpus_tokens
        self.source = source

    @classmethod
    def from_tokens(cls, tokens: Sequence[int], *, min_count: int = MIN_COUNT, source: str = "tokens") -> "NGramTables":
        arr = np.asarray(tokens, dtype=np.int64)
        orders = {c: _build_order(arr, c, min_count) for c in range(1, MAX_CONTEXT + 1) if len(arr) > c}
        return cls(orders, len(arr), source)

    def _lookup(self, c: int, context: Sequence[int]) -> tuple[np.ndarray, np.ndarray, int] | None:
        order = self.orders.get(c)
        if order is None or len(context) < c:
            return None
        key = np.uint64(hash_context(context[-c:]))
        i = int(np.searchsorted(order.keys, key))
        if i >= len(order.keys) or order.keys[i] != key:
            return None
        a, b = order.starts[i], order.starts[i + 1]
        return order.next_ids[a:b], order.counts[a:b], int(order.totals[i])

    def prob(self, c: int, context: Sequence[int], token: int) -> float | None:
        """P(token | last ``c`` tokens of context), or None if that context was never seen."""
        hit = self._lookup(c, context)
        if hit is None:
            return None
        ids, counts, total = hit
        at = min(int(np.searchsorted(ids, token)), len(ids) - 1)
        return float(counts[at]) / total if ids[at] == token else 0.0

    def interpolated(self, context: Sequence[int], candidates: Sequence[int], weights: Sequence[float]) -> np.ndarray:
        """The paper's n-gram score of each candidate: ``sum_c weights[c-1] * P_c(candidate | context)`` over the
        context lengths whose context was seen (an unseen context adds nothing)."""
        cand = np.asarray(candidates, dtype=np.int64)
        out = np.zeros(len(cand), dtype=np.float64)
        for c, w in enumerate(weights, start=1):
            if w == 0:
                continue
            hit = self._lookup(c, context)
            if hit is None:
                continue
            ids, counts, total = hit  # ids sorted within a context (built with lexsort)
            at = np.minimum(np.searchsorted(ids, cand), len(ids) - 1)
            out += w * np.where(ids[at] == cand, counts[at], 0).astype(np.float64) / total
        return out

    def nbytes(self) -> int:
        return sum(o.nbytes() for o in self.orders.values())

    def describe(self) -> dict:
        return {
            "source": self.source,
            "corpus_tokens": self.corpus_tokens,
            "min_count": MIN_COUNT,
            "contexts": {f"{c + 1}-gram": int(len(o.keys)) for c, o in self.orders.items()},
            "entries": int(sum(len(o.next_ids) for o in self.orders.values())),
            "bytes": int(self.nbytes()),
        }

    def save(self, path: Path) -> None:
        arrays = {}
        for c, o in self.orders.items():
            for field in ("keys", "starts", "next_ids", "counts", "totals"):
                arrays[f"{c}_{field}"] = getattr(o, field)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez_compressed(tmp, corpus_tokens=np.int64(self.corpus_tokens), source=np.array(self.source), **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "NGramTables":
        with np.load(path) as z:
            orders = {}
            for c in range(1, MAX_CONTEXT + 1):
                if f"{c}_keys" in z:
                    orders[c] = _Order(*(z[f"{c}_{f}"] for f in ("keys", "starts", "next_ids", "counts", "totals")))
            return cls(orders, int(z["corpus_tokens"]), str(z["source"]))


def stdlib_corpus_files(max_bytes: int = MAX_CORPUS_BYTES) -> list[Path]:
    """The standard library's ``.py`` files (no tests, no site-packages), sorted, up to ``max_bytes`` in total."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0] in ("site-packages", "test", "idlelib", "lib2to3") or "tests" in rel:
            continue
        size = path.stat().st_size
        if total + size > max_bytes:
            break
        files.append(path)
        total += size
    return files


def cache_dir() -> Path:
    return Path(os.environ.get("DECLAB_CACHE_DIR") or Path.home() / ".cache" / "declab") / "superposed"


def stdlib_tables(encode: Callable[[str], list[int]], vocab_fingerprint: str,
                  max_bytes: int = MAX_CORPUS_BYTES) -> tuple[NGramTables, Path]:
    """Tables over the standard library sources, from the cache or built now (seconds) and cached."""
    files = stdlib_corpus_files(max_bytes)
    digest = hashlib.sha256(f"{_FORMAT}|{MIN_COUNT}|{MAX_CONTEXT}|{vocab_fingerprint}".encode())
    for f in files:
        digest.update(f"{f.name}:{f.stat().st_size}".encode())
    path = cache_dir() / f"stdlib-{digest.hexdigest()[:16]}.npz"
    if path.exists():
        return NGramTables.load(path), path
    tokens: list[int] = []
    for f in files:
        tokens.extend(encode(f.read_text(encoding="utf-8", errors="replace")))
    size = sum(f.stat().st_size for f in files)
    source = f"python {sysconfig.get_python_version()} stdlib: {len(files)} files, {size} bytes"
    tables = NGramTables.from_tokens(tokens, source=source)
    tables.save(path)
    return tables, path
