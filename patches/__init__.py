"""Every monkey-patch of vLLM that declab applies, and the small utility that applies them.

Rules (after ArcticInference's ``patching.py``):

* A patch is a small ``DeclabPatch`` subclass. Each documents **Why** (what vLLM lacks), **How** (what it replaces),
  the **vLLM version** it was written against and its **removal plan**.
* A patch replaces named attributes of one target (class or module). The original stays reachable as
  ``_declab_orig_<name>`` on the target, and the patched names are recorded in ``_declab_patched``.
* Two patches touching the same attribute of the same target is an error (``PatchConflict``), never a silent
  override. Applying the same patch twice is a no-op (entry points run once per process, but be safe).
* Patches are applied only when a selected plugin lists them (``PluginSpec.patches``), or, for the fixes of vLLM
  itself in ``VLLM_FIXES``, whenever any plugin is selected; with no plugin selected, nothing in vLLM is touched.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, ClassVar

PINNED_FOR = "0.32.0"

# Fixes of vLLM bugs that are no plugin's own: the entry point applies them whenever any plugin is selected (each
# patch's ``applies()`` still decides whether it is relevant on this platform).
VLLM_FIXES: tuple[str, ...] = ("seeded_chunked_prefill_cpu",)


class PatchConflict(RuntimeError):
    pass


class DeclabPatch:
    """Subclass, set ``name``, ``target`` ("pkg.module" or "pkg.module:Class") and define ``replacements()``."""

    name: ClassVar[str]
    target: ClassVar[str]
    vllm_version: ClassVar[str] = PINNED_FOR

    @classmethod
    def resolve_target(cls) -> Any:
        module, _, attr = cls.target.partition(":")
        obj = importlib.import_module(module)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
        return obj

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Callable[..., Any] | Any]:
        """Return {attribute: new value}; may read the originals from ``target``."""
        raise NotImplementedError

    @classmethod
    def applies(cls) -> bool:
        """Whether this patch is relevant in this environment (e.g. CPU-only fixes); False = skipped silently."""
        return True

    @classmethod
    def is_applied(cls) -> bool:
        target = cls.resolve_target()
        return cls.name in getattr(target, "_declab_applied", ())

    @classmethod
    def apply(cls) -> bool:
        """Apply once; return True if this call changed anything."""
        if not cls.applies():
            return False
        target = cls.resolve_target()
        applied: set[str] = target.__dict__.get("_declab_applied") if isinstance(target, type) else getattr(
            target, "_declab_applied", None
        )
        if applied is None:
            applied = set()
            setattr(target, "_declab_applied", applied)
        if cls.name in applied:
            return False
        owners: dict[str, str] = getattr(target, "_declab_patched", None) or {}
        if "_declab_patched" not in getattr(target, "__dict__", {}):
            owners = dict(owners)
            setattr(target, "_declab_patched", owners)
        new = cls.replacements(target)
        for attr in new:
            if attr in owners:
                raise PatchConflict(
                    f"declab patch {cls.name!r} wants {cls.target}.{attr}, already patched by {owners[attr]!r}"
                )
        for attr, value in new.items():
            if hasattr(target, attr):
                setattr(target, f"_declab_orig_{attr}", getattr(target, attr))
            setattr(target, attr, value)
            owners[attr] = cls.name
        applied.add(cls.name)
        return True


def registry() -> dict[str, type[DeclabPatch]]:
    """All patches by name (imported lazily: each module imports vLLM)."""
    from declab.patches.contrast_prompt_tokens import ContrastPromptTokensPatch
    from declab.patches.contrastive_pairs import ContrastivePairsPatch
    from declab.patches.cpu_expand_kernel import CpuExpandKernelPatch
    from declab.patches.engine_args_router import EngineArgsRouterPatch
    from declab.patches.runner_feeds_proposer import RunnerFeedsProposerPatch
    from declab.patches.seeded_chunked_prefill_cpu import SeededChunkedPrefillCpuPatch
    from declab.patches.tree_verification import TreeAttentionCpuPatch, TreeInputsPatch, TreeVerifierPatch

    return {
        p.name: p
        for p in (
            EngineArgsRouterPatch,
            CpuExpandKernelPatch,
            RunnerFeedsProposerPatch,
            TreeInputsPatch,
            TreeAttentionCpuPatch,
            TreeVerifierPatch,
            ContrastPromptTokensPatch,
            ContrastivePairsPatch,
            SeededChunkedPrefillCpuPatch,
        )
    }


def apply_patches(names: tuple[str, ...] | list[str]) -> list[str]:
    """Apply the named patches in order; return the names that changed something in this process."""
    known = registry()
    done = []
    for n in names:
        if n not in known:
            raise KeyError(f"unknown declab patch {n!r}")
        if known[n].apply():
            done.append(n)
    return done
