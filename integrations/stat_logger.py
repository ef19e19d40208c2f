"""declab's Prometheus metrics: a vLLM stat logger (``StatLoggerBase``) that lives in the front-end process.

vLLM 0.32 serves ``/metrics`` from the API server (front-end) process's Prometheus registry; counters incremented
in the engine-core process would never reach it (vLLM sets up ``prometheus_client``'s multiprocess mode only for
several API servers, and then only across API servers). So, like vLLM's own ``PrometheusStatLogger``, everything
here is recorded in the front-end:

* admission (requests and rejections by plugin) where declab validates a request: ``record_request`` /
  ``record_rejection``, called by the router's ``validate_params`` and by the prompt-rendering seam;
* engine-side numbers from the ``SchedulerStats`` each engine step sends to the front-end: vLLM's own
  ``spec_decoding_stats``, labelled with the proposer plugin that drafted them, and the scheduler's companion rows
  (``SchedulerStats.declab``, filled by the request-group seam; ``declab.patches.plugin_stats``).

vLLM creates this logger next to its own (``declab.patches.plugin_stats`` adds it to ``StatLoggerManager``), only
when a plugin is selected and only when vLLM logs stats (not under ``--disable-log-stats``). Each group of metrics
is registered only when a selected plugin can move it. Names and labels follow vLLM's (``model_name``, ``engine``
for engine-side metrics); label values are bounded (plugin names, declared parameter names), never request text.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from prometheus_client import REGISTRY, Counter, Gauge
from vllm.v1.metrics.loggers import AggregateStatLoggerBase

from declab.integrations import registry

PREFIX = "declab:"
UNKNOWN_PLUGIN = "unknown"  # a rejected request that named no known plugin
OTHER_REASON = "other"  # a rejection whose message names no known parameter

_active_admission: "AdmissionMetrics | None" = None  # the admission metrics of this process's live stat logger


def record_request(plugin: str) -> None:
    """A request naming ``plugin`` passed declab's admission checks (no-op while vLLM logs no stats)."""
    if _active_admission is not None:
        _active_admission.requests(plugin)


def record_rejection(extra_args: Mapping[str, Any] | None, error: BaseException) -> None:
    """declab refused a request at admission with ``error`` (no-op while vLLM logs no stats)."""
    if _active_admission is not None:
        _active_admission.rejection(extra_args, error)


def unregister_declab_metrics() -> None:
    """Drop declab collectors from the default registry (a second engine in one process registers them again), as
    vLLM's ``unregister_vllm_metrics`` does for ``vllm:``."""
    for collector in list(REGISTRY._collector_to_names):
        if getattr(collector, "_name", "").startswith(PREFIX):
            REGISTRY.unregister(collector)


_LEADING_NAME = re.compile(r"[A-Za-z_][\w.]*")


def _sampling_option_names() -> frozenset[str]:
    from vllm import SamplingParams

    return frozenset(getattr(SamplingParams, "__struct_fields__", ()))


