"""Plugin statistics on vLLM's ``/metrics``: declab's stat logger next to vLLM's, and a ``declab`` field on the
``SchedulerStats`` an engine step sends to the front-end.

Why: ``/metrics`` is served from the front-end process's Prometheus registry, fed by the stat loggers of vLLM's
``StatLoggerManager`` with the ``SchedulerStats`` / ``IterationStats`` of every engine step; counters kept in the
engine-core process never reach it. vLLM 0.32 has two ways to add a stat logger: ``AsyncLLM(stat_loggers=...)``,
which ``vllm serve`` does not expose, and the ``vllm.stat_logger_plugins`` entry-point group, which loads whenever the
suite is installed (not only when a plugin is selected) and turns stats on under ``--disable-log-stats``. And
``SchedulerStats`` has no field for a plugin's engine-side numbers (companion rows in the scheduler's queues).

How:

* ``declab_stat_logger`` wraps ``StatLoggerManager.__init__`` (front-end; vLLM builds it only when it logs stats)
  and adds ``declab.integrations.stat_logger:DeclabStatLogger`` to its custom stat loggers; vLLM's own loggers
  are unchanged. Applied by the entry point whenever a plugin is selected.
* ``scheduler_stats_field`` gives the ``SchedulerStats`` dataclass one more field, ``declab: dict | None = None``
  (what an upstream ``plugin_stats`` field would be), so that vLLM's msgpack encoder sends it from the engine core
  and its typed decoder keeps it in the front-end (both read the dataclass's fields). It must be applied in both
  processes before their encoder/decoder is built, which the entry point guarantees; an engine or front-end
  without it drops the field and nothing else changes. The request-group seam applies it and fills the field
  (``Scheduler.make_stats``).

vLLM version: 0.32.0 (``vllm/v1/metrics/loggers.py::StatLoggerManager``, ``vllm/v1/metrics/stats.py::
SchedulerStats``, ``vllm/v1/serial_utils.py`` msgspec encoding of dataclasses).

Removal plan: upstream a ``SchedulerStats.plugin_stats`` dict and stat-logger plugins gated by ``VLLM_PLUGINS``
without forcing stats on (or an engine-args way to add a stat logger); then register ``DeclabStatLogger`` there,
have the scheduler fill ``plugin_stats``, and delete this module.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from declab.integrations.sdk import DeclabPatch

STATS_FIELD = "declab"  # SchedulerStats.declab: {statistic name: value} of the selected plugins, per engine step
STAT_LOGGER = "declab.integrations.stat_logger:DeclabStatLogger"


class StatLoggerPatch(DeclabPatch):
    name = "declab_stat_logger"
    target = "vllm.v1.metrics.loggers:StatLoggerManager"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        original = target.__init__
        signature = inspect.signature(original)

        def __init__(self, *args, **kwargs):
            from declab.integrations.sdk.spec import load_object

            bound = signature.bind(self, *args, **kwargs)
            loggers = list(bound.arguments.get("custom_stat_loggers") or ())
            declab_logger = load_object(STAT_LOGGER)
            if declab_logger not in loggers:
                loggers.append(declab_logger)
            bound.arguments["custom_stat_loggers"] = loggers
            original(*bound.args, **bound.kwargs)

        __init__.__wrapped__ = original
        return {"__init__": __init__}


class SchedulerStatsFieldPatch(DeclabPatch):
    name = "scheduler_stats_field"
    target = "vllm.v1.metrics.stats:SchedulerStats"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        kind = dict[str, float] | None
        new_field = dataclasses.field(default=None, init=False)  # vLLM never passes it; dataclasses.replace keeps working
        new_field.name = STATS_FIELD
        new_field.type = kind
        new_field._field_type = dataclasses._FIELD  # what @dataclass sets on a regular field
        return {
            STATS_FIELD: None,  # the default, as a class attribute (instances built by vLLM's __init__ lack it)
            "__dataclass_fields__": {**target.__dataclass_fields__, STATS_FIELD: new_field},
            "__annotations__": {**target.__dict__.get("__annotations__", {}), STATS_FIELD: kind},
        }
