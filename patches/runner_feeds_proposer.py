"""Give a declab speculative proposer what vLLM 0.32's ``custom_class`` hook does not pass it.

Why: ``custom_class`` proposers get ``propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)`` only: no
request ids, no record of which draft tokens the target just verified, no runner. Token Recycling must update its
adjacency matrix from the target's top-k at *every verified position*, so it needs to know, for each row of the
target logits, which input token produced it. The alternatives are a user-facing ``--worker-cls`` flag (the issue
forbids extra user flags) or inspecting the caller's stack frame.

How: wraps ``GPUModelRunner.propose_draft_token_ids`` (the CPU runner inherits it). If the runner's drafter defines
``declab_before_propose(runner, spec_decode_metadata)``, that is called first with the runner and the step's
``SpecDecodeMetadata`` (``None`` when nothing was verified); then the original runs and calls ``propose``.
Drafters of other methods (ngram, EAGLE, ...) are untouched: the wrapper checks for the method and returns.

vLLM version: 0.32.0 (``vllm/v1/worker/gpu_model_runner.py::GPUModelRunner.propose_draft_token_ids``, V1 runner;
``custom_class`` is V1-only in 0.32).

Removal plan: upstream RFC #36219 proposes a common proposer interface; once ``propose`` receives the input batch
and the spec-decode metadata (as ``SuffixDecodingProposer`` already gets the input batch), call it from there.
"""

from __future__ import annotations

from typing import Any

from declab.patches import DeclabPatch


class RunnerFeedsProposerPatch(DeclabPatch):
    name = "runner_feeds_proposer"
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        original = target.propose_draft_token_ids

        def propose_draft_token_ids(self, scheduler_output, sampled_token_ids, sampling_metadata, hidden_states,
                                    sample_hidden_states, aux_hidden_states, spec_decode_metadata,
                                    *args, **kwargs):
            hook = getattr(getattr(self, "drafter", None), "declab_before_propose", None)
            if hook is not None:
                hook(self, spec_decode_metadata)
            return original(self, scheduler_output, sampled_token_ids, sampling_metadata, hidden_states,
                            sample_hidden_states, aux_hidden_states, spec_decode_metadata, *args, **kwargs)

        propose_draft_token_ids.__wrapped__ = original
        return {"propose_draft_token_ids": propose_draft_token_ids}
