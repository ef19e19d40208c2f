"""The patch base class: every monkey-patch of vLLM is a small ``DeclabPatch`` subclass (after ArcticInference's
``patching.py``).

* Each patch documents **Why** (what vLLM lacks), **How** (what it replaces), the **vLLM version** it was written
  against and its **removal plan**, and declares that version in ``vllm_version``: applying it on another vLLM is
  refused (``VllmVersionMismatch``) unless ``DECLAB_SKIP_VERSION_CHECK=1``.
* A patch replaces named attributes of one target (class or module). The original stays reachable as
  ``_declab_orig_<name>`` on the target, and the patched names are recorded in ``_declab_patched``.
* Two patches touching the same attribute of the same target is an error (``PatchConflict``), never a silent
  override. Applying the same patch twice is a no-op (entry points run once per process, but be safe).
* Patches are applied only when a selected plugin needs them; with no plugin selected, nothing in vLLM is touched.
  Where several plugins need the same missing hook, one patch opens a *seam* and the plugins use it by declaring it
  in their spec or through an SDK class, instead of each patching vLLM: request groups (``sdk.groups``,
  ``GroupRowProcessor``), the runner-to-proposer feed and tree verification (``sdk.proposer``,
  ``sdk.tree_verification``), prompt rendering and engine args.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

from declab.integrations.version import PINNED_VLLM_VERSION, check_vllm_version


class PatchConflict(RuntimeError):
    pass


class DeclabPatch:
    """Subclass, set ``name``, ``target`` ("pkg.module" or "pkg.module:Class") and define ``replacements()``."""

    name: ClassVar[str]
    target: ClassVar[str]
    vllm_version: ClassVar[str] = PINNED_VLLM_VERSION

    @classmethod
    def resolve_target(cls) -> Any:
        from declab.integrations.sdk.spec import load_object

        return load_object(cls.target)

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
        check_vllm_version(expected=cls.vllm_version, what=f"declab patch {cls.name!r}")
        target = cls.resolve_target()
        applied: set[str] = target.__dict__.get("_declab_applied") if isinstance(target, type) else getattr(
            target, "_declab_applied", None
        )
        if applied is None:
            applied = set()
            setattr(target, "_declab_applied", applied)
        if cls.name in applied:
            return False
        owners: dict[str, str] | None = getattr(target, "_declab_patched", None)
        if owners is None or "_declab_patched" not in getattr(target, "__dict__", {}):
            # The target's own record (a copy of an inherited one). An empty record is kept, not replaced: a patch
            # applied from inside another's ``replacements`` (a seam) must write into the same dict.
            owners = dict(owners or {})
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


def apply_patches(names: tuple[str, ...] | list[str]) -> list[str]:
    """Apply the named patches in order; return the names that changed something in this process."""
    from declab.patches import registry

    known = registry()
    done = []
    for n in names:
        if n not in known:
            raise KeyError(f"unknown declab patch {n!r}")
        if known[n].apply():
            done.append(n)
    return done
