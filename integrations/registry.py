"""What each plugin declares, and the registry of all plugins.

A plugin folder (``declab/plugins/<name>/``) exposes ``SPEC`` in its ``spec.py``. Specs are plain data (no torch, no
vLLM import), so the registry can be read cheaply by the entry point, the CLI and the front-end validation.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any

from declab.integrations.params import ParamSpec

# How a plugin reaches vLLM.
HOOK_LOGITS = "logits-processor"  # per-request transform, through the one router logits processor
HOOK_PROPOSER = "speculative-proposer"  # speculative_config={"method": "custom_class", ...}
HOOK_SEARCH = "search-loop"  # integration-level loop over engine requests (offline API / HTTP endpoint)
HOOK_BENCH = "benchmark"

STATUSES = ("working", "partial", "planned", "not-applicable")

PLUGINS_ENV = "DECLAB_PLUGINS"

# Every plugin package, in catalog order of their paper. Adding a plugin = one line here + its folder.
PLUGIN_MODULES = (
    "declab.plugins.momentum",
    "declab.plugins.diverse_beam",
    "declab.plugins.token_recycling",
    "declab.plugins.extractive",
    "declab.plugins.asap",
    "declab.plugins.m3id",
    "declab.plugins.lqcd",
    "declab.plugins.cad",
)


@dataclass(frozen=True)
class PluginSpec:
    name: str
    paper: int  # number in ../shared/seed (1..65)
    hook: str
    status: str
    summary: str
    reason: str = ""  # why partial / what is missing
    params: tuple[ParamSpec, ...] = ()
    # For HOOK_LOGITS: "module:Class" of the per-request processor in the plugin's pure core.
    row_processor: str | None = None
    # Names of patches (declab.patches.registry()) applied by the entry point, in every vLLM process, when selected.
    patches: tuple[str, ...] = ()
    # Patches of worker internals (model runner), applied by the plugin's own vLLM object when vLLM constructs it
    # inside the worker, so the front-end never imports runner modules.
    worker_patches: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"plugin {self.name}: status {self.status!r} not in {STATUSES}")
        if self.hook == HOOK_LOGITS and not self.row_processor:
            raise ValueError(f"plugin {self.name}: a logits-processor plugin needs row_processor")

    def validate_request(self, params: dict[str, Any]) -> None:
        """Cross-field / content checks beyond ParamSpec (``extra["validate"]`` = "module:function")."""
        target = self.extra.get("validate")
        if target:
            module, _, attr = target.partition(":")
            getattr(importlib.import_module(module), attr)(params)

    def load_row_processor(self) -> type:
        module, _, attr = (self.row_processor or "").partition(":")
        return getattr(importlib.import_module(module), attr)


_SPECS: dict[str, PluginSpec] | None = None


def all_specs() -> dict[str, PluginSpec]:
    global _SPECS
    if _SPECS is None:
        specs: dict[str, PluginSpec] = {}
        for mod in PLUGIN_MODULES:
            module = importlib.import_module(mod + ".spec")
            # EXTRA_SPECS: further methods of the same package, e.g. a paper's baseline (paper 0 = not in the list).
            for spec in (module.SPEC, *getattr(module, "EXTRA_SPECS", ())):
                if spec.name in specs:
                    raise ValueError(f"two plugins are named {spec.name!r}")
                specs[spec.name] = spec
        _SPECS = specs
    return _SPECS


def get_spec(name: str) -> PluginSpec:
    specs = all_specs()
    if name not in specs:
        raise ValueError(f"unknown plugin {name!r}; known plugins: {', '.join(sorted(specs))}")
    return specs[name]


def parse_selection(value: str | None) -> tuple[str, ...]:
    """``DECLAB_PLUGINS`` value -> validated plugin names. Empty/unset -> ()."""
    value = (value or "").strip()
    if not value:
        return ()
    if value == "all":
        return tuple(all_specs())
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    for n in names:
        get_spec(n)  # raises with the list of known names
    return names


def selected_plugins() -> tuple[str, ...]:
    return parse_selection(os.environ.get(PLUGINS_ENV))
