import ast
import os
import subprocess
import sys

import pytest

from declab.integrations.version import VllmVersionMismatch, check_vllm_version

PROBE = """
import sys
from declab.integrations.entrypoint import register
register()
heavy = [m for m in ("vllm", "torch", "declab.patches", "declab.integrations.router") if m in sys.modules]
print("HEAVY", heavy)
"""


def _run(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("DECLAB_PLUGINS", "DECLAB_VLLM_FIXES")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, check=True).stdout


def test_unselected_entry_point_imports_and_patches_nothing():
    assert "HEAVY []" in _run(PROBE)
    assert "HEAVY []" in _run(PROBE, DECLAB_PLUGINS="")


def test_selected_logits_plugin_applies_only_the_router_patch():
    code = PROBE + """
from vllm.engine.arg_utils import EngineArgs
print("PATCHED", sorted(EngineArgs._declab_patched))
register()  # idempotent
"""
    out = _run(code, DECLAB_PLUGINS="momentum")
    assert "PATCHED ['create_engine_config']" in out


def test_vllm_fixes_alone_apply_the_fixes_and_nothing_else():
    """``DECLAB_VLLM_FIXES=1`` with no plugin (``declab bench spec``'s vLLM baselines): the fixes of vLLM that apply
    on this platform and the one seam a fix listens on (``runner_sample``), no router; without it, nothing."""
    code = PROBE + """
from declab.patches import VLLM_FIXES, registry
from vllm.engine.arg_utils import EngineArgs
print("APPLIED", sorted(n for n, p in registry().items() if p.is_applied()))
print("FIXES", sorted(n for n in VLLM_FIXES if registry()[n].applies()))
print("ROUTER", hasattr(EngineArgs, "_declab_patched"))
"""
    out = dict(line.split(" ", 1) for line in _run(code, DECLAB_VLLM_FIXES="1").splitlines() if " " in line)
    applied, fixes = ast.literal_eval(out["APPLIED"]), ast.literal_eval(out["FIXES"])
    assert fixes and set(applied) - set(fixes) <= {"runner_sample"} and set(fixes) <= set(applied), out
    assert out["ROUTER"] == "False"
    assert "HEAVY []" in _run(PROBE, DECLAB_VLLM_FIXES="0")


def test_selection_is_carried_to_ray_workers():
    """vLLM's Ray backend copies to its workers only the variables it knows (VLLM_*, HF_*, ...); a selection also
    carries DECLAB_* (the user's own extra prefixes are kept)."""
    code = PROBE + """
from vllm.ray.ray_env import get_env_vars_to_copy
copied = get_env_vars_to_copy()
print("COPIED", "DECLAB_PLUGINS" in copied, "MY_SETTING" in copied)
"""
    assert "COPIED True True" in _run(code, DECLAB_PLUGINS="momentum", MY_SETTING="1",
                                      VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY="MY_")
    assert "COPIED False False" in _run(code)  # nothing selected: nothing changed


def test_unknown_plugin_name_fails_loudly():
    with pytest.raises(subprocess.CalledProcessError) as err:
        _run(PROBE, DECLAB_PLUGINS="momentum,nope")
    assert "unknown plugin 'nope'" in err.value.stderr


def test_version_check(monkeypatch):
    check_vllm_version("0.32.0")
    check_vllm_version("0.32.0+cpu")
    monkeypatch.delenv("DECLAB_SKIP_VERSION_CHECK", raising=False)
    with pytest.raises(VllmVersionMismatch, match="supports vLLM 0.32.0 only, found 0.33.1"):
        check_vllm_version("0.33.1")
    monkeypatch.setenv("DECLAB_SKIP_VERSION_CHECK", "1")
    check_vllm_version("0.33.1")
