"""Discovery of plugins: every package under ``declab.plugins`` with a ``spec`` module, plus packages that other
distributions register in the ``declab.plugins`` entry-point group (value: the package's import path).

A plugin is one folder: nothing here (or anywhere in ``integrations/`` or ``patches/``) names a plugin. Specs are
plain data, so discovery imports no torch and no vLLM.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil

from declab.integrations.sdk.runtime import PLUGINS_ENV
from declab.integrations.sdk.spec import (  # re-exported for the runtime modules
    HOOK_ATTENTION,
    HOOK_BENCH,
    HOOK_LOGITS,
    HOOK_PROPOSER,
    HOOK_SEARCH,
    STATUSES,
    PluginSpec,
)

__all__ = ["PLUGINS_ENV", "HOOK_ATTENTION", "HOOK_BENCH", "HOOK_LOGITS", "HOOK_PROPOSER", "HOOK_SEARCH", "STATUSES", "PluginSpec",
           "plugin_packages", "all_specs", "get_spec", "parse_selection", "selected_plugins", "plugin_modules"]

ENTRY_POINT_GROUP = "declab.plugins"
# Packages under declab.plugins that are not plugins: family modules several plugins share.
NOT_PLUGINS = ("shared",)

_SPECS: dict[str, PluginSpec] | None = None
_PACKAGE_OF: dict[str, str] = {}  # spec name -> package that declared it


def plugin_packages() -> list[str]:
    """Import paths of every plugin package: folders under ``declab.plugins`` holding a ``spec.py``, then
    entry-point packages."""
    import declab.plugins

    found = []
    for info in sorted(pkgutil.iter_modules(declab.plugins.__path__), key=lambda i: i.name):
        if not info.ispkg or info.name.startswith("_") or info.name in NOT_PLUGINS:
            continue
        package = f"declab.plugins.{info.name}"
        if importlib.util.find_spec(f"{package}.spec") is not None:
            found.append(package)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.value not in found:
            found.append(ep.value)
    return found


def all_specs() -> dict[str, PluginSpec]:
    """Every declared method by name, in reading-list order (paper number; baselines, paper 0, last)."""
    global _SPECS
    if _SPECS is None:
        specs: dict[str, PluginSpec] = {}
        for package in plugin_packages():
            module = importlib.import_module(package + ".spec")
            # EXTRA_SPECS: further methods of the same package, e.g. a paper's baseline (paper 0 = not in the list).
            for spec in (module.SPEC, *getattr(module, "EXTRA_SPECS", ())):
                if spec.name in specs:
                    raise ValueError(f"two plugins are named {spec.name!r}")
                specs[spec.name] = spec
                _PACKAGE_OF[spec.name] = package
        _SPECS = dict(sorted(specs.items(), key=lambda kv: (kv[1].paper or 10**6, kv[0])))
    return _SPECS


def plugin_modules(submodule: str) -> list[str]:
    """``<package>.<submodule>`` for every plugin package that has one (e.g. ``demo``), in discovery order."""
    out = []
    for package in plugin_packages():
        name = f"{package}.{submodule}"
        if importlib.util.find_spec(name) is not None:
            out.append(name)
    return out


def package_of(name: str) -> str:
    all_specs()
    return _PACKAGE_OF[name]


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
