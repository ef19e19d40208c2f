"""Recycled successors: the target's top-k candidates kept per token, shared and per request (pure torch, no vLLM).

The family module of the self-speculative proposers that draft from what the target already computed: every
position the target runs yields a full next-token distribution, and the top-k of it, stored as the row of the token
fed there, predicts what follows that token next time (Token Recycling, Luo et al. 2024, arXiv 2408.08696, Sec. 3:
the adjacency matrix ``M[V, k]`` and its update). Here live the pieces several proposers read:

* ``AdjacencyMatrix``: ``M[V, k]``, row ``t`` = the k most likely successors the last time ``t`` was fed, whole row
  overwritten on update (last occurrence in a step wins), ``seen`` flags (a never-written row is all zeros);
* ``RequestSuccessors``: one request's own rows, read before the shared matrix, so that concurrent streams stop
  erasing each other's successors (not in the paper);
* ``successor_rows`` / ``best_chains``: reading rows and rank-0 chains through an overlay;
* ``RecycledSuccessors``: the engine-side state a proposer holds (matrix, one overlay per live request) and how a
  target step is recycled into it (``recycled_inputs``: the token fed at every logits row of the step).

The paper's tree template, BFS drafting and verification stay with the plugin that implements the paper; this
module only holds the successor store, so a proposer that drafts from recycled successors among other sources
imports it instead of another plugin's internals.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["AdjacencyMatrix", "RequestSuccessors", "successor_rows", "best_chains", "recycled_inputs",
           "RecycledSuccessors"]

logger = logging.getLogger(__name__)

_INT_DTYPES = (torch.int32, torch.int64)


def _as_long_1d(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got {t.dtype}")
    return t.long()


# --------------------------------------------------------------------------------------------------------------
# Adjacency matrix (Sec. 3: initialisation, "hot start", update)
# --------------------------------------------------------------------------------------------------------------


class AdjacencyMatrix:
    """``M[V, k]``: row ``t`` = the top-k successor candidates of token ``t``, best first (paper Sec. 3).

    ``init="zeros"`` is the paper/reference initialisation (every row all token 0); the object is meant to live
    across queries ("hot start", Fig. 2). ``table`` is the matrix itself, ``seen[t]`` whether row ``t`` has ever
    been written (not in the paper; used by ``best_chain(stop_at_unseen=True)``).
    """

    def __init__(
        self,
        vocab_size: int,
        k: int = 8,
        dtype: torch.dtype = torch.int32,
        device: torch.device | str | None = None,
        init: str = "zeros",
    ) -> None:
        if vocab_size < 1:
            raise ValueError("vocab_size must be >= 1")
        if k < 1:
            raise ValueError("k must be >= 1")
        if dtype not in _INT_DTYPES:
            raise ValueError(f"dtype must be torch.int32 or torch.int64, got {dtype}")
        if dtype == torch.int32 and vocab_size > 2**31 - 1:
            raise ValueError("vocab_size does not fit in int32")
        if init not in ("zeros", "arange"):
            raise ValueError("init must be 'zeros' (paper) or 'arange'")
        self.vocab_size = int(vocab_size)
        self.k = int(k)
        self.init = init
        self.table = torch.empty((self.vocab_size, self.k), dtype=dtype, device=device)
        self.seen = torch.empty(self.vocab_size, dtype=torch.bool, device=device)
        self.reset()

    # -- bookkeeping ---------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Cold start: back to the initial matrix (the paper never does this between queries)."""
        if self.init == "zeros":
            self.table.zero_()
        else:
            row = torch.arange(self.k, dtype=self.table.dtype, device=self.table.device) % self.vocab_size
            self.table.copy_(row.expand(self.vocab_size, self.k))
        self.seen.zero_()

    @property
    def dtype(self) -> torch.dtype:
        return self.table.dtype

    @property
    def device(self) -> torch.device:
        return self.table.device

    @property
    def nbytes(self) -> int:
        """Bytes of the matrix itself (what the paper's "<2MB" counts): ``V * k * itemsize``."""
        return self.table.numel() * self.table.element_size()

    @property
    def nbytes_total(self) -> int:
        """Matrix plus the ``seen`` vector (``V`` more bytes)."""
        return self.nbytes + self.seen.numel() * self.seen.element_size()

    @staticmethod
    def memory_bytes(vocab_size: int, k: int = 8, dtype: torch.dtype = torch.int32) -> int:
        """``nbytes`` of a matrix of that shape, without allocating it."""
        return int(vocab_size) * int(k) * torch.empty((), dtype=dtype).element_size()

    @property
    def num_seen(self) -> int:
        return int(self.seen.sum())

    # -- read ----------------------------------------------------------------------------------------------------

    def successors(self, token: int) -> torch.Tensor:
        """Row ``M[token]``: the k successor candidates of ``token``, rank 0 (most likely) first."""
        t = int(token)
        if not 0 <= t < self.vocab_size:
            raise IndexError(f"token {t} outside the vocabulary [0, {self.vocab_size})")
        return self.table[t]

    def is_seen(self, token: int) -> bool:
        return bool(self.seen[int(token)])

    # -- write (Sec. 3, update) ------------------------------------------------------------------------------------

    def top_successors(self, logits_or_topk: torch.Tensor) -> torch.Tensor:
        """``[n, k]`` ranked successor ids of each row: the top-k of floating logits ``[n, V']`` (columns past
        ``vocab_size`` ignored), or the first ``k`` columns of integer candidate ids ``[n, m]``, already ranked."""
        cand = torch.as_tensor(logits_or_topk)
        if cand.is_floating_point():
            if cand.shape[1] > self.vocab_size:
                cand = cand[:, : self.vocab_size]
            if cand.shape[1] < self.k:
                raise ValueError(f"need at least k={self.k} logit columns, got {cand.shape[1]}")
            return torch.topk(cand, self.k, dim=-1, largest=True, sorted=True).indices
        if cand.shape[1] < self.k:
            raise ValueError(f"need at least k={self.k} candidate columns, got {cand.shape[1]}")
        top = cand[:, : self.k]
        if bool(((top < 0) | (top >= self.vocab_size)).any()):
            raise ValueError("candidate ids outside the vocabulary")
        return top

    def update(self, input_tokens, logits_or_topk: torch.Tensor) -> int:
        """Overwrite ``M[input_tokens[j]]`` with the top-k of ``logits_or_topk[j]`` for every ``j``.

        ``input_tokens``: ``[n]`` token ids, the tokens *fed* to the model at the ``n`` positions (the root and every
        draft node, accepted or not, as in the paper); negative ids are padding and are skipped.
        ``logits_or_topk``: either floating logits ``[n, V']`` (the top-k is taken here; columns past
        ``vocab_size``, e.g. a padded LM head, are ignored) or integer candidate ids ``[n, m]`` with ``m >= k``,
        already ranked best first (the first ``k`` columns are used).
        Duplicate tokens: the last occurrence wins. Returns the number of rows written.
        """
        tokens = _as_long_1d(input_tokens, "input_tokens")
        cand = torch.as_tensor(logits_or_topk)
        if cand.dim() != 2 or cand.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"logits_or_topk must be [n, V] or [n, k] with n = {tokens.shape[0]}, got {tuple(cand.shape)}"
            )
        if tokens.numel() == 0:
            return 0
        top = self.top_successors(cand)
        tokens = tokens.to(self.device)
        top = top.to(device=self.device, dtype=self.dtype)
        if bool((tokens >= self.vocab_size).any()):
            raise ValueError("input token outside the vocabulary")
        valid = tokens >= 0
        if not bool(valid.all()):
            tokens, top = tokens[valid], top[valid]
            if tokens.numel() == 0:
                return 0
        # Last occurrence of each token wins: keep position j iff no later position holds the same token.
        uniq, inverse = torch.unique(tokens, return_inverse=True)
        pos = torch.arange(tokens.numel(), device=tokens.device)
        last = torch.full((uniq.numel(),), -1, dtype=torch.long, device=tokens.device)
        last = last.scatter_reduce(0, inverse, pos, reduce="amax", include_self=True)
        self.table[uniq] = top[last]
        self.seen[uniq] = True
        return int(uniq.numel())


