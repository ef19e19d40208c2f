"""Engine-wide plugin settings the vLLM way: ``additional_config={"declab": {plugin: {...}}}``, validated at start-up
by the plugin's ``ParamSpec``s with the setting named; the old environment variables still work, with a warning."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from declab.integrations import registry
from declab.integrations.sdk.runtime import check_engine_config_section, engine_settings

pytestmark = pytest.mark.core


def _with_settings():
    spec = next((s for s in registry.all_specs().values() if s.settings and s.settings_env), None)
    assert spec is not None, "no plugin declares engine-wide settings (Token Recycling did)"
    return spec


def test_defaults_and_additional_config_values():
    spec = _with_settings()
    defaults = {p.name: p.default for p in spec.settings}
    assert engine_settings(spec, None) == defaults
    first = spec.settings[0]
    value = first.default if first.choices is None else first.choices[-1]
    assert engine_settings(spec, {"declab": {spec.name: {first.name: value}}})[first.name] == value


def test_bad_settings_name_the_setting():
    spec = _with_settings()
    first = spec.settings[0]
    with pytest.raises(ValueError, match=rf"additional_config\.declab\.{spec.name}\.{first.name} must be"):
        engine_settings(spec, {"declab": {spec.name: {first.name: "not-a-value" if first.kind is not str else 3}}})
    with pytest.raises(ValueError, match=rf"additional_config\.declab\.{spec.name}\.nope is not a parameter"):
        engine_settings(spec, {"declab": {spec.name: {"nope": 1}}})
    with pytest.raises(ValueError, match=rf"additional_config\.declab\.{spec.name} must be an object"):
        engine_settings(spec, {"declab": {spec.name: [1]}})


def test_section_checks_plugin_names_and_selection():
    spec = _with_settings()
    with pytest.raises(ValueError, match=r"additional_config\.declab\.nope: unknown plugin 'nope'"):
        check_engine_config_section({"declab": {"nope": {}}}, (spec.name,))
    with pytest.raises(ValueError, match=rf"additional_config\.declab\.{spec.name}: plugin '{spec.name}' is not "
                                         "selected"):
        check_engine_config_section({"declab": {spec.name: {}}}, ())
    with pytest.raises(ValueError, match=r"additional_config\.declab must be an object"):
        check_engine_config_section({"declab": 3}, (spec.name,))
    check_engine_config_section({"other_key": 1}, ())  # vLLM's own additional_config keys are not ours


def test_deprecated_environment_variable_still_works(monkeypatch, caplog):
    spec = _with_settings()
    first = spec.settings[0]
    value = first.default if first.choices is None else first.choices[-1]
    monkeypatch.setenv(spec.settings_env, f'{{"{first.name}": {value!r}}}'.replace("'", '"'))
    with caplog.at_level(logging.WARNING, logger="declab"):
        assert engine_settings(spec, None)[first.name] == value
    assert spec.settings_env in caplog.text and "deprecated" in caplog.text
    # additional_config wins over the environment.
    assert engine_settings(spec, {"declab": {spec.name: {}}})[first.name] == first.default


def test_engine_args_seam_refuses_bad_settings_before_any_engine_starts():
    """Through vLLM's own EngineArgs (front-end, no engine): the error names the setting."""
    spec = _with_settings()
    first = spec.settings[0]
    code = textwrap.dedent(f"""
        from declab.integrations.entrypoint import register
        register()
        from vllm.engine.arg_utils import EngineArgs
        from declab.integrations.models import default_model
        args = EngineArgs(model=default_model(), additional_config={{"declab": {{"{spec.name}": {{"{first.name}": []}}}}}})
        try:
            args.create_engine_config()
        except ValueError as e:
            print("ERROR", e)
    """)
    env = {k: v for k, v in os.environ.items() if k != "DECLAB_PLUGINS"}
    env["DECLAB_PLUGINS"] = spec.name
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert f"ERROR additional_config.declab.{spec.name}.{first.name} must be" in out.stdout, out.stderr[-3000:]
