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


def test_every_registered_patch_is_documented():
    from declab.patches import registry

    for name, patch in registry().items():
        doc = __import__(patch.__module__, fromlist=["_"]).__doc__ or ""
        for section in ("Why", "How", "vLLM version", "Removal plan"):
            assert section in doc, f"patch {name} lacks a {section!r} section"
