"""The base class of declab's speculative proposers (vLLM's ``custom_class`` hook, V1 model runner).

vLLM builds a ``custom_class`` proposer as ``cls(vllm_config)`` inside the worker and calls
``propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)`` after each step; it passes no request ids, no
sampling parameters, no logits and no record of which drafts were verified. ``DeclabProposer`` adds what a
proposer plugin needs, the way vLLM's own ``v1/spec_decode`` proposers are built (one small object, explicit
per-request state, ``SuffixDecodingProposer``'s start/stop derived from the batch):

* engine-wide settings validated from ``additional_config["declab"][plugin]`` (``self.settings``) and a refusal
  to start when the plugin is not selected (its patches would be missing);
* the runner-to-proposer feed (patch ``runner_feeds_proposer``): each step arrives as a ``TargetStep`` (the
  runner, the request of every batch row, the target's logits and hidden states of the step, the drafts it just
  verified, the committed tokens);
* optionally, the step's forward before sampling (patch ``runner_forward_to_proposer``, declared in the spec's
  ``worker_patches``): ``on_forward`` gets a ``TargetForward`` with the hidden states of every scheduled token
  (prompt chunks included), while vLLM's sampler has not yet chosen the step's tokens;
* per-request start and finish (``on_request_start`` / ``on_request_finish``), derived from the runner's batch;
* drafts returned per batch row as a chain (``list[int]``) or a tree (``DraftTree``: BFS tokens + parents), and
  for trees the tree-verification seam (``open_seams(trees=True)``; ``tree_parents`` is what the seam asks).

A subclass sets ``spec`` (its ``PluginSpec``) and ``selected_as``, validates its settings in ``__init__`` after
``super().__init__``, calls ``open_seams`` last, and implements ``draft`` (and ``on_step`` if it learns from the
target). Everything happens inside vLLM's ``propose`` call, in this order: request bookkeeping, ``on_step``,
``draft``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import numpy as np
import torch

from declab.integrations.sdk import runtime
from declab.integrations.sdk.patching import apply_patches
from declab.integrations.sdk.spec import PluginSpec
from declab.integrations.sdk.tree_verification import SEAM, TREE_VERIFICATION_PATCHES
from declab.integrations.sdk.trees import DraftTree

__all__ = ["DeclabProposer", "DraftTree", "TargetForward", "TargetStep", "FEED_PATCHES"]

# The patch that opens the runner-to-proposer feed (declab.patches.registry() name), applied in the worker.
FEED_PATCHES = ("runner_feeds_proposer",)

Draft = Union[list[int], DraftTree]


@dataclass
class TargetStep:
    """What the target computed in the step whose drafts the proposer is about to make (one row per request).

    ``logits`` / ``hidden_states``: the target's rows of the step, the same tensors vLLM's sampler received (not
    copies; a sampler may have changed the logits in place). A request contributes ``1 + len(verified_drafts[row])``
    consecutive rows: its last scheduled token, then each verified draft (a partial prefill chunk contributes one
    row, with an empty ``sampled_token_ids[row]``). ``num_tokens_no_spec`` / ``token_ids_cpu``: the runner's
    committed lengths and tokens, the arrays vLLM passes to ``propose``.
    """

    runner: Any  # vLLM's GPUModelRunner (input_batch, requests, ...)
    req_ids: list[str]  # request of each batch row
    sampled_token_ids: list[list[int]]  # tokens committed this step per row (empty: nothing committed)
    verified_drafts: list[list[int]]  # draft tokens the target verified this step per row
    logits: torch.Tensor | None
    hidden_states: torch.Tensor | None
    num_tokens_no_spec: np.ndarray
    token_ids_cpu: np.ndarray


@dataclass
class TargetForward:
    """The target's forward pass of a step, before sampling (``DeclabProposer.on_forward``).

    ``hidden_states``: last-layer hidden states of every scheduled token, in the step's flattened order (request
    ``row`` from ``runner.query_start_loc.np[row]`` for ``scheduler_output.num_scheduled_tokens[req_id]`` tokens);
    ``logits``: the rows vLLM is about to sample from (one per request, or ``1 + drafts`` for a request with drafts).
    The runner's batch (``runner.input_batch``) still holds the step's state: ``num_computed_tokens_cpu`` is the
    count before this step's tokens."""

    runner: Any
    scheduler_output: Any
    hidden_states: torch.Tensor
    logits: torch.Tensor | None


