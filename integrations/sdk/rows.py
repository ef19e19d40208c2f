"""Shared contract of the per-request logits processors (pure torch, no vLLM import).

A logits-level plugin implements one ``RowProcessor`` subclass in its ``core.py``. The router logits processor
(``declab.integrations.router``) creates one instance per request that names the plugin in
``SamplingParams.extra_args["declab"]["method"]`` and calls it once per decoding step on that request's row of
logits. Rows of other requests are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch


@dataclass(frozen=True)
class RowContext:
    """What the engine knows that a processor may need (filled by the router in the worker)."""

    vocab_size: int
    eos_token_id: int | None = None
    # Text -> token ids with the served model's tokenizer, no special tokens added. Lazily loaded by the router.
    tokenize: Callable[[str], list[int]] | None = None
    # Zero-argument getter of the served model's HF tokenizer object (lazy; for plugins that compile grammars).
    tokenizer: Callable[[], Any] | None = None
    # This request's own sampling settings (temperature, top-k/p, min-p, seed): vLLM applies them to the row the
    # processor returns; a method whose exactness depends on them (ASAp's tempered trie) reads them here. For a
    # request group: the main request's settings. None outside the engine (pure tests).
    sampling: Any = None  # declab.integrations.sdk.sampling.SamplingSettings


class RowProcessor:
    """One request's logits transform.

    ``params`` are the validated per-request parameters (defaults filled from the plugin's ``ParamSpec``s).
    ``prompt_ids`` is the prompt; ``output_ids`` is a *live* list that grows by one token per step (it holds every
    token generated so far when ``__call__`` runs). ``__call__`` receives the request's float32 logits row
    ``[vocab]``, may modify it in place, and returns the row to use. It must never return a row that is all
    ``-inf``.
    """

    grouped = False  # True for GroupRowProcessor (a request with companion rows)
    # The request's row in this step's batch, set by the router before each call: the key of per-step side data
    # such as the layer-capture seam's early-exit logits (``declab.integrations.sdk.early_exit``).
    batch_row: int | None = None

    def __init__(
        self,
        params: Mapping[str, Any],
        prompt_ids: Sequence[int],
        output_ids: Sequence[int],
        ctx: RowContext,
    ) -> None:
        self.params = dict(params)
        self.prompt_ids = prompt_ids
        self.output_ids = output_ids
        self.ctx = ctx

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class GroupRowProcessor(RowProcessor):
    """The processor of a request group: a request plus hidden companion rows (``LogitsHook.companions``), one per
    companion prompt, decoded in lockstep with it in the same batch.

    The router makes one instance per member row (``role`` = ``ROLE_MAIN`` or the companion's parameter name;
    ``group_id`` = the main request id; ``settings`` = the main request's own ``SamplingSettings``). When every
    member is in the batch at the same position it calls ``choose`` on the main row's instance with all members'
    float32 logits (role -> ``[vocab]``) and forces the returned token on every member. ``step`` is the number of
    tokens generated so far.
    """

    grouped = True
    companions: tuple[str, ...] = ()  # the spec's LogitsHook.companions, set by the router
    group_id: str | None = None
    role: str | None = None

    @property
    def settings(self):
        """The main request's sampling settings (``SamplingSettings``), applied by ``choose``."""
        return self.ctx.sampling

    def choose(self, rows: Mapping[str, torch.Tensor], step: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        # Never called for a grouped row: the router calls ``choose`` with all rows. A row whose companions are
        # missing this step keeps its logits; the request-group seam discards that step's token.
        return logits
