"""Attention-backend seam: vLLM's ``CPU_ATTN`` becomes declab's backend while an attention plugin is selected.

Why: vLLM 0.32 on CPU always selects ``CPU_ATTN`` and ignores ``--attention-backend``; an attention plugin (KV page
codec, token selector) needs its decode path (``declab.integrations.sdk.attention`` explains the seam).

How: ``register_backend(AttentionBackendEnum.CPU_ATTN, BACKEND_PATH)``, vLLM's own override registry
(process-wide; applied in every process by the entry point, only when a selected plugin declares this patch).
Nothing of vLLM is replaced: the override is what ``register_backend`` is for.

vLLM version: 0.32.0 (``v1/attention/backends/registry.py::register_backend``, ``platforms/cpu.py`` backend choice).

Removal plan: keep while vLLM offers no plugin policy for its CPU backend; if ``--attention-backend`` is honoured on
CPU one day, pass ``CUSTOM`` there instead.
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk import DeclabPatch


class AttentionBackendPatch(DeclabPatch):
    name = "attention_backend"
    target = "vllm.v1.attention.backends.registry"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        from declab.integrations.sdk.attention import BACKEND_PATH

        target.register_backend(target.AttentionBackendEnum.CPU_ATTN, BACKEND_PATH)
        return {}
