"""Recompute the root: a request whose last token is already computed gets it scheduled again with its drafts.

Why: contrastive search (paper 27) decides each token from the hidden states of the k
candidates, which one forward computes as a depth-1 draft tree: the root (the last committed token) plus the
candidates as drafts. vLLM 0.32 commits a token at the end of every prefill; for these requests that token is
dropped (``discard_request_mask``, see ``runner_forward_to_proposer``), so the prompt's last token is computed and
nothing follows it. The scheduler would then schedule the candidates alone, which its spec-decode bookkeeping does
not allow (a request with drafts always feeds its last committed token first).

How: wraps ``Scheduler.update_draft_token_ids`` (engine-core process, after ``update_from_output``, when the step's
drafts arrive). For a request whose ``declab.method`` is a plugin that declares this patch in its spec's
``patches`` (the methods that drop the prefill's token), that receives drafts and whose computed tokens cover all
its tokens, ``num_computed_tokens`` goes back by one, as vLLM does for a rejected draft:
the next step schedules the last token again with the drafts (same position and token: its KV entry is rewritten
with the same values). Other requests are untouched.

vLLM version: 0.32.0 (``vllm/v1/core/sched/scheduler.py::Scheduler.update_draft_token_ids``, synchronous
scheduling).

Removal plan: if vLLM lets a request skip the token after its prefill (or schedules drafts without a root), drop
the token there and delete this patch.
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk import DeclabPatch


class RecomputeRootPatch(DeclabPatch):
    name = "recompute_root"
    target = "vllm.v1.core.sched.scheduler:Scheduler"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        from declab.integrations import registry
        from declab.integrations.request_args import requested_method

        original = target.update_draft_token_ids
        methods = {name for name, spec in registry.all_specs().items() if cls.name in spec.patches}

        def update_draft_token_ids(self, draft_token_ids, *args, **kwargs):
            original(self, draft_token_ids, *args, **kwargs)
            for req_id in draft_token_ids.req_ids:
                request = self.requests.get(req_id)
                if (request is None or request.is_finished() or not request.spec_token_ids
                        or request.num_computed_tokens != request.num_tokens):
                    continue
                params = request.sampling_params
                method = None if params is None else requested_method(params.extra_args)
                if isinstance(method, str) and method in methods:
                    request.num_computed_tokens -= 1

        update_draft_token_ids.__wrapped__ = original
        return {"update_draft_token_ids": update_draft_token_ids}
