"""vLLM 0.32 adapter: contrastive search inside vLLM's batch, as a depth-1 draft tree per step (V1 runner, CPU).

Usage, with ``DECLAB_PLUGINS`` including ``contrastive_search``::

    speculative_config={"method": "custom_class",
                        "model": "declab.plugins.contrastive_search.ContrastiveSearchProposer",
                        "num_speculative_tokens": 8}          # the largest top_k a request may ask for
    SamplingParams(temperature=0, extra_args={"declab": {"method": "contrastive_search", "top_k": 4, "alpha": 0.6}})

Requests without these arguments decode greedily as on any engine (no draft). For a contrastive request:

1. Prefill: ``on_forward`` (patch ``runner_forward_to_proposer``, before sampling) keeps the hidden state of every
   prompt position; at the step that completes the prompt, the token vLLM samples is dropped (the runner's
   ``discard_request_mask``) and the k candidates are the top-k of the prompt's last logits row.
2. ``draft`` returns a ``DraftTree``: the root (last committed token) and the k candidates as its children. The
   engine-core patch ``recompute_root`` makes the scheduler feed the root again when it is already computed (after
   the prefill), so every step schedules ``1 + k`` tokens: HF's k + 1 token evaluations per output token.
3. The step's forward evaluates the tree in one pass (the tree-verification seam: each candidate attends to the
   context and the root, at position ``root + 1``); ``on_forward`` keeps the root's and the candidates' hidden
   states; ``ContrastiveVerifier`` (a ``TreeVerifier``) scores the candidates against the context's hidden states
   (prompt included) and commits the winner alone (no accepted draft: the winner is the step's "bonus" token), and
   the winner's logits row gives the next step's candidates.

The winner's hidden state is the one it had as a candidate (HF's), kept as the context state of its position; the
next step recomputes the winner as the root, which costs the same as keeping its KV entry and needs no relocation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from declab.integrations.sdk import resolve_params
from declab.integrations.sdk.proposer import DeclabProposer, DraftTree, TargetForward, TargetStep
from declab.integrations.sdk.tree_verification import SEAM, TreeRequest, TreeVerifier, check_tree_engine
from declab.plugins.contrastive_search.core import Candidates, ContextStates, candidates, choose
from declab.plugins.contrastive_search.spec import SPEC

logger = logging.getLogger(__name__)


def request_params(params: Any) -> dict[str, Any] | None:
    """The request's contrastive search parameters (validated at admission), or None for other requests."""
    extra = getattr(params, "extra_args", None) or {}
    nested = extra.get("declab")
    args = dict(nested) if isinstance(nested, dict) else {k[len("declab."):]: v for k, v in extra.items()
                                                            if isinstance(k, str) and k.startswith("declab.")}
    if args.pop("method", None) != SPEC.name:
        return None
    return resolve_params(SPEC.params, args)


@dataclass
class SearchState:
    """One contrastive request in the worker."""

    top_k: int
    alpha: float
    context: ContextStates
    next: Candidates | None = None  # the candidates of the next step (drafted as the tree's children)
    drafted: list[int] = field(default_factory=list)  # the children of the tree drafted last
    cand_hidden: torch.Tensor | None = None  # this step's candidates' hidden states (set before sampling)


class ContrastiveVerifier(TreeVerifier):
    """Decides the tree requests of contrastive search: commits the best-scoring candidate alone."""

    def __init__(self, proposer: "ContrastiveSearchProposer") -> None:
        self.proposer = proposer

    def accepts(self, params: Any) -> bool:
        return params is not None and request_params(params) is not None

    def verify(self, request: TreeRequest, drafts, logits, sampling_metadata):
        state = self.proposer.state_of_row(request.row)
        if state is None or state.cand_hidden is None or drafts != state.drafted:
            # Not the tree this proposer drafted (vLLM scheduled fewer drafts, or stale ones): no contrastive step
            # is possible; commit the greedy token so the request goes on, and say so.
            # The next step feeds that token alone and draws its candidates from it (``on_forward``).
            self.proposer.stats["fallback_steps"] += 1
            logger.warning("contrastive_search: step without its %s candidates (scheduled %s); greedy token used",
                           None if state is None else len(state.drafted), len(drafts))
            if state is not None:
                state.next, state.cand_hidden = None, None
            return [0], [int(logits[0].argmax())]
        cands = state.next
        winner = choose(cands, state.cand_hidden, state.context.view(request.context + 1), state.alpha)
        state.context.put(request.context + 1, state.cand_hidden[winner : winner + 1])
        state.next = candidates(logits[1 + winner], state.top_k)
        state.cand_hidden = None
        self.proposer.stats["steps"] += 1
        return [0], [cands.token_ids[winner]]


