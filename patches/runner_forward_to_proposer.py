"""Runner-forward feed: a ``DeclabProposer`` sees the step's forward pass (all hidden states) before vLLM samples.

Why: the runner-to-proposer feed (``runner_feeds_proposer``) reaches the proposer after sampling and carries only
the hidden states of the sampled rows. A method that needs the hidden state of every token the target computes
(contrastive search: every prompt position is part of the context its degeneration penalty compares with) or that
must act before the step's tokens are chosen (a tree verifier that reads its candidates' hidden states; dropping
the token vLLM samples at a prompt's end) has no hook: vLLM 0.32 keeps the forward's outputs in the runner's
``execute_model_state`` between ``execute_model`` and ``sample_tokens`` only.

How: wraps ``GPUModelRunner.sample_tokens`` (the CPU runner inherits it). When the runner's drafter is a
``declab.integrations.sdk.proposer.DeclabProposer`` and the step ran a forward, the drafter's ``on_forward`` gets a
``TargetForward`` (the runner, the scheduler output, the hidden states of every scheduled token, the logits about
to be sampled) before the original ``sample_tokens`` runs. A proposer may mark rows in the runner's
``discard_request_mask`` there: vLLM then commits nothing for them this step (its partial-prefill rule).

vLLM version: 0.32.0 (``vllm/v1/worker/gpu_model_runner.py::GPUModelRunner.sample_tokens``, ``ExecuteModelState``).

Removal plan: when vLLM's proposer interface (RFC #36219) passes the target's hidden states of the whole step
before sampling, take them from there and delete this patch.
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk import DeclabPatch


class RunnerForwardToProposerPatch(DeclabPatch):
    name = "runner_forward_to_proposer"
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        from declab.integrations.sdk.proposer import DeclabProposer, TargetForward

        original = target.sample_tokens

        def sample_tokens(self, grammar_output, *args, **kwargs):
            drafter = getattr(self, "drafter", None)
            state = getattr(self, "execute_model_state", None)
            if isinstance(drafter, DeclabProposer) and state is not None:
                drafter.on_forward(TargetForward(runner=self, scheduler_output=state.scheduler_output,
                                                 hidden_states=state.hidden_states, logits=state.logits))
            return original(self, grammar_output, *args, **kwargs)

        sample_tokens.__wrapped__ = original
        return {"sample_tokens": sample_tokens}
