"""vLLM 0.32's CPU expand_kernel fallback loses float and int32 outputs; the cpu_expand_kernel patch fixes it.

Runs vLLM's own ``expand_batch_to_tokens`` (what the rejection sampler uses to expand per-request temperatures and
top-k to one value per draft token) with the CPU kernel overrides registered as a vLLM worker registers them. No
mocks. The first test documents the upstream bug: when it fails, vLLM fixed it and the patch can go (its removal plan).
The distribution-level check is Token Recycling's temperature-1 chi-square test against vanilla
(``test_token_recycling_engine.py``), whose negative control runs the same engine with this unpatched kernel.
"""

import pytest
import torch

from declab.patches.cpu_expand_kernel import CpuExpandKernelPatch

TEMPERATURES = torch.tensor([0.7, 1.3, 0.0], dtype=torch.float32)  # 0.0 = GREEDY_TEMPERATURE, replaced by 1
CU = torch.tensor([3, 5, 9], dtype=torch.int32)
EXPECTED = torch.tensor([0.7] * 3 + [1.3] * 2 + [1.0] * 4)
TOP_K = torch.tensor([5, 1, 50], dtype=torch.int32)  # the input batch's top_k is int32
EXPECTED_TOP_K = [5] * 3 + [1] * 2 + [50] * 4


@pytest.fixture(autouse=True, scope="module")
def _cpu_kernels():
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("CPU-only kernel fallback")
    current_platform.import_kernels()  # loads torch.ops._C as a vLLM worker does


def _expand_temperatures():
    from vllm.platforms import current_platform
    from vllm.v1.sample.rejection_sampler import GREEDY_TEMPERATURE, expand_batch_to_tokens

    current_platform.register_triton_kernel_overrides()  # what the worker does after loading general plugins
    return expand_batch_to_tokens(TEMPERATURES, CU, 9, replace_from=GREEDY_TEMPERATURE, replace_to=1)


def _expand_top_k():
    from vllm.v1.sample.rejection_sampler import expand_batch_to_tokens

    return expand_batch_to_tokens(TOP_K, CU, 9)


def test_upstream_cpu_fallback_loses_float_and_int32_outputs(monkeypatch):
    from vllm.utils import cpu_triton_utils

    # vLLM's own fallback, also when the patch was applied earlier in this process (it keeps the original).
    original = vars(cpu_triton_utils).get("_declab_orig__expand_kernel_impl", cpu_triton_utils._expand_kernel_impl)
    monkeypatch.setattr(cpu_triton_utils, "_expand_kernel_impl", original)
    assert not torch.allclose(_expand_temperatures(), EXPECTED)
    top_k = torch.full((9,), -7, dtype=torch.int32)  # int32, as the input batch's top_k
    original(top_k, TOP_K, CU, 0, 0)
    assert top_k.tolist() == [-7] * 9  # the kernel wrote into an int64 copy


def test_patched_fallback_expands_floats_and_int32_and_keeps_the_int64_path():
    from vllm.utils import cpu_triton_utils

    CpuExpandKernelPatch.apply()
    assert torch.allclose(_expand_temperatures(), EXPECTED)
    assert _expand_top_k().tolist() == EXPECTED_TOP_K
    ints = torch.zeros(9, dtype=torch.int64)
    cpu_triton_utils._expand_kernel_impl(ints, torch.tensor([4, -1, 6]), CU, -1, 2)
    assert ints.tolist() == [4, 4, 4, 2, 2, 6, 6, 6, 6]
