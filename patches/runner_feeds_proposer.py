"""The runner-to-proposer feed: give a ``DeclabProposer`` what vLLM 0.32's ``custom_class`` hook does not pass it.

Why: ``custom_class`` proposers get ``propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)`` only: no
request ids or sampling parameters, no target logits or hidden states, no record of which draft tokens the target
just verified, no runner. A proposer that learns from the target (e.g. from its top-k at every verified position,
draft positions included) must know, for each row of the step's logits, which input token produced it; one that
drafts trees must know which request each row is. The alternatives are a user-facing ``--worker-cls`` flag (extra
user flags are ruled out), inspecting the caller's stack frame, or each plugin wrapping the model's
``compute_logits`` itself (which also catches the prompt-logprobs and dummy-run calls of the same method).

How: wraps two methods of ``GPUModelRunner`` (the CPU runner inherits both), only acting when the runner's drafter
is a ``declab.integrations.sdk.proposer.DeclabProposer``:

* ``_sample(logits, spec_decode_metadata)`` keeps a reference to the step's logits (the tensor vLLM's sampler
  receives; no copy) on the runner;
* ``propose_draft_token_ids`` hands the drafter a ``TargetStep`` (``drafter.feed``): the runner, the request of
  each batch row, those logits, the hidden states they came from (``sample_hidden_states``), the verified drafts
  per row (from ``SpecDecodeMetadata``; empty when nothing was verified), the committed tokens; then the original
  runs and calls ``propose``.

Drafters of other methods (ngram, EAGLE, ...) are untouched. Draft probabilities (for a verifier at temperature
> 0) are not part of the feed yet: vLLM 0.32 consumes ``runner._draft_probs`` / ``runner._draft_prob_req_ids``
set by the drafter (``vllm-0.32-hooks-next.md``).

vLLM version: 0.32.0 (``vllm/v1/worker/gpu_model_runner.py::GPUModelRunner._sample`` and
``propose_draft_token_ids``, V1 runner; ``custom_class`` is V1-only in 0.32).

Removal plan: upstream RFC #36219 proposes a common proposer interface; once ``propose`` receives the input batch,
the spec-decode metadata and the target's outputs (as ``SuffixDecodingProposer`` already gets the input batch and
EAGLE the hidden states), build the ``TargetStep`` from there and delete this patch.
"""

from __future__ import annotations

import contextlib
from typing import Any

from declab.integrations.sdk import DeclabPatch

_LOGITS_ATTR = "_declab_step_logits"  # on the runner, between _sample and propose_draft_token_ids


def _verified_drafts(spec_decode_metadata: Any, rows: int) -> list[list[int]]:
    if spec_decode_metadata is None:
        return [[] for _ in range(rows)]
    flat = spec_decode_metadata.draft_token_ids.tolist()
    drafts, start = [], 0
    for n in spec_decode_metadata.num_draft_tokens:
        drafts.append(flat[start : start + n])
        start += n
    return drafts


class RunnerFeedsProposerPatch(DeclabPatch):
    name = "runner_feeds_proposer"
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        from declab.integrations.sdk.proposer import DeclabProposer, TargetStep
        from declab.patches import runner_sample

        original_propose = target.propose_draft_token_ids
        runner_sample.subscribe(keep_step_logits)

        def propose_draft_token_ids(self, scheduler_output, sampled_token_ids, sampling_metadata, hidden_states,
                                    sample_hidden_states, aux_hidden_states, spec_decode_metadata,
                                    *args, **kwargs):
            drafter = getattr(self, "drafter", None)
            if isinstance(drafter, DeclabProposer):
                batch = self.input_batch
                req_ids = list(batch.req_ids)
                drafter.feed(TargetStep(
                    runner=self, req_ids=req_ids, sampled_token_ids=sampled_token_ids,
                    verified_drafts=_verified_drafts(spec_decode_metadata, len(req_ids)),
                    logits=self.__dict__.pop(_LOGITS_ATTR, None), hidden_states=sample_hidden_states,
                    num_tokens_no_spec=batch.num_tokens_no_spec, token_ids_cpu=batch.token_ids_cpu))
            return original_propose(self, scheduler_output, sampled_token_ids, sampling_metadata, hidden_states,
                                    sample_hidden_states, aux_hidden_states, spec_decode_metadata, *args, **kwargs)

        propose_draft_token_ids.__wrapped__ = original_propose
        return {"propose_draft_token_ids": propose_draft_token_ids}


def keep_step_logits(runner: Any, logits: Any, spec_decode_metadata: Any) -> Any:
    """Runner-sample listener: a declab proposer gets the logits vLLM's sampler receives this step."""
    from declab.integrations.sdk.proposer import DeclabProposer

    if isinstance(getattr(runner, "drafter", None), DeclabProposer):
        setattr(runner, _LOGITS_ATTR, logits)
    return contextlib.nullcontext()
