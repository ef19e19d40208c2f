"""Every monkey-patch of vLLM that declab applies, found by discovery, and the function that applies them.

A patch is a ``declab.integrations.sdk.DeclabPatch`` subclass in a module of this package (rules in
``declab.integrations.sdk.patching``). Modules here import vLLM lazily (inside ``replacements``), so discovering
them is cheap; no module here imports a plugin.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from declab.integrations.sdk.patching import DeclabPatch, PatchConflict

__all__ = ["DeclabPatch", "PatchConflict", "registry", "VLLM_FIXES"]

# Fixes of vLLM bugs that are no plugin's own: the entry point applies them whenever any plugin is selected (each
# patch's ``applies()`` still decides whether it is relevant on this platform).
VLLM_FIXES: tuple[str, ...] = (
    "seeded_chunked_prefill_cpu", "lone_surrogate_strings", "cpu_expand_kernel", "spec_decode_top_k_cpu")


@lru_cache(maxsize=1)
def registry() -> dict[str, type[DeclabPatch]]:
    """All patches by name: every ``DeclabPatch`` subclass defined in a module of this package."""
    found: dict[str, type[DeclabPatch]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, DeclabPatch) and obj.__module__ == module.__name__
                    and getattr(obj, "name", None)):
                if obj.name in found and found[obj.name] is not obj:
                    raise PatchConflict(f"two declab patches are named {obj.name!r}")
                found[obj.name] = obj
    return found