class AdmissionMetrics:
    """``declab:requests`` and ``declab:request_rejections`` (front-end, per model)."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._requests = Counter(
            f"{PREFIX}requests", "Requests admitted with a declab method, by plugin.",
            labelnames=["model_name", "plugin"])
        self._rejections = Counter(
            f"{PREFIX}request_rejections",
            "Requests declab refused at admission (HTTP 400), by plugin and by the parameter named in the error.",
            labelnames=["model_name", "plugin", "reason"])
        self._sampling_options = _sampling_option_names()

    def requests(self, plugin: str) -> None:
        self._requests.labels(self.model_name, plugin).inc()

    def rejection(self, extra_args: Mapping[str, Any] | None, error: BaseException) -> None:
        from declab.integrations.request_args import requested_method

        method = requested_method(extra_args)
        spec = registry.all_specs().get(method) if isinstance(method, str) else None
        plugin = spec.name if spec is not None else UNKNOWN_PLUGIN
        self._rejections.labels(self.model_name, plugin, self.reason(error, spec)).inc()

    def reason(self, error: BaseException, spec: registry.PluginSpec | None) -> str:
        """The parameter the error names (``declab.alpha``, ``presence_penalty``, ...), from a bounded set."""
        name = getattr(error, "parameter", None)
        if not isinstance(name, str):
            match = _LEADING_NAME.match(str(error))
            name = match.group(0) if match else ""
        if name in ("declab", "declab.method"):
            return name
        if name.startswith("declab."):
            declared = {p.name for p in spec.params} if spec is not None else set()
            return name if name.removeprefix("declab.") in declared else "declab.<unknown>"
        return name if name in self._sampling_options else OTHER_REASON


class CompanionRowMetrics:
    """``declab:companion_rows_running`` / ``_waiting``: the companion rows of request groups in the scheduler's
    queues, which vLLM counts in ``vllm:num_requests_running`` / ``vllm:num_requests_waiting``."""

    QUEUES = ("running", "waiting")

    def __init__(self, labelnames: list[str], per_engine: dict[int, list[object]]) -> None:
        self.gauges: dict[str, dict[int, Any]] = {}
        for queue in self.QUEUES:
            gauge = Gauge(
                f"{PREFIX}companion_rows_{queue}",
                f"Hidden companion rows of declab request groups in the scheduler's {queue} queue (included in "
                f"vllm:num_requests_{queue}).",
                multiprocess_mode="mostrecent", labelnames=labelnames)
            self.gauges[queue] = {idx: gauge.labels(*values) for idx, values in per_engine.items()}

    def observe(self, declab_stats: Mapping[str, Any] | None, engine_idx: int) -> None:
        stats = declab_stats or {}
        for queue, gauges in self.gauges.items():
            if engine_idx in gauges:
                gauges[engine_idx].set(stats.get(f"companion_rows_{queue}", 0))


class ProposerMetrics:
    """``declab:spec_decode_*``: vLLM's speculative-decoding counters of this engine, labelled with the declab
    proposer plugin that drafted (any plugin whose ``ProposerHook`` is the engine's ``custom_class``)."""

    COUNTERS = (
        ("num_drafts", "Speculative drafts proposed by a declab proposer plugin."),
        ("num_draft_tokens", "Draft tokens proposed by a declab proposer plugin (a tree's nodes count each)."),
        ("num_accepted_tokens", "Draft tokens of a declab proposer plugin the target accepted."),
    )

    def __init__(self, plugin: str, labelnames: list[str], per_engine: dict[int, list[object]]) -> None:
        self.counters: dict[str, dict[int, Any]] = {}
        for field_name, doc in self.COUNTERS:
            counter = Counter(f"{PREFIX}spec_decode_{field_name}", doc, labelnames=[*labelnames, "plugin"])
            self.counters[field_name] = {idx: counter.labels(*values, plugin) for idx, values in per_engine.items()}

    @staticmethod
    def plugin_of(vllm_config: Any, selected: list[registry.PluginSpec]) -> str | None:
        spec_config = vllm_config.speculative_config
        if spec_config is None or spec_config.method != "custom_class":
            return None
        return next((s.name for s in selected if s.proposer is not None and s.proposer.proposer == spec_config.model),
                    None)

    def observe(self, spec_decoding_stats: Any, engine_idx: int) -> None:
        for field_name, per_engine in self.counters.items():
            if engine_idx in per_engine:
                per_engine[engine_idx].inc(getattr(spec_decoding_stats, field_name))


class DeclabStatLogger(AggregateStatLoggerBase):
    """vLLM stat logger of the selected plugins' metrics (one for all data-parallel engines, like vLLM's
    ``PrometheusStatLogger``)."""

    def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
        global _active_admission
        unregister_declab_metrics()
        self.engine_indexes = engine_indexes or [0]
        model_name = vllm_config.model_config.served_model_name
        labelnames = ["model_name", "engine"]
        per_engine: dict[int, list[object]] = {idx: [model_name, str(idx)] for idx in self.engine_indexes}
        selected = [registry.get_spec(n) for n in registry.selected_plugins()]

        logits = [s for s in selected if s.logits is not None]
        self.admission = AdmissionMetrics(model_name) if logits else None
        self.companions = (CompanionRowMetrics(labelnames, per_engine)
                           if any(s.logits.companions for s in logits) else None)
        proposer = ProposerMetrics.plugin_of(vllm_config, selected)
        self.proposer = ProposerMetrics(proposer, labelnames, per_engine) if proposer else None
        _active_admission = self.admission

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        if scheduler_stats is None:
            return
        if self.companions is not None:
            self.companions.observe(getattr(scheduler_stats, "declab", None), engine_idx)
        if self.proposer is not None and scheduler_stats.spec_decoding_stats is not None:
            self.proposer.observe(scheduler_stats.spec_decoding_stats, engine_idx)

    def log_engine_initialized(self) -> None:
        pass