class DeclabProposer:
    """Subclass with ``spec`` = the plugin's ``PluginSpec`` and ``selected_as`` = what the plugin runs as (for the
    "not selected" error). See the module docstring for the contract."""

    spec: ClassVar[PluginSpec]
    selected_as: ClassVar[str]
    # Drafts cut to what the request's ``max_tokens`` leaves room for (``_within_max_tokens``): for proposers whose
    # drafts the target verifies (vLLM's rejection sampler, the tree seam) and that keep no record of what they
    # handed over. Off by default: drafts kept rather than verified (EAD), drafts that are the output (contrastive
    # search) or a schedule of handed-over drafts (PEARL) must reach the target as made.
    cut_drafts_at_max_tokens: ClassVar[bool] = False

    def __init__(self, vllm_config: Any) -> None:
        runtime.require_selected(self.spec.name, self.selected_as)
        self.settings: dict[str, Any] = runtime.engine_settings(
            self.spec, getattr(vllm_config, "additional_config", None))
        self.vllm_config = vllm_config
        self.num_speculative_tokens = int(vllm_config.speculative_config.num_speculative_tokens)
        self.runner: Any = None  # the model runner, from the first fed step on
        # Requests seen in a batch and not finished: req_id -> SamplingParams (None if the runner has none).
        self.request_params: dict[str, Any] = {}
        self._step: TargetStep | None = None
        self._trees: dict[str, DraftTree] = {}  # requests drafted as trees by the last propose

    # -- statistics (``declab bench spec`` reads the file; its worker calls ``declab_bench_reset`` between phases) --

    STATS_EVERY = 16  # propose calls between two writes of the statistics file

    def init_stats(self, phase_counters: tuple[str, ...] = (), *, stats_env: str | None = None,
                   **fixed: Any) -> None:
        """``self.stats``: ``propose_calls``, ``propose_seconds`` and ``phase_counters`` at 0 (zeroed again by
        ``reset_phase_counters``), then ``fixed`` (the configuration, counters since start-up). The file is
        ``runtime.proposer_stats_path`` (``stats_env``: an older variable naming it); None on TP ranks > 0."""
        self._phase_counters = ("propose_calls", "propose_seconds", *phase_counters)
        self.stats: dict[str, Any] = {**dict.fromkeys(self._phase_counters, 0), "propose_seconds": 0.0, **fixed}
        self._stats_path = runtime.proposer_stats_path(*((stats_env,) if stats_env else ()))

    def count_propose(self, started: float) -> None:
        """One ``propose`` that began at ``started`` (``time.perf_counter``); the file rewritten every
        ``STATS_EVERY`` calls."""
        self.stats["propose_calls"] += 1
        self.stats["propose_seconds"] += time.perf_counter() - started
        if self._stats_path and self.stats["propose_calls"] % self.STATS_EVERY == 0:
            self.write_stats()

    def reset_phase_counters(self) -> None:
        for key in self._phase_counters:
            self.stats[key] = type(self.stats[key])(0)

    def stats_snapshot(self) -> dict[str, Any]:
        """What the statistics file holds (subclasses add what is computed on demand)."""
        return dict(self.stats)

    def write_stats(self) -> None:
        with open(self._stats_path, "w") as f:
            json.dump(self.stats_snapshot(), f)

    # -- set-up --------------------------------------------------------------------------------------------------

    def chain_length(self) -> int:
        """``num_speculative_tokens`` as the length of a drafted chain, checked against the spec's
        ``max_speculative_tokens`` (a ValueError naming it). A tree mode, whose K counts nodes, checks its own bound."""
        top = self.spec.proposer.max_speculative_tokens
        if not 1 <= self.num_speculative_tokens <= top:
            raise ValueError(f"num_speculative_tokens must be in 1..{top} for {self.spec.name}, "
                             f"got {self.num_speculative_tokens}")
        return self.num_speculative_tokens

    def open_seams(self, *, trees: bool = False) -> None:
        """Apply the worker patches this proposer needs: the runner-to-proposer feed, the tree-verification seam
        when it drafts trees, and the spec's own ``worker_patches``. Call last in ``__init__``."""
        names = FEED_PATCHES + (TREE_VERIFICATION_PATCHES if trees else ()) + tuple(self.spec.worker_patches)
        apply_patches(list(dict.fromkeys(names)))

    def load_model(self, target_model: Any) -> None:
        """vLLM hands over the target model (the CPU runner requires the method). Nothing to load by default."""

    # -- what subclasses implement -------------------------------------------------------------------------------

    def on_request_start(self, req_id: str, params: Any) -> None:
        """A request appears in the batch for the first time (``params``: its ``SamplingParams``)."""

    def on_request_finish(self, req_id: str) -> None:
        """A request left the engine (finished or aborted); reported at the first step after it left. Preempted
        or unscheduled requests are not finished: they come back with the same id and state."""

    def on_step(self, step: TargetStep) -> None:
        """What the target computed this step, before ``draft``."""

    def on_forward(self, forward: TargetForward) -> None:
        """The step's forward, before vLLM samples (only with the ``runner_forward_to_proposer`` worker patch)."""

    def draft(self, step: TargetStep) -> list[Draft]:
        """One draft per batch row: a chain (``list[int]``, may be empty) or a ``DraftTree``."""
        raise NotImplementedError

    # -- what the seams call -------------------------------------------------------------------------------------

    def feed(self, step: TargetStep) -> None:
        """The runner-to-proposer feed delivers the step (right before vLLM calls ``propose``)."""
        self._step = step

    def tree_parents(self, req_id: str) -> tuple[int, ...] | None:
        """The parents (root first) of the tree drafted for ``req_id`` by the last ``propose``, or None."""
        tree = self._trees.get(req_id)
        return None if tree is None else tree.parents

    def tree_draft(self, req_id: str) -> DraftTree | None:
        """The whole tree drafted for ``req_id`` by the last ``propose`` (with its draft probabilities), or None."""
        return self._trees.get(req_id)

    @staticmethod
    def tree_verifiable(params: Any) -> bool:
        """Whether a subscribed tree verifier can decide a tree for a request with these ``SamplingParams``."""
        return SEAM.verifier_for(params) is not None

    @staticmethod
    def tree_verification_stats() -> dict[str, int]:
        """Counters of the tree-verification seam in this worker (``verified_trees``, ``relocated_paths``)."""
        return {"verified_trees": SEAM.stats.verified_trees, "relocated_paths": SEAM.stats.relocated_paths}

    # -- vLLM's custom_class entry point -------------------------------------------------------------------------

    def propose(self, sampled_token_ids: list[list[int]], num_tokens_no_spec: np.ndarray, token_ids_cpu: np.ndarray,
                slot_mappings: Any = None) -> list[list[int]]:
        step, self._step = self._step, None
        if step is None:
            raise RuntimeError(f"{type(self).__name__}.propose ran without the runner-to-proposer feed "
                               f"(patch {FEED_PATCHES[0]!r} not applied: call open_seams() in __init__)")
        self.runner = step.runner
        self._sync_requests(step)
        self.on_step(step)
        drafts = self.draft(step)
        if len(drafts) != len(step.req_ids):
            raise RuntimeError(f"{type(self).__name__}.draft returned {len(drafts)} drafts for "
                               f"{len(step.req_ids)} batch rows")
        out: list[list[int]] = []
        trees: dict[str, DraftTree] = {}
        for row, (req_id, d) in enumerate(zip(step.req_ids, drafts)):
            if self.cut_drafts_at_max_tokens:
                d = self._within_max_tokens(step, row, d)
            if isinstance(d, DraftTree):
                trees[req_id] = d
                out.append(d.draft_tokens())
            else:
                out.append(d)
        self._trees = trees
        return out

    def draft_room(self, step: TargetStep, row: int) -> int | None:
        """Draft positions the request of batch row ``row`` can still use: a step commits the accepted drafts and one
        token more, so with ``r`` tokens left before its ``max_tokens`` only the first ``r - 1`` are used (vLLM
        verifies, then discards, whatever is proposed past them). None: the request has no ``max_tokens``."""
        req_id = step.req_ids[row]
        state = step.runner.requests.get(req_id) if req_id is not None else None
        max_tokens = getattr(getattr(state, "sampling_params", None), "max_tokens", None)
        if max_tokens is None:
            return None
        left = state.num_prompt_tokens + int(max_tokens) - int(step.num_tokens_no_spec[row])
        return max(left - 1, 0)

    def _within_max_tokens(self, step: TargetStep, row: int, draft: Draft) -> Draft:
        """``draft`` without what ``draft_room`` leaves no use for: a chain's tail, a tree's deeper levels. No
        committed token changes (greedy), nor any distribution (sampling: ``DraftTree.pruned``); the target skips
        the verification of drafts it would throw away, in each request's last steps."""
        room = self.draft_room(step, row) if draft else None
        if room is None:
            return draft
        if isinstance(draft, DraftTree):
            return draft.pruned(room) if room > 0 else []
        return draft[:room]

    def _sync_requests(self, step: TargetStep) -> None:
        """Finish the requests the runner no longer knows, then start the batch's new ones."""
        known = step.runner.requests
        for req_id in [r for r in self.request_params if r not in known]:
            del self.request_params[req_id]
            self.on_request_finish(req_id)
        for req_id in step.req_ids:
            if req_id is not None and req_id not in self.request_params:
                state = known.get(req_id)
                params = getattr(state, "sampling_params", None)
                self.request_params[req_id] = params
                self.on_request_start(req_id, params)
