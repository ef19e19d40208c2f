"""The declab plugin SDK: the one surface a plugin imports from declab (besides shared family modules in
``declab.plugins.shared`` and its own package).

Plain data (importable without torch or vLLM):

* ``PluginSpec`` and its hook sections ``LogitsHook``, ``ProposerHook`` (+ ``ProposerBenchConfig``), ``SearchHook``,
  ``BenchEntry``; ``ParamSpec`` / ``resolve_params`` for per-request parameters and engine-wide settings;
* ``runtime``: selected plugins, engine-wide settings from ``additional_config``, model facts;
* ``DeclabPatch`` / ``apply_patches`` (patches check their declared vLLM version when applied).

Loaded on first use (they import torch): ``RowContext``, ``RowProcessor``, ``GroupRowProcessor`` (per-request
logits rows, companion rows), ``DeclabProposer`` (speculative proposers), and the bench harness
(``declab.integrations.sdk.bench``).
"""

from __future__ import annotations

from declab.integrations.sdk import runtime
from declab.integrations.sdk.params import ParamSpec, resolve_params
from declab.integrations.sdk.patching import DeclabPatch, PatchConflict, apply_patches
from declab.integrations.sdk.spec import (
    HOOK_ATTENTION,
    HOOK_BENCH,
    HOOK_LOGITS,
    HOOK_PROPOSER,
    HOOK_SEARCH,
    AttentionHook,
    BenchEntry,
    LogitsHook,
    PluginSpec,
    ProposerBenchConfig,
    ProposerHook,
    SearchHook,
    load_object,
)

_LAZY = {
    "RowContext": "declab.integrations.sdk.rows",
    "RowProcessor": "declab.integrations.sdk.rows",
    "GroupRowProcessor": "declab.integrations.sdk.rows",
    "force_token": "declab.integrations.sdk.rows",
    "DeclabProposer": "declab.integrations.sdk.proposer",
}

__all__ = [
    "runtime", "ParamSpec", "resolve_params", "DeclabPatch", "PatchConflict", "apply_patches", "HOOK_ATTENTION",
    "HOOK_BENCH", "AttentionHook", "HOOK_LOGITS", "HOOK_PROPOSER", "HOOK_SEARCH", "BenchEntry", "LogitsHook",
    "PluginSpec", "ProposerBenchConfig", "ProposerHook", "SearchHook", "load_object", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
