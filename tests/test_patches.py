import pytest

from declab.patches import DeclabPatch, PatchConflict


class Target:
    def greet(self):
        return "hi"


class GreetLoud(DeclabPatch):
    name = "greet_loud"
    target = f"{__name__}:Target"

    @classmethod
    def replacements(cls, target):
        original = target.greet
        return {"greet": lambda self: original(self).upper()}


class GreetOther(DeclabPatch):
    name = "greet_other"
    target = f"{__name__}:Target"

    @classmethod
    def replacements(cls, target):
        return {"greet": lambda self: "other"}


def test_apply_once_keeps_original_and_conflicts_loudly():
    assert GreetLoud.apply() is True
    assert GreetLoud.apply() is False  # idempotent
    assert Target().greet() == "HI"
    assert Target._declab_orig_greet(Target()) == "hi"
    assert Target._declab_patched == {"greet": "greet_loud"}
    with pytest.raises(PatchConflict, match="already patched by 'greet_loud'"):
        GreetOther.apply()


class Nested:
    def inner(self):
        return "inner"

    def outer(self):
        return "outer"


class InnerSeam(DeclabPatch):
    name = "inner_seam"
    target = f"{__name__}:Nested"

    @classmethod
    def replacements(cls, target):
        return {"inner": lambda self: "seam"}


class OuterFix(DeclabPatch):
    name = "outer_fix"
    target = f"{__name__}:Nested"

    @classmethod
    def replacements(cls, target):
        InnerSeam.apply()  # opens a seam on the same target, as seeded_chunked_prefill_cpu opens runner_sample
        return {"outer": lambda self: "fixed"}


def test_a_patch_applied_inside_another_is_recorded():
    assert OuterFix.apply() is True
    assert Nested._declab_patched == {"inner": "inner_seam", "outer": "outer_fix"}


def test_every_registered_patch_is_documented():
    from declab.patches import registry

    for name, patch in registry().items():
        doc = __import__(patch.__module__, fromlist=["_"]).__doc__ or ""
        for section in ("Why", "How", "vLLM version", "Removal plan"):
            assert section in doc, f"patch {name} lacks a {section!r} section"


def test_all_patches_apply_together_without_conflict():
    """Every patch (fixes, seams, plugin patches) applied in one process: seams shared by several patches (e.g. the
    runner-sample seam) must never end in a PatchConflict, whatever plugins a user selects together."""
    import subprocess
    import sys

    code = ("from declab.patches import registry\n"
            "from declab.integrations.sdk import apply_patches\n"
            "names = sorted(registry())\n"
            "print('APPLIED', apply_patches(names) and 'ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert "APPLIED ok" in out.stdout, out.stderr[-3000:]
