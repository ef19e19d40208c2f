"""What a plugin declares to appear in ``declab demo``: plain data and callables, no vLLM or torch import.

A plugin folder that has a ``demo.py`` exposing ``PANEL`` (a :class:`DemoPanel`) gets a panel in the demo's picture
and a row in its table. The panel names the engines its requests need (:class:`EngineProfile`); the harness
(``integrations/demo.py``) starts as few engines as the profiles allow, each in a child process of its own, runs the
panel's jobs there, and hands the jobs' outputs back to the panel to summarize, draw and print.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class EngineProfile:
    """The engine a job needs.

    ``plugins`` is the ``DECLAB_PLUGINS`` selection (empty: a vanilla engine, nothing selected); ``env`` further
    environment of the engine's process; ``engine_kwargs`` extra ``LLM(...)`` arguments on top of the CPU defaults
    (``engine_run.CPU_ENGINE_KWARGS``). Two profiles share one engine when both select plugins and their ``env`` and
    ``engine_kwargs`` are equal: the engine then selects the union of their plugins. A vanilla profile shares only
    with other vanilla profiles of the same settings, so a vanilla reference stays vanilla.
    """

    plugins: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def sharing_key(self) -> tuple[bool, str, str]:
        """Profiles with the same key can run on one engine."""
        return (bool(self.plugins), json.dumps(dict(self.env), sort_keys=True),
                json.dumps(dict(self.engine_kwargs), sort_keys=True))


@dataclass(frozen=True)
class EngineJob:
    """Requests of a panel that run on one engine.

    ``function`` is ``"module:function"``, called in the engine's child process as ``function(llm, options)``
    (``options``: the demo's command-line options, e.g. ``max_tokens``); it returns JSON-able numbers. Its output
    reaches the panel's ``summarize`` under ``key``, as ``{"result": ..., "wall_s": ..., "spec_metrics": ...}``
    (``spec_metrics``: vLLM's ``vllm:spec_decode_*`` counters over the call).
    """

    key: str
    profile: EngineProfile
    function: str


@dataclass(frozen=True)
class DemoRow:
    """The panel's line in the terminal table: what is measured, the baseline's value, the plugin's value."""

    measure: str
    baseline: str
    plugin: str


@dataclass(frozen=True)
class DemoPanel:
    """One plugin's panel.

    ``summarize(outputs)`` turns the jobs' outputs (by job key) into the panel's numbers (JSON-able; they go to
    ``demo.json``); ``draw(ax, numbers)`` draws them on a matplotlib ``Axes``; ``row(numbers)`` gives the table line.
    """

    name: str
    jobs: tuple[EngineJob, ...]
    summarize: Callable[[dict[str, dict[str, Any]]], dict[str, Any]]
    draw: Callable[[Any, dict[str, Any]], None]
    row: Callable[[dict[str, Any]], DemoRow]