class ContrastiveSearchProposer(DeclabProposer):
    spec = SPEC
    selected_as = "contrastive search as the speculative proposer"

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        check_tree_engine(vllm_config, what="contrastive_search", instead="use another engine for contrastive search")
        self.hidden_size = int(vllm_config.model_config.get_hidden_size())
        self.states: dict[str, SearchState] = {}
        self.stats = {"steps": 0, "fallback_steps": 0, "dropped_prefill_tokens": 0, "lost_requests": 0}
        SEAM.subscribe(ContrastiveVerifier(self))
        self.open_seams(trees=True)

    # -- per request ---------------------------------------------------------------------------------------------

    def on_request_start(self, req_id: str, params) -> None:
        given = request_params(params)
        if given is not None:
            self.states[req_id] = SearchState(given["top_k"], float(given["alpha"]), ContextStates(self.hidden_size))

    def on_request_finish(self, req_id: str) -> None:
        self.states.pop(req_id, None)

    def state_of_row(self, row: int) -> SearchState | None:
        req_ids = self.runner.input_batch.req_ids if self.runner is not None else []
        return self.states.get(req_ids[row]) if row < len(req_ids) else None

    # -- before sampling -----------------------------------------------------------------------------------------

    def on_forward(self, forward: TargetForward) -> None:
        """Keep the context's hidden states; give the verifier the candidates' ones; drop the token vLLM would
        commit at the end of a prompt (its candidates come first)."""
        runner = self.runner = forward.runner
        batch = runner.input_batch
        scheduled = forward.scheduler_output.num_scheduled_tokens
        spec_tokens = forward.scheduler_output.scheduled_spec_decode_tokens
        logits_row = 0
        for row, req_id in enumerate(batch.req_ids):
            if req_id is None or req_id not in scheduled:
                continue
            n_drafts = len(spec_tokens.get(req_id, ()))
            first_logits, logits_row = logits_row, logits_row + 1 + n_drafts
            if req_id not in self.request_params:  # first step of the request: on_request_start comes later
                self.request_params[req_id] = runner.requests[req_id].sampling_params
                self.on_request_start(req_id, self.request_params[req_id])
            state = self.states.get(req_id)
            if state is None:
                continue
            start = int(runner.query_start_loc.np[row])
            computed = int(batch.num_computed_tokens_cpu[row])
            if computed > state.context.length:  # positions this proposer never saw (cannot happen by design)
                logger.warning("contrastive_search: request %s has no hidden states for positions %d..%d; it "
                               "continues with greedy decoding", req_id, state.context.length, computed - 1)
                self.stats["lost_requests"] += 1
                del self.states[req_id]
                continue
            fed = int(scheduled[req_id]) - n_drafts  # prompt chunk or the root
            state.context.put(computed, forward.hidden_states[start : start + fed])
            state.cand_hidden = forward.hidden_states[start + fed : start + fed + n_drafts] if n_drafts else None
            if not n_drafts and computed + fed == runner.requests[req_id].num_tokens and forward.logits is not None:
                runner.discard_request_mask.np[row] = True  # the candidates decide the next token, not vLLM
                state.next = candidates(forward.logits[first_logits], state.top_k)
                self.stats["dropped_prefill_tokens"] += 1

    # -- after the step ------------------------------------------------------------------------------------------

    def draft(self, step: TargetStep) -> list[list[int] | DraftTree]:
        drafts: list[list[int] | DraftTree] = [[] for _ in step.req_ids]
        for row, req_id in enumerate(step.req_ids):
            state = self.states.get(req_id)
            if state is None or state.next is None:
                continue
            root = int(step.token_ids_cpu[row, int(step.num_tokens_no_spec[row]) - 1])
            state.drafted = list(state.next.token_ids)
            drafts[row] = DraftTree([root] + state.drafted, (-1,) + (0,) * len(state.drafted))
        return drafts
