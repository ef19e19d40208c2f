"""A lossy proposer's verifier: accept every draft token, then the target's token (vLLM's "bonus" token) after it.

Why: Entropy Adaptive Decoding (reading list paper 10) is lossy by design: the tokens the small
model writes while the rolling entropy is low are *kept*, not verified. vLLM 0.32's ``custom_class`` proposers can
only hand drafts to the rejection sampler, which (greedy) keeps a draft token only where it equals the target's
argmax: that would make it plain speculative decoding. vLLM has no "trusted draft" mode.

How: replaces ``vllm.v1.sample.rejection_sampler.rejection_sample`` (a module global, looked up by
``RejectionSampler.forward`` at call time) by ``accept_every_draft``: each request's output row is its draft tokens
followed by its bonus token (the target's token at the position after the last draft, sampled by vLLM's own sampler
with the request's settings), padded with ``PLACEHOLDER_TOKEN_ID``. Everything around it (logits processors,
sampling constraints, logprobs) is vLLM's. It changes verification for *every* request of the engine, which is what
selecting a lossy proposer means: such an engine serves nothing lossless. Applied in the worker by the lossy
proposer (its spec's ``worker_patches``), so only when it is the engine's speculative proposer.
``tests/engines.py::sample_run_accepting_every_draft`` uses ``accept_every_draft`` as the deliberately biased
verifier of the lossless proposers' distribution tests (one implementation).

vLLM version: 0.32.0 (``vllm/v1/sample/rejection_sampler.py::rejection_sample`` and ``RejectionSampler.forward``).

Removal plan: drop it if vLLM gains a way for a proposer to mark its drafts as accepted (a "lossy" or "trusted
draft" proposer flag, or a verification hook per proposer as RFC #36219's common proposer interface could offer);
then the proposer sets that flag instead.
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk import DeclabPatch


def accept_every_draft(draft_token_ids, num_draft_tokens, max_spec_len, cu_num_draft_tokens, draft_probs,
                       target_logits, bonus_token_ids, *rest, **kwargs):
    """``rejection_sample``'s signature and output (``[batch, max_spec_len + 1]`` int32): every draft token of each
    request, then its bonus token, then placeholders."""
    import torch
    from vllm.v1.sample.rejection_sampler import PLACEHOLDER_TOKEN_ID

    out = torch.full((len(num_draft_tokens), max_spec_len + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int32,
                     device=target_logits.device)
    start = 0
    for i, n in enumerate(num_draft_tokens):
        out[i, :n] = draft_token_ids[start:start + n]
        out[i, n] = bonus_token_ids[i, 0]
        start += n
    return out


class EadAcceptsDraftsPatch(DeclabPatch):
    name = "ead_accepts_drafts"
    target = "vllm.v1.sample.rejection_sampler"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        return {"rejection_sample": accept_every_draft}