# --------------------------------------------------------------------------------------------------------------
# Per-request overlay (not in the paper: Token Recycling under concurrency)
# --------------------------------------------------------------------------------------------------------------


class RequestSuccessors:
    """One request's own successor rows, read before the shared ``AdjacencyMatrix`` (not in the paper).

    Why: the paper decodes one query at a time, so the matrix holds what the current stream taught it. In a server
    every concurrent stream overwrites the same rows (common tokens such as ``" the"`` or ``"\\n"`` most of all),
    and each request drafts from the successors another request just wrote. The overlay keeps the rows the
    request's *own* verified positions wrote (same update rule as the matrix: whole row overwritten, last
    occurrence in a step wins); drafting reads a token's row here when present, else from the shared matrix, which
    is still updated from every stream (the paper's "hot start" across queries). At batch 1 the two agree row for
    row, so the overlay changes nothing there.

    Storage: ``rows`` (``[capacity, k]``, the matrix's dtype, grown by doubling up to ``max_rows``) and a dict
    ``token -> slot``. At most ``max_rows`` tokens are kept; a new token past that evicts the least recently
    written one (dict order: a row written again moves to the end). Memory: ``nbytes`` (rows) + ``index_bytes``.
    """

    def __init__(self, k: int, dtype: torch.dtype = torch.int32, max_rows: int = 4096) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.k = int(k)
        self.max_rows = int(max_rows)
        self.rows = torch.empty((0, self.k), dtype=dtype)
        self._slot: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, token: int) -> bool:
        return int(token) in self._slot

    @property
    def nbytes(self) -> int:
        """Bytes of the allocated row storage (``capacity * k * itemsize``)."""
        return self.rows.numel() * self.rows.element_size()

    @property
    def index_bytes(self) -> int:
        """Bytes of the ``token -> slot`` dict's hash table (CPython ``sys.getsizeof``; int objects excluded)."""
        return sys.getsizeof(self._slot)

    def successors(self, token: int) -> torch.Tensor | None:
        """This request's row for ``token`` (rank 0 first), or None when its stream never wrote one."""
        slot = self._slot.get(int(token))
        return None if slot is None else self.rows[slot]

    def slots(self, tokens: Sequence[int]) -> list[int]:
        """Slot of each token in ``rows``, -1 where absent."""
        get = self._slot.get
        return [get(t, -1) for t in tokens]

    def update(self, tokens: Sequence[int], top: torch.Tensor) -> int:
        """Row of ``tokens[j]`` <- ``top[j]`` (``[n, k]`` ranked ids); negative tokens skipped; last occurrence wins.

        Returns the number of rows written."""
        last: dict[int, int] = {}
        for j, t in enumerate(tokens):
            if t >= 0:
                last[int(t)] = j
        if not last:
            return 0
        for t, _ in sorted(last.items(), key=lambda item: item[1]):  # written in order of last occurrence
            slot = self._slot.pop(t, None)  # re-inserted below: dict order = least recently written first
            if slot is None:
                if len(self._slot) >= self.max_rows:
                    slot = self._slot.pop(next(iter(self._slot)))
                else:
                    slot = len(self._slot)  # slots 0..len-1 are in use (nothing is removed before full)
            self._slot[t] = slot
        # Only this step's tokens that survived (more distinct tokens than max_rows evict each other): one slot each.
        kept = [(self._slot[t], j) for t, j in last.items() if t in self._slot]
        slots, src = [s for s, _ in kept], [j for _, j in kept]
        need = max(slots) + 1
        if need > self.rows.shape[0]:
            capacity = min(self.max_rows, max(16, 2 * self.rows.shape[0], need))
            grown = torch.empty((capacity, self.k), dtype=self.rows.dtype)
            grown[: self.rows.shape[0]] = self.rows
            self.rows = grown
        self.rows[torch.tensor(slots)] = top[torch.tensor(src)][:, : self.k].to(device="cpu", dtype=self.rows.dtype)
        return len(slots)


