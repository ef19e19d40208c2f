"""Engine-args seam: what selected plugins change in the engine configuration, at the one place vLLM builds it.

Why: vLLM 0.32 offers two ways to add a logits processor: the ``vllm.logits_processors`` entry-point group, which
loads into *every* engine whether or not the user wants it (and which the V2 model runner refuses for V1-interface
classes, which would break every GPU deployment that merely has the suite installed), or the
``--logits-processors`` / ``LLM(logits_processors=...)`` list, which the user would have to spell out next to
``DECLAB_PLUGINS``. Neither gives "selected => on, not selected => absent". Plugins also need their engine-wide
settings (``additional_config["declab"]``) checked before any process starts, and request groups need the
synchronous scheduler.

How: wraps ``EngineArgs.create_engine_config`` (front-end process, before the config is shipped to the engine core
and workers) and, from the selected plugins' specs (the seam knows no plugin):

* before the config is built: validates ``additional_config["declab"]`` (each plugin's ``settings``, the setting
  named in the error); turns vLLM's automatic async scheduling off when a selected method has companion rows
  (``LogitsHook.companions``: the request-group seam keeps a request and its companions in lockstep and needs each
  step's output before scheduling the next) and refuses an explicit ``--async-scheduling``;
* after: appends ``declab.integrations.router:DeclabLogitsRouter`` to ``model_config.logits_processors`` when a
  logits-level plugin is selected. That list feeds both admission-time ``validate_params`` (HTTP 400 for bad
  arguments) and the worker's sampler. It refuses loudly the two configurations where vLLM 0.32 would drop or reject
  the router: speculative decoding (V1 silently drops custom logits processors) and Model Runner V2 (needs a
  V2-interface processor, not shipped yet); and runs the selected attention plugin's start-up checks
  (``declab.integrations.sdk.attention.check_attention_engine``: CPU only, no speculative decoding, no
  ``--kv-cache-dtype``, settings that fit the model).

vLLM version: 0.32.0 (``vllm/engine/arg_utils.py::EngineArgs.create_engine_config``).

Removal plan: when vLLM can enable a logits processor from a general plugin (or gates ``vllm.logits_processors``
entry points by ``VLLM_PLUGINS`` and accepts them on both runners), register the router there; validate settings
through vLLM's own ``additional_config`` checks if it grows a plugin schema; then delete this patch.
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk import DeclabPatch


class EngineArgsPatch(DeclabPatch):
    name = "engine_args"
    target = "vllm.engine.arg_utils:EngineArgs"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        original = target.create_engine_config

        def create_engine_config(self, *args, **kwargs):
            prepare_engine_args(self)
            config = original(self, *args, **kwargs)
            attach_router(config)
            check_attention(config)
            return config

        create_engine_config.__wrapped__ = original
        return {"create_engine_config": create_engine_config}


def prepare_engine_args(engine_args) -> None:
    """Check the plugins' engine-wide settings; methods with companion rows keep request groups in lockstep with a
    synchronous scheduler: turn vLLM's automatic async scheduling off for them; refuse an explicit
    ``--async-scheduling``."""
    from declab.integrations import registry
    from declab.integrations.sdk.runtime import check_engine_config_section

    selected = registry.selected_plugins()
    check_engine_config_section(engine_args.additional_config, selected)
    grouped = [n for n in selected if (hook := registry.get_spec(n).logits) is not None and hook.companions]
    if not grouped:
        return
    if engine_args.async_scheduling:
        raise ValueError(
            f"declab: plugins {grouped} keep each request and its companion rows in lockstep, which needs vLLM's "
            "synchronous scheduler; remove --async-scheduling (it is off by default for them)."
        )
    engine_args.async_scheduling = False


def attach_router(config) -> None:
    """Add the router to ``config.model_config.logits_processors`` (idempotent), or raise if it cannot run."""
    from declab.integrations import registry
    from declab.integrations.router import ROUTER_FQCN

    logits_plugins = [n for n in registry.selected_plugins() if registry.get_spec(n).hook == registry.HOOK_LOGITS]
    model_config = config.model_config
    if not logits_plugins or model_config.runner_type == "pooling":
        return
    if config.speculative_config is not None:
        raise ValueError(
            f"declab: logits-level plugins {logits_plugins} are selected ({registry.PLUGINS_ENV}) together with "
            "speculative decoding. vLLM 0.32's V1 model runner silently drops custom logits processors under "
            "speculative decoding, so these plugins would do nothing. Serve them from an engine without "
            f"--speculative-config, or remove them from {registry.PLUGINS_ENV}."
        )
    if config.use_v2_model_runner:
        raise ValueError(
            f"declab: logits-level plugins {logits_plugins} need vLLM's V1 model runner in 0.32 "
            "(their V2-interface adapter is not shipped yet). Set VLLM_USE_V2_MODEL_RUNNER=0."
        )
    current = list(model_config.logits_processors or [])
    if ROUTER_FQCN not in current:
        current.append(ROUTER_FQCN)
    model_config.logits_processors = current


def check_attention(config) -> None:
    """An attention plugin's start-up checks (``declab.integrations.sdk.attention.check_attention_engine``)."""
    from declab.integrations import registry

    if any(registry.get_spec(n).attention is not None for n in registry.selected_plugins()):
        from declab.integrations.sdk.attention import check_attention_engine

        check_attention_engine(config)
