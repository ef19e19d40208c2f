"""Fix vLLM 0.32's CPU fallback of the rejection sampler's ``expand_kernel`` for float and int32 outputs.

Why: on CPU (no Triton) vLLM registers ``vllm.utils.cpu_triton_utils._expand_kernel_impl`` as the implementation of
``vllm.v1.sample.rejection_sampler.expand_kernel``. It passes ``_ensure_int64(output)``, which for any output but
int64 is a *converted copy*: the C++ kernel writes into the copy and the real output stays uninitialised. The
rejection sampler uses this kernel to expand per-request temperature, top-p (float32) and top-k (int32) to one value
per draft token, so under speculative decoding every non-greedy request is verified against garbage temperatures:
acceptance collapses and the output distribution is wrong (greedy requests return early and are unaffected); a
top-k request gets garbage ``k`` per draft (a wrong mask, or an out-of-range index that kills the worker). See
``../shared/docs/vllm-0.32-hooks.md`` (CPU bug) and ``tests/test_cpu_expand_kernel.py``, which fails without it.

How: replaces the module attribute ``_expand_kernel_impl`` with a dtype-preserving version (float and int32
outputs are filled with ``repeat_interleave`` in torch; int64 outputs, which the C++ kernel writes in place, still go
to it). It must be in place before ``CpuPlatform.register_triton_kernel_overrides`` reads the attribute; the worker
loads general plugins (and so applies this patch) just before that call (``v1/worker/worker_base.py``). Applied on
CPU only, whenever any declab plugin is selected (``VLLM_FIXES``; Token Recycling also declares it).

vLLM version: 0.32.0 (CPU build, ``vllm/utils/cpu_triton_utils.py``).

Removal plan: delete when the CPU fallback writes float outputs in place upstream (check ``_expand_kernel_impl``
on each vLLM bump; ``tests/test_cpu_expand_kernel.py`` tells).
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk import DeclabPatch


class CpuExpandKernelPatch(DeclabPatch):
    name = "cpu_expand_kernel"
    target = "vllm.utils.cpu_triton_utils"

    @classmethod
    def applies(cls) -> bool:
        from vllm.platforms import current_platform

        return current_platform.is_cpu()

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        import torch

        original = target._expand_kernel_impl

        def _expand_kernel_impl(output, input_val, cu_num_tokens, replace_from, replace_to, MAX_NUM_TOKENS=None):
            if output.dtype == torch.int64:  # the only dtype the C++ kernel writes in place
                return original(output, input_val, cu_num_tokens, replace_from, replace_to, MAX_NUM_TOKENS)
            ends = cu_num_tokens.to(torch.long)
            counts = torch.diff(ends, prepend=ends.new_zeros(1))
            values = torch.where(input_val == replace_from, torch.as_tensor(replace_to, dtype=input_val.dtype),
                                 input_val)
            output[: int(ends[-1])] = torch.repeat_interleave(values, counts).to(output.dtype)

        return {"_expand_kernel_impl": _expand_kernel_impl}