def successor_rows(matrix: AdjacencyMatrix, tokens: torch.Tensor, overlay: RequestSuccessors | None = None
                   ) -> torch.Tensor:
    """``[n, k]`` rows of ``tokens`` (``int64 [n]``): the overlay's row where it has one, else the matrix's."""
    rows = matrix.table[tokens]
    if overlay is not None and len(overlay):
        slots = torch.tensor(overlay.slots(tokens.tolist()), dtype=torch.long)
        hit = slots >= 0
        if bool(hit.any()):
            rows[hit.to(rows.device)] = overlay.rows[slots[hit]].to(device=rows.device, dtype=rows.dtype)
    return rows


def best_chains(matrix: AdjacencyMatrix, roots, max_len: int,
                overlays: Sequence[RequestSuccessors | None] | None = None) -> torch.Tensor:
    """Rank-0 chains for a batch of roots: ``out[b, i+1] = M[out[b, i], 0]`` with ``out[b, -1] := roots[b]``.

    ``overlays[b]`` (optional, one per root, None allowed): request ``b``'s own rows, read before ``M``.
    Returns ``int64 [B, max_len]`` on the matrix's device (no host sync inside the loop without overlays).
    """
    r = _as_long_1d(roots, "roots").to(matrix.device)
    out = torch.empty((r.numel(), max(int(max_len), 0)), dtype=torch.long, device=matrix.device)
    col0 = matrix.table[:, 0]
    own = [] if overlays is None else [(b, o) for b, o in enumerate(overlays) if o is not None and len(o)]
    if overlays is not None and len(overlays) != r.numel():
        raise ValueError(f"overlays must have one entry per root ({r.numel()}), got {len(overlays)}")
    cur = r
    for i in range(out.shape[1]):
        nxt = col0[cur].long()
        if own:
            feeders = cur.tolist()
            for b, overlay in own:
                row = overlay.successors(feeders[b])
                if row is not None:
                    nxt[b] = int(row[0])
        cur = nxt
        out[:, i] = cur
    return out


