"""vLLM 0.32 adapter: Token Recycling as a ``custom_class`` speculative proposer (V1 model runner).

Usage (offline or ``vllm serve --speculative-config``), with ``DECLAB_PLUGINS`` including ``token_recycling``::

    speculative_config={"method": "custom_class",
                        "model": "declab.plugins.token_recycling.TokenRecyclingProposer",
                        "num_speculative_tokens": 6}

Engine-wide parameters (``successors``, ``mode``, ``stop_at_unseen``) come from ``DECLAB_TOKEN_RECYCLING`` as JSON
(defaults in ``spec.py``). Per step the proposer

1. takes the target logits of the step (the model's ``compute_logits`` is wrapped on the *instance* in
   ``load_model``: no class patching) and, with the verified draft tokens the runner hands over through the
   ``runner_feeds_proposer`` patch, writes ``M[input token of row j] <- top-k(logits_j)`` for every verified
   position, draft positions included (paper Sec. 3 update);
2. drafts, per request, the rank-0 chain of ``M`` from the last committed token (the paper tree's main branch),
   up to ``num_speculative_tokens`` tokens.

The matrix lives as long as the engine (shared by all requests, "hot start" across queries, as in the paper).
Verification is vLLM's own rejection sampler, so greedy output is token-identical to plain decoding and sampling is
distribution-preserving (on CPU only with the ``cpu_expand_kernel`` patch, applied when the plugin is selected).
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import torch

from declab.integrations import registry
from declab.integrations.params import resolve_params
from declab.patches import apply_patches
from declab.plugins.token_recycling.core import AdjacencyMatrix, best_chains
from declab.plugins.token_recycling.spec import CONFIG_ENV, SPEC

logger = logging.getLogger(__name__)

STATS_ENV = "DECLAB_TOKEN_RECYCLING_STATS"  # optional path: proposer statistics are written there as JSON


def engine_config() -> dict:
    """Validated engine-wide parameters from ``DECLAB_TOKEN_RECYCLING`` (JSON object), defaults filled."""
    raw = os.environ.get(CONFIG_ENV, "").strip()
    try:
        given = json.loads(raw) if raw else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{CONFIG_ENV} must be a JSON object: {e}") from e
    if not isinstance(given, dict):
        raise ValueError(f"{CONFIG_ENV} must be a JSON object, got {type(given).__name__}")
    return resolve_params(SPEC.params, given, prefix=CONFIG_ENV)


class TokenRecyclingProposer:
    def __init__(self, vllm_config) -> None:
        if SPEC.name not in registry.selected_plugins():
            raise ValueError(
                f"Token Recycling is configured as the speculative proposer but the plugin is not selected: set "
                f"{registry.PLUGINS_ENV}={SPEC.name} (it applies the patches the proposer needs)"
            )
        config = engine_config()
        self.k = int(vllm_config.speculative_config.num_speculative_tokens)
        max_k = SPEC.extra["max_speculative_tokens"]
        if not 1 <= self.k <= max_k:
            raise ValueError(f"num_speculative_tokens must be in 1..{max_k} for token_recycling, got {self.k}")
        self.stop_at_unseen = config["stop_at_unseen"]
        self.matrix = AdjacencyMatrix(vllm_config.model_config.get_vocab_size(), k=config["successors"])
        apply_patches(SPEC.worker_patches)
        self._logits: torch.Tensor | None = None  # target logits of the current step
        self._verified_drafts: list[list[int]] | None = None  # per row, the drafts verified this step
        self._stats_path = os.environ.get(STATS_ENV) or None
        self.stats = {"propose_calls": 0, "propose_seconds": 0.0, "rows_updated": 0,
                      "matrix_bytes": self.matrix.nbytes, "successors": self.matrix.k, "chain_len": self.k}
        logger.info("Token Recycling: matrix %s x %d (%.2f MB), chain length %d", self.matrix.vocab_size,
                    self.matrix.k, self.matrix.nbytes / 1e6, self.k)

    # -- hooks ---------------------------------------------------------------------------------------------------

    def load_model(self, target_model) -> None:
        """Called with the *target* model (required on CPU). Capture its logits at every step."""
        original = target_model.compute_logits

        def compute_logits(hidden_states, *args, **kwargs):
            logits = original(hidden_states, *args, **kwargs)
            self._logits = logits
            return logits

        target_model.compute_logits = compute_logits

    def declab_before_propose(self, runner, spec_decode_metadata) -> None:
        """Called by the ``runner_feeds_proposer`` patch right before ``propose``."""
        if spec_decode_metadata is None:
            self._verified_drafts = None
            return
        flat = spec_decode_metadata.draft_token_ids.tolist()
        drafts, start = [], 0
        for n in spec_decode_metadata.num_draft_tokens:
            drafts.append(flat[start : start + n])
            start += n
        self._verified_drafts = drafts

    # -- per step ------------------------------------------------------------------------------------------------

    def _recycle(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu) -> None:
        """M[token fed at row j] <- top-k(logits_j) for every position the target just computed."""
        logits, self._logits = self._logits, None
        if logits is None:
            return
        inputs: list[int] = []
        for i, new in enumerate(sampled_token_ids):
            drafts = self._verified_drafts[i] if self._verified_drafts is not None else []
            if not new:  # partial prefill chunk or discarded row: its logits row carries nothing to learn
                inputs.extend([-1] * (1 + len(drafts)))
                continue
            before = int(num_tokens_no_spec[i]) - len(new)  # sequence length before this step's tokens
            inputs.append(int(token_ids_cpu[i, before - 1]))
            inputs.extend(drafts)
        if len(inputs) != logits.shape[0]:
            logger.warning("Token Recycling: %d logits rows for %d inputs; step not recycled", logits.shape[0],
                           len(inputs))
            return
        self.stats["rows_updated"] += self.matrix.update(torch.tensor(inputs), logits)

    def propose(self, sampled_token_ids: list[list[int]], num_tokens_no_spec: np.ndarray,
                token_ids_cpu: np.ndarray, slot_mappings=None) -> list[list[int]]:
        t0 = time.perf_counter()
        self._recycle(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)
        active = [i for i, new in enumerate(sampled_token_ids) if new]
        drafts: list[list[int]] = [[] for _ in sampled_token_ids]
        if active:
            roots = [int(token_ids_cpu[i, int(num_tokens_no_spec[i]) - 1]) for i in active]
            chains = best_chains(self.matrix, roots, self.k)
            if self.stop_at_unseen:
                # Row r of `feeders` holds the token each draft was read from; stop before an unwritten row.
                feeders = torch.cat([torch.tensor(roots).unsqueeze(1), chains[:, :-1]], dim=1)
                ok = self.matrix.seen[feeders].int().cumprod(dim=1).sum(dim=1).tolist()
            else:
                ok = [self.k] * len(active)
            for row, i in enumerate(active):
                drafts[i] = chains[row, : ok[row]].tolist()
        self.stats["propose_calls"] += 1
        self.stats["propose_seconds"] += time.perf_counter() - t0
        if self._stats_path and self.stats["propose_calls"] % 16 == 0:
            self.write_stats()
        return drafts

    def write_stats(self) -> None:
        stats = dict(self.stats, seen_rows=self.matrix.num_seen)
        with open(self._stats_path, "w") as f:
            json.dump(stats, f)
