"""What a plugin may ask of the running engine: which plugins are selected, its engine-wide settings, model facts.

No torch import at module level; vLLM objects are passed in by the caller.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from declab.integrations.sdk.params import resolve_params

logger = logging.getLogger("declab")

PLUGINS_ENV = "DECLAB_PLUGINS"
# "1": apply declab's fixes of vLLM bugs (``declab.patches.VLLM_FIXES``) even with no plugin selected, e.g. to run
# vLLM's own speculative methods at temperature > 0 on the CPU build, whose rejection sampler is broken without them
# (``patches/cpu_expand_kernel.py``). A plugin selection applies them anyway.
VLLM_FIXES_ENV = "DECLAB_VLLM_FIXES"
# The environment of a benchmark engine running one of vLLM's own speculative methods (ngram, suffix, draft_model):
# no plugin, vLLM's bugs fixed (a baseline measured through a known CPU bug would be no baseline at temperature > 0).
VLLM_METHOD_ENV = {PLUGINS_ENV: None, VLLM_FIXES_ENV: "1"}
CONFIG_KEY = "declab"  # additional_config={"declab": {plugin: {setting: value}}}
# Optional path where a speculative proposer may write its own statistics as JSON (``declab bench spec`` sets it
# for every proposer configuration and records the file in its report).
PROPOSER_STATS_ENV = "DECLAB_PROPOSER_STATS"


def selected_plugins() -> tuple[str, ...]:
    from declab.integrations import registry

    return registry.selected_plugins()


def require_selected(name: str, what: str) -> None:
    """Refuse to run ``what`` (a plugin's vLLM object) when its plugin is not selected: its patches are missing."""
    if name not in selected_plugins():
        raise ValueError(f"{what} is configured but the plugin is not selected: set {PLUGINS_ENV}={name} "
                         "(it applies the patches the plugin needs)")


def proposer_stats_path(*fallback_envs: str) -> str | None:
    """Where the running proposer may write its statistics: ``PROPOSER_STATS_ENV``, else the first of
    ``fallback_envs`` that is set; None when none is, or in any worker but the first of its tensor-parallel group.
    Under tensor parallelism every worker runs the proposer on the same all-gathered logits (vLLM reads the drafts
    of the first one); one writer keeps the file whole."""
    if not is_first_tensor_parallel_worker():
        return None
    for name in (PROPOSER_STATS_ENV, *fallback_envs):
        if os.environ.get(name):
            return os.environ[name]
    return None


def is_first_tensor_parallel_worker() -> bool:
    """True outside a worker, with one worker, and in tensor-parallel rank 0."""
    from vllm.distributed.parallel_state import get_tensor_model_parallel_rank, model_parallel_is_initialized

    return not model_parallel_is_initialized() or get_tensor_model_parallel_rank() == 0


def eos_token_id(model_config: Any) -> int | None:
    """The model's end-of-sequence token (the first one when the config lists several)."""
    eos = getattr(model_config.hf_config, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return eos


def settings_source(spec: Any, additional_config: Any) -> tuple[dict[str, Any], str]:
    """The raw engine-wide settings of ``spec`` and where they came from (for error messages).

    ``additional_config["declab"][spec.name]`` is the way; the plugin's old environment variable (``settings_env``,
    JSON) still works, with a deprecation warning, when additional_config does not set the plugin."""
    section = (additional_config or {}).get(CONFIG_KEY) or {}
    if spec.name in section:
        given = section[spec.name]
        where = f"additional_config.{CONFIG_KEY}.{spec.name}"
        if not isinstance(given, dict):
            raise ValueError(f"{where} must be an object of settings, got {type(given).__name__}")
        return dict(given), where
    raw = os.environ.get(spec.settings_env, "").strip() if spec.settings_env else ""
    if not raw:
        return {}, f"additional_config.{CONFIG_KEY}.{spec.name}"
    logger.warning("declab: %s is deprecated; use --additional-config '{\"%s\": {\"%s\": %s}}' instead",
                   spec.settings_env, CONFIG_KEY, spec.name, raw)
    try:
        given = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{spec.settings_env} must be a JSON object: {e}") from e
    if not isinstance(given, dict):
        raise ValueError(f"{spec.settings_env} must be a JSON object, got {type(given).__name__}")
    return given, spec.settings_env


def engine_settings(spec: Any, additional_config: Any) -> dict[str, Any]:
    """Validated engine-wide settings of ``spec`` (defaults filled); ``ValueError`` naming the setting."""
    given, where = settings_source(spec, additional_config)
    return resolve_params(spec.settings, given, prefix=where)


def check_engine_config_section(additional_config: Any, selected: tuple[str, ...]) -> None:
    """Validate ``additional_config["declab"]`` at start-up: every key a selected plugin with settings, every
    setting valid (``ValueError`` naming it)."""
    from declab.integrations import registry

    section = (additional_config or {}).get(CONFIG_KEY)
    if section is None:
        return
    if not isinstance(section, dict):
        raise ValueError(f"additional_config.{CONFIG_KEY} must be an object {{plugin: {{setting: value}}}}, "
                         f"got {type(section).__name__}")
    for name in section:
        if name not in registry.all_specs():
            raise ValueError(f"additional_config.{CONFIG_KEY}.{name}: unknown plugin {name!r}")
        if name not in selected:
            raise ValueError(f"additional_config.{CONFIG_KEY}.{name}: plugin {name!r} is not selected "
                             f"({PLUGINS_ENV}={','.join(selected) or '<unset>'})")
        spec = registry.get_spec(name)
        if not spec.settings:
            raise ValueError(f"additional_config.{CONFIG_KEY}.{name}: plugin {name!r} has no engine-wide settings")
        engine_settings(spec, additional_config)
