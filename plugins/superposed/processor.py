"""Superposed Decoding in vLLM's batch: the row processor of a superposed request (worker side).

One request = one engine row (child 0 of vLLM's ``n = k`` children; the bundled-completions seam keeps the others
out of the scheduler). Per step:

* before the forward, the row-input-embeddings seam asks ``input_embeddings`` for the row's positions: prompt
  positions keep their token embeddings, a generated position ``s`` gets ``sum_d w_d * E[token_d]`` over the drafts
  after step ``s`` (``SuperposedDrafts.mixture``);
* on the row's logits, ``__call__`` extends the drafts (``SuperposedDrafts.step``) and forces a placeholder token
  (draft 0's newest, or EOS once nothing can overtake the finished drafts), so the engine's own token stream only
  counts steps;
* after sampling, the bundled-completions seam ships ``completions()`` to the engine core, which hands completion i
  to child i when the row finishes.

The drafts live in the per-request store the seam attaches (kept across preemption: a recomputed position gets the
same mix again). The n-gram tables are built once per process from the standard library sources, with the served
model's tokenizer, and cached on disk (``ngram.stdlib_tables``).
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, Callable, Mapping, Sequence

import torch

from declab.integrations.sdk.embeddings import BundledCompletions, Completion, RowInputEmbeddings
from declab.integrations.sdk.rows import RowContext, RowProcessor
from declab.integrations.sdk.sampling import force_token
from declab.plugins.superposed.core import DEFAULT_NGRAM_WEIGHTS, SuperposedDrafts

_TABLES: dict[str, Any] = {}
_TABLES_LOCK = threading.Lock()


def check_sampling(sampling_params: Any, method: str) -> None:
    """Admission: no log-probs, no stop token ids (the row's own tokens are placeholders). ``n == k`` is the
    bundled-completions seam's own check (``LogitsHook.bundled_completions``)."""
    if getattr(sampling_params, "logprobs", None) is not None:
        raise ValueError(f"logprobs is not supported together with declab.method={method!r} (got "
                         f"{sampling_params.logprobs!r}): the completions are re-ranked drafts, not sampled tokens")
    if getattr(sampling_params, "stop_token_ids", None):
        raise ValueError(f"stop_token_ids is not supported together with declab.method={method!r} (got "
                         f"{sampling_params.stop_token_ids!r}): the row's own tokens are placeholders")


def vocab_fingerprint(tokenizer: Any) -> str:
    """Identifies the tokenizer's vocabulary (the n-gram tables' cache key)."""
    return hashlib.sha256(repr(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]


def ngram_tables(ctx: RowContext):
    """The interpolated n-gram tables for the served tokenizer (one per process; built and cached on first use)."""
    fingerprint = vocab_fingerprint(ctx.tokenizer())
    with _TABLES_LOCK:
        if fingerprint not in _TABLES:
            from declab.plugins.superposed.ngram import stdlib_tables

            _TABLES[fingerprint] = stdlib_tables(ctx.tokenize, fingerprint)[0]
        return _TABLES[fingerprint]


class SuperposedProcessor(RowProcessor, RowInputEmbeddings, BundledCompletions):
    """One superposed request's row: k drafts, their mixed input embeddings, their completions."""

    def __init__(self, params: Mapping[str, Any], prompt_ids: Sequence[int], output_ids: Sequence[int],
                 ctx: RowContext) -> None:
        super().__init__(params, prompt_ids, output_ids, ctx)
        self.store: dict[str, Any] = {}

    def attach(self, store: dict[str, Any]) -> None:
        self.store = store

    @property
    def drafts(self) -> SuperposedDrafts:
        drafts = self.store.get("drafts")
        if drafts is None:
            p = self.params
            ngram = None
            if p["ngram"] and p["alpha"] > 0:
                tables = ngram_tables(self.ctx)
                ngram = _interpolated(tables)
            drafts = self.store["drafts"] = SuperposedDrafts(
                p["k"], self.prompt_ids, self.ctx.eos_token_id, alpha=p["alpha"],
                softmax_temperature=p["softmax_temperature"], n_token_sample=p["n_token_sample"],
                penalty=p["penalty"], ngram=ngram)
        return drafts

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        drafts = self.drafts
        drafts.step(len(self.output_ids), logits)
        force_token(logits, drafts.placeholder())
        return logits

    def input_embeddings(self, first_position: int, count: int,
                         embed: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
        n_prompt = len(self.prompt_ids)
        if first_position + count <= n_prompt:
            return None
        drafts = self.drafts
        rows = []
        for position in range(first_position, first_position + count):
            if position < n_prompt:
                rows.append(embed(torch.tensor([self.prompt_ids[position]])).squeeze(0))
                continue
            tokens, weights = drafts.mixture(position - n_prompt)
            e = embed(torch.tensor(tokens))
            w = torch.tensor(weights, dtype=e.dtype, device=e.device).unsqueeze(1)
            rows.append((w * e).sum(0))
        return torch.stack(rows)

    def completions(self) -> list[Completion] | None:
        drafts = self.store.get("drafts")
        if drafts is None or not drafts.steps:
            return None
        return [Completion(tuple(tokens), "stop" if ended else "length")
                for tokens, _, ended in drafts.completions()]


def _interpolated(tables) -> Callable[[Sequence[int], Sequence[int]], Any]:
    def score(context: Sequence[int], candidates: Sequence[int]):
        return tables.interpolated(context, candidates, DEFAULT_NGRAM_WEIGHTS)

    return score