def recycled_inputs(step: Any) -> tuple[list[int], list[tuple[str, int, int]]]:
    """The token fed at every logits row of a target step (``TargetStep``), -1 for rows that teach nothing, and the
    ``(request, first row, end row)`` span of each request that committed tokens.

    A request contributes ``1 + len(verified_drafts)`` rows: its last committed token before the step, then each
    draft the target verified (accepted or not, as the paper recycles them). A partial prefill chunk commits
    nothing: its row carries nothing to learn (-1)."""
    inputs: list[int] = []
    spans: list[tuple[str, int, int]] = []
    for i, new in enumerate(step.sampled_token_ids):
        drafts = step.verified_drafts[i]
        if not new:
            inputs.extend([-1] * (1 + len(drafts)))
            continue
        before = int(step.num_tokens_no_spec[i]) - len(new)  # sequence length before this step's tokens
        spans.append((step.req_ids[i], len(inputs), len(inputs) + 1 + len(drafts)))
        inputs.append(int(step.token_ids_cpu[i, before - 1]))
        inputs.extend(int(t) for t in drafts)
    return inputs, spans


class RecycledSuccessors:
    """What a proposer keeps of the target's recycled top-k: the shared matrix (lives as long as the engine, the
    paper's "hot start") and, with ``overlay_rows`` set, one ``RequestSuccessors`` per live request.

    ``start`` / ``finish`` follow the requests; ``learn`` recycles one target step; ``chains`` drafts rank-0
    chains per request (its overlay first). ``finished`` sums the overlays' memory at their end (largest then)."""

    def __init__(self, vocab_size: int, k: int, overlay_rows: int | None = 4096) -> None:
        self.matrix = AdjacencyMatrix(vocab_size, k=k)
        self.overlay_rows = overlay_rows
        self.overlays: dict[str, RequestSuccessors] = {}
        self.finished = {"requests": 0, "bytes_sum": 0, "bytes_max": 0, "rows_max": 0}

    def start(self, req_id: str) -> None:
        if self.overlay_rows is not None:
            self.overlays[req_id] = RequestSuccessors(self.matrix.k, self.matrix.dtype, self.overlay_rows)

    def finish(self, req_id: str) -> None:
        overlay = self.overlays.pop(req_id, None)
        if overlay is not None:
            nbytes = overlay.nbytes + overlay.index_bytes
            self.finished["requests"] += 1
            self.finished["bytes_sum"] += nbytes
            self.finished["bytes_max"] = max(self.finished["bytes_max"], nbytes)
            self.finished["rows_max"] = max(self.finished["rows_max"], len(overlay))

    def reset(self) -> None:
        """Cold matrix, per-phase overlay counters zeroed (live overlays stay: their requests still run)."""
        self.matrix.reset()
        self.finished = dict.fromkeys(self.finished, 0)

    def learn(self, step: Any) -> int:
        """``M[token fed at row j] <- top-k(logits_j)`` for every row of the step, and the same rows into each
        request's own overlay. Returns the number of matrix rows written (0 when the step has no logits)."""
        if step.logits is None:
            return 0
        inputs, spans = recycled_inputs(step)
        if len(inputs) != step.logits.shape[0]:
            logger.warning("recycled successors: %d logits rows for %d inputs; step not recycled",
                           step.logits.shape[0], len(inputs))
            return 0
        top = self.matrix.top_successors(step.logits).to(self.matrix.device)
        written = self.matrix.update(torch.tensor(inputs), top)
        for req_id, start, end in spans:
            overlay = self.overlays.get(req_id)
            if overlay is not None:
                overlay.update(inputs[start:end], top[start:end])
        return written

    def chains(self, req_ids: Sequence[str], roots: Sequence[int], length: int,
               stop_at_unseen: bool = True) -> list[list[int]]:
        """Rank-0 chain of ``length`` tokens from each root (request ``req_ids[b]``'s overlay read first); with
        ``stop_at_unseen`` a chain ends before a token whose row was never written."""
        if not roots:
            return []
        overlays = [self.overlays.get(r) for r in req_ids] if self.overlays else None
        chains = best_chains(self.matrix, list(roots), length, overlays)
        if stop_at_unseen:
            # Row b of `feeders` holds the token each draft was read from; stop before an unwritten row.
            feeders = torch.cat([torch.tensor(list(roots)).unsqueeze(1), chains[:, :-1]], dim=1)
            ok = self.matrix.seen[feeders].int().cumprod(dim=1).sum(dim=1).tolist()
        else:
            ok = [length] * len(roots)
        return [chains[b, : ok[b]].tolist() for b in range(len(roots))]

    def memory(self) -> dict[str, Any]:
        """Bytes of the matrix (with its seen flags) and of the overlays, live and per finished request."""
        done = self.finished["requests"]
        live = sum(o.nbytes + o.index_bytes for o in self.overlays.values())
        return {"proposer_bytes": int(self.matrix.nbytes_total) + live, "matrix_bytes": int(self.matrix.nbytes),
                "seen_rows": int(self.matrix.num_seen), "overlay_live_bytes": live,
                "overlay_bytes_per_request_mean": round(self.finished["bytes_sum"] / done) if done else 0,
                "overlay_bytes_per_request_max": self.finished["bytes_max"],
                "overlay_rows_per_request_max": self.finished["rows_max"]}
