"""``declab bench spec``: speculative decoding on Spec-Bench and code prompts (vanilla, ngram, suffix, plugin proposers).

One run, one prompt set, one set of engine settings (``engine_run.CPU_ENGINE_KWARGS`` plus prefix caching off,
greedy, ``--max-tokens``); every configuration runs in a fresh child process of its own, one after the other (they
never share the cores):

* ``vanilla``: no speculation.
* ``ngram``: vLLM prompt lookup. Its lookup window (``prompt_lookup_min/max``) and K are tuned first on a small
  subset (the last ``--sweep-per-category`` fitting prompts of each group, batch ``--batch-size``) in one engine
  with K = max of the grid: the window is set on the live drafter between sweep runs (the n-gram proposer keeps no
  state across steps) and drafts are cut to each K. The best tokens/s wins; the sweep is ``report["ngram_sweep"]``.
* ``suffix``: vLLM suffix decoding (Arctic Inference's suffix trees, package ``arctic-inference``) with vLLM's
  defaults (K = ``suffix_decoding_max_tree_depth`` = 24 unless ``--suffix-k``). Recorded as
  ``{"available": false, "reason": ...}`` when the package does not import.
* ``draft_model``: vLLM's draft-model speculation with ``--draft-model`` (default: ``default_draft_model()``), K
  swept over ``--draft-ks`` on the sweep subset, one engine per K (``bench_spec_draft``), then the full phases at
  the best K by tokens/s; the sweep is ``report["draft_model_sweep"]``. Unavailable (with the reason) without a
  draft.
* every configuration a discovered plugin declares for its speculative proposer (``PluginSpec.proposer``:
  ``bench_configs``, name -> ``ProposerBenchConfig``): ``speculative_config={"method": "custom_class", "model":
  <the plugin's proposer class>, "num_speculative_tokens": K}`` with ``DECLAB_PLUGINS=<plugin>`` and the
  configuration's engine-wide settings, merged over ``--settings <plugin>=JSON``, as
  ``additional_config={"declab": {<plugin>: settings}}``. K is the configuration's own (e.g. a tree's draft nodes)
  or else ``--proposer-k`` (default: ngram's chosen K). ``DECLAB_PROPOSER_STATS`` names a file where the proposer
  may write its own statistics (recorded as ``proposer_stats_file``). A tree configuration's acceptance "per
  position" is per tree depth (the scheduler counts an accepted path of length a as positions 1..a).

Prompts: Spec-Bench first turns (``../shared/eval/spec_bench/question.jsonl``, 13 categories) then
``prompts.CODE_PROMPTS`` (group ``code``). A prompt is skipped when ``prompt tokens + max_tokens + largest K``
exceeds the model's 2,048-token context (vLLM's runner turns the drafter off for the *whole batch* as soon as one
sequence could overflow, so such a prompt would also distort its batch); ``report["prompts"]["skipped"]`` lists them.
``--limit N`` keeps the first N prompts of each group, ``--groups`` only the groups named (``long_code``, 16 long
source files of the pinned vLLM package cut to 1,800 tokens, only when named: ``prompts.long_code_prompts``).

Each engine runs two timed phases after one warm-up on prompts outside the set:

* ``batch16``: all selected prompts in batches of ``--batch-size`` (default: consecutive prompts in file order, so
  groups are contiguous and only boundary batches mix groups; ``--batch-grouping category`` never mixes). A
  batch's wall time is attributed to its prompts by their share of the batch's request-active time (vLLM's
  per-request timestamps, first scheduled -> last token), so per-group numbers stay meaningful in mixed batches:
  a request that needs fewer target steps gets a smaller share.
* ``batch1``: the first ``--batch1-limit`` prompts of each group, one ``generate`` call per prompt.

Before each phase the proposer's state is reset in the worker (a plugin proposer's ``declab_bench_reset()``, e.g.
an adjacency matrix back to zeros; suffix decoding's response cache emptied), so no phase sees outputs of the same
prompts from an earlier pass;
inside a phase the state carries over from query to query (the papers' hot start). Prefix caching is off for every
configuration, so every phase pays the same prefill.

Per configuration, group and phase the report gives tokens/s and speed-up vs vanilla (same phase, same prompts),
mean accepted length (vLLM's convention ``1 + accepted / drafts``, over the steps that had a draft), tokens per
target forward (``generated / (generated - accepted)``: steps without a draft included), acceptance rate per draft
position (``accepted_at_pos / drafts``), the share of outputs token-identical to vanilla's, the proposer's seconds
per step (wall time of the worker's ``drafter.propose`` per call: the same measurement for every method; its
share of the phase's wall time is ``proposer.share_of_wall_time``, the draft share of time) and the
proposer's own memory (a plugin proposer's ``declab_bench_memory()``; suffix trees' ``estimate_memory``; ngram
buffers) next to the worker's RSS; a plugin proposer's own ``stats`` dict is reported as ``proposer.stats``
(a proposer that runs a draft model counts its batched draft passes of the phase there as ``draft_forwards``:
``declab bench verify-cost`` charges them).
Acceptance comes from vLLM's per-request counters (``per_request_spec_decode_metrics="summary"``); their sums equal
the engine counters (``engine_spec_metrics``, ``vllm:spec_decode_*`` over the phase).

Workers: every configuration, vanilla included, uses ``worker_cls=SpecBenchWorker`` (this module): a ``CPUWorker``
that adds the RPCs used here (proposer timing, reset, memory) and changes nothing in the engine step.

Runtime (2 shared cores; measured with other jobs on the machine): the default run (all fitting prompts, 64 tokens,
batch-1 on 2 prompts per group) is about 40 min: 5 engine starts (~1 min each), the sweep (~2 min), and per
configuration ~7-9 min for the batched phase (Spec-Bench's RAG and summarization prompts, ~1,100 tokens each, are
two thirds of it) plus ~1 min for batch 1. At 128 tokens the batched phase alone is ~12-14 min per configuration.
``--limit 3`` takes about 15 min. The ``draft_model`` sweep adds one engine per K (30-60 s each on the 14-prompt
subset at 32 tokens: about 5 min for the default six K). The tree configuration is several times slower than the others on CPU: over
30 min for the batch-16 phase of the full set, about 12 min with ``--limit 10``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from declab.integrations import bench_spec_draft, registry
from declab.integrations.sdk.bench import (
    CPU_ENGINE_KWARGS,
    ChildFailed,
    RunSpec,
    add_option,
    call_in_child,
    resolve_draft_model,
    default_model,
    group_order,
    load_prompt_set,
    metrics_diff,
    spec_metrics,
)
from declab.integrations.sdk.runtime import (CONFIG_KEY, PLUGINS_ENV, PROPOSER_STATS_ENV, VLLM_METHOD_ENV,
                                             engine_settings)
from declab.integrations.sdk.spec import ProposerBenchConfig

WORKER_CLS = "declab.integrations.bench_spec.SpecBenchWorker"
PHASES_TARGET = "declab.integrations.bench_spec:run_phases"  # child side of one configuration (engine_run --call)
BUILTIN_CONFIGS = ("vanilla", "ngram", "suffix", "draft_model")  # vLLM's own methods; plugin proposers are discovered
# A warm-up prompt outside the benchmark set (so no proposer state is learnt from the prompts measured later).
WARMUP_PROMPTS = ["The quick brown fox jumps over the lazy dog. The quick brown fox", "def add(a, b):\n    return"]
PHASES = ("batch16", "batch1")
DEFAULT_NGRAM_WINDOWS = ((1, 3), (2, 4), (3, 5))
DEFAULT_NGRAM_KS = (2, 4, 6)
DEFAULT_MAX_TOKENS = 64
SUFFIX_DEFAULT_K = 24  # vLLM: num_speculative_tokens defaults to suffix_decoding_max_tree_depth (24)


# ----------------------------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProposerConfig:
    """One discovered proposer configuration: the plugin declaring it, its proposer class path and its settings."""

    name: str
    plugin: str
    proposer: str
    bench: ProposerBenchConfig
    alias: str | None = None  # the plugin's deprecated flag prefix (ProposerHook.bench_alias)


def proposer_configs() -> dict[str, ProposerConfig]:
    """Every ``bench_configs`` entry of every discovered plugin with a proposer, in discovery order."""
    out: dict[str, ProposerConfig] = {}
    for spec in registry.all_specs().values():
        if spec.proposer is None:
            continue
        for name, cfg in spec.proposer.bench_configs.items():
            if name in BUILTIN_CONFIGS or name in out:
                raise ValueError(f"declab bench spec: configuration {name!r} of plugin {spec.name} is declared twice")
            out[name] = ProposerConfig(name, spec.name, spec.proposer.proposer, cfg, spec.proposer.bench_alias)
    return out


def _proposer_aliases() -> dict[str, str]:
    """Deprecated flag prefix -> plugin (``ProposerHook.bench_alias``)."""
    return {c.alias: c.plugin for c in proposer_configs().values() if c.alias}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``declab bench spec``. Common options the parser already has (``--model``, ``--max-tokens``,
    ``--out``) are left as they are; ``--prompts``, ``--repeats`` and ``--latency-prompts`` are not used here."""
    configs = [*BUILTIN_CONFIGS, *proposer_configs()]
    add_option(parser, "--model", default=None, help="model path (default: decoder-29m)")
    add_option(parser, "--max-tokens", type=int, default=None,
         help=f"tokens per output (default {DEFAULT_MAX_TOKENS}: keeps the full default run near 40 min on 2 cores)")
    add_option(parser, "--out", default="bench-results", help="output folder")
    add_option(parser, "--limit", type=int, default=None,
         help="first N prompts of each Spec-Bench category and of the code prompts (default: all that fit)")
    add_option(parser, "--groups", default=None,
         help="comma list of prompt groups to run (Spec-Bench categories, 'code', and 'long_code', the openings of "
              "16 long source files of the pinned vLLM package, run only when named; default: all but long_code), "
              "e.g. 'rag,summarization' for the long-context prompts")
    add_option(parser, "--batch-size", type=int, default=16, help="batch size of the batched phase")
    add_option(parser, "--batch-grouping", choices=("mixed", "category"), default="mixed",
         help="batched phase: 'mixed' = consecutive prompts in file order (always full batches), 'category' = "
              "batches never mix groups (MT-bench categories then run as batches of 10)")
    add_option(parser, "--configs", default=",".join(configs),
         help=f"comma list out of {','.join(configs)} (vanilla is always run; proposer configurations come from "
              "the plugins' specs)")
    add_option(parser, "--phases", default=",".join(PHASES), help="comma list out of batch16,batch1")
    add_option(parser, "--batch1-limit", type=int, default=2,
         help="batch-1 phase: first N prompts of each group (of those selected; 0 = all)")
    add_option(parser, "--ngram", default=None,
         help="skip the sweep and use MIN,MAX,K for ngram (prompt_lookup_min, prompt_lookup_max, K)")
    add_option(parser, "--ngram-windows", default=";".join(f"{a},{b}" for a, b in DEFAULT_NGRAM_WINDOWS),
         help="sweep: lookup windows 'MIN,MAX;MIN,MAX;...'")
    add_option(parser, "--ngram-ks", default=",".join(map(str, DEFAULT_NGRAM_KS)), help="sweep: K values (one engine with the largest; drafts cut to each K)")
    add_option(parser, "--sweep-per-category", type=int, default=1,
         help="sweep subset: the last N fitting prompts of each group (disjoint from --limit's first N when small)")
    add_option(parser, "--proposer-k", type=int, default=None,
         help="K of plugin proposer configurations that fix none (default: ngram's K)")
    add_option(parser, "--settings", action="append", default=[], metavar="PLUGIN=JSON",
         help="engine-wide settings of a proposer plugin (additional_config), under each of its configurations' "
              "own; repeatable")
    for alias, plugin in _proposer_aliases().items():
        add_option(parser, f"--{alias}-k", dest=f"legacy_k__{plugin}", type=int, default=None, metavar="K",
                   help=f"deprecated: K of {plugin}'s configurations that fix none (use --proposer-k)")
        add_option(parser, f"--{alias}-config", dest=f"legacy_settings__{plugin}", default=None, metavar="JSON",
                   help=f"deprecated: same as --settings {plugin}=JSON")
    add_option(parser, "--suffix-k", type=int, default=None, help=f"suffix decoding K (default: vLLM's {SUFFIX_DEFAULT_K})")
    add_option(parser, "--draft-model", default=None,
         help="draft model of the draft_model configuration: a folder or a known draft's name (draft-5m, "
              "draft-5m-long; default: $DECLAB_DRAFT_MODEL, else ../shared/fixtures/draft-5m beside the checkout)")
    add_option(parser, "--draft-ks", default=",".join(map(str, bench_spec_draft.DEFAULT_DRAFT_KS)),
         help="draft_model sweep: K values (one engine each on the sweep subset)")
    add_option(parser, "--draft-k", type=int, default=None, help="skip the draft_model sweep and use this K")
    add_option(parser, "--draft-sweep-on", choices=("subset", "selected"), default="subset",
         help="draft_model sweep prompts: the sweep subset (default) or the selected prompts of the batched phase "
              "(every K then has tokens per forward on the plugins' prompts: the fixed-K baseline of the "
              "adaptive-length comparison)")
    add_option(parser, "--draft-choose", choices=("tokens_per_s", "tokens_per_forward"), default="tokens_per_s",
         help="which swept K runs draft_model's full phases: the fastest (default) or the one committing the most "
              "tokens per target forward (the best chain, what the draft-tree proposers are compared with)")
    add_option(parser, "--ignore-eos", action="store_true", help="fixed-length outputs (default: stop at EOS)")
    add_option(parser, "--temperature", type=float, default=0.0,
         help="sampling temperature of every request (default 0: greedy; > 0: unseeded sampling, so outputs are not "
              "comparable token by token, only tokens per forward and acceptance are)")
    add_option(parser, "--child-timeout", type=float, default=1800, help="seconds per engine child process")
    return parser


def proposer_settings(args) -> dict[str, dict[str, Any]]:
    """Plugin -> engine-wide settings from ``--settings PLUGIN=JSON`` (and the deprecated ``--<alias>-config``)."""
    out: dict[str, dict[str, Any]] = {}
    given = [tuple(item.split("=", 1)) if "=" in item else (item, None) for item in args.settings]
    given += [(k.removeprefix("legacy_settings__"), v) for k, v in vars(args).items()
              if k.startswith("legacy_settings__") and v is not None]
    plugins = {c.plugin for c in proposer_configs().values()}
    for plugin, text in given:
        if text is None:
            raise SystemExit(f"declab bench spec: --settings {plugin!r} must be PLUGIN=JSON")
        if plugin not in plugins:
            raise SystemExit(f"declab bench spec: --settings {plugin}: not a plugin with proposer configurations "
                             f"(known: {', '.join(sorted(plugins)) or 'none'})")
        try:
            value = json.loads(text or "{}")
        except json.JSONDecodeError as e:
            raise SystemExit(f"declab bench spec: --settings {plugin}: not JSON: {e}") from e
        if not isinstance(value, dict):
            raise SystemExit(f"declab bench spec: --settings {plugin}: must be a JSON object")
        out[plugin] = {**out.get(plugin, {}), **value}
    return out


def proposer_k(args, plugin: str) -> int | None:
    """``--<alias>-k`` of ``plugin`` (deprecated) or ``--proposer-k``."""
    return getattr(args, f"legacy_k__{plugin}", None) or args.proposer_k


# ----------------------------------------------------------------------------------------------------------------
# Prompt set
# ----------------------------------------------------------------------------------------------------------------


def batches_mixed(n: int, batch_size: int) -> list[list[int]]:
    """Consecutive index batches in file order (groups are contiguous, so most batches hold one group)."""
    return [list(range(s, min(n, s + batch_size))) for s in range(0, n, batch_size)]


def batches_by_group(items: list[dict[str, Any]], batch_size: int) -> list[list[int]]:
    """Index batches: each group in file order, cut into batches of at most ``batch_size`` (never mixing groups)."""
    out: list[list[int]] = []
    for g in group_order(items):
        idx = [i for i, it in enumerate(items) if it["group"] == g]
        out += [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
    return out


def _first_per_group(items: list[dict[str, Any]], n: int | None) -> list[int]:
    seen: dict[str, int] = {}
    out = []
    for i, it in enumerate(items):
        seen[it["group"]] = seen.get(it["group"], 0) + 1
        if n is None or seen[it["group"]] <= n:
            out.append(i)
    return out


def sweep_subset(items_all: list[dict[str, Any]], per_group: int) -> list[dict[str, Any]]:
    out = []
    for g in group_order(items_all):
        out += [it for it in items_all if it["group"] == g][-per_group:]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Worker side: a CPUWorker with RPCs for proposer timing, reset and memory
# ----------------------------------------------------------------------------------------------------------------


def _proc_memory() -> dict[str, int]:
    out = {}
    try:
        for line in open("/proc/self/status"):
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":", 1)
                out[{"VmRSS": "rss_bytes", "VmHWM": "peak_rss_bytes"}[key]] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


def drafter_memory(drafter: Any) -> dict[str, Any]:
    """Bytes held by the proposer's own state (what the method needs beyond the target model and its KV cache).

    A plugin proposer reports its own (``declab_bench_memory() -> {"proposer_bytes": ..., "what": ...}``); vLLM's
    suffix and n-gram proposers are measured here."""
    if drafter is None:
        return {"proposer_bytes": 0, "what": "no proposer"}
    if hasattr(drafter, "declab_bench_memory"):
        return dict(drafter.declab_bench_memory())
    cache = getattr(drafter, "suffix_cache", None)
    if cache is not None:  # suffix decoding
        glob = int(cache._global_tree.estimate_memory())  # noqa: SLF001
        local = sum(int(t.estimate_memory()) for t in cache._local_trees.values())  # noqa: SLF001
        return {"proposer_bytes": glob + local, "global_tree_bytes": glob, "prompt_trees_bytes": local,
                "cached_requests": len(cache.cached_requests),
                "what": "suffix trees (arctic estimate_memory: global response tree + live prompt trees)"}
    bufs = [getattr(drafter, n, None) for n in ("valid_ngram_draft", "valid_ngram_num_drafts")]
    nbytes = sum(int(b.nbytes) for b in bufs if b is not None)
    return {"proposer_bytes": nbytes, "what": "n-gram draft buffers (stateless lookup in the token history)"}


def _reset_drafter(drafter: Any) -> None:
    """Cold proposer state: a plugin proposer's ``declab_bench_reset()`` (its learnt state and its own counters);
    suffix decoding's response cache emptied (the n-gram proposer keeps no state)."""
    if hasattr(drafter, "declab_bench_reset"):
        drafter.declab_bench_reset()
    cache = getattr(drafter, "suffix_cache", None)
    if cache is not None:
        drafter.suffix_cache = type(cache)(max_tree_depth=cache.max_tree_depth,
                                           max_cached_requests=cache.max_cached_requests)


_WORKER_CLASS = None


def _make_worker_class():
    global _WORKER_CLASS
    if _WORKER_CLASS is not None:
        return _WORKER_CLASS
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        from vllm.v1.worker.cpu_worker import CPUWorker as BaseWorker
    else:  # GPU: the V1 GPU worker (its model runner holds the drafter the same way)
        from vllm.v1.worker.gpu_worker import Worker as BaseWorker

    class SpecBenchWorker(BaseWorker):
        """The platform's worker + RPCs ``declab_bench_reset``, ``declab_bench_stats``; times ``drafter.propose``."""

        def init_device(self):
            super().init_device()
            self._declab_timing = {"propose_calls": 0, "propose_seconds": 0.0}
            drafter = getattr(self.model_runner, "drafter", None)
            if drafter is None or not hasattr(drafter, "propose"):
                return
            original, timing = drafter.propose, self._declab_timing

            def timed_propose(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    drafts = original(*args, **kwargs)
                    cap = timing.get("max_draft")
                    return drafts if cap is None else [list(d)[:cap] for d in drafts]
                finally:
                    timing["propose_seconds"] += time.perf_counter() - t0
                    timing["propose_calls"] += 1

            drafter.propose = timed_propose

        def declab_bench_reset(self, drafter_attrs: dict[str, Any] | None = None,
                               max_draft: int | None = None) -> dict[str, Any]:
            """Cold proposer state, zeroed timing; ``drafter_attrs`` set on the drafter; drafts cut to
            ``max_draft`` tokens (a K=8 engine then drafts like a K=``max_draft`` one: used by the ngram sweep)."""
            drafter = getattr(self.model_runner, "drafter", None)
            if drafter is not None:
                _reset_drafter(drafter)
                for k, v in (drafter_attrs or {}).items():
                    if not hasattr(drafter, k):
                        raise AttributeError(f"{type(drafter).__name__} has no attribute {k!r}")
                    setattr(drafter, k, v)
            self._declab_timing.update(propose_calls=0, propose_seconds=0.0, max_draft=max_draft)
            return {"drafter": type(drafter).__name__ if drafter is not None else None}

        def declab_bench_stats(self) -> dict[str, Any]:
            drafter = getattr(self.model_runner, "drafter", None)
            out = {"drafter": type(drafter).__name__ if drafter is not None else None, **self._declab_timing,
                   **_proc_memory(), "memory": drafter_memory(drafter)}
            if drafter is not None and isinstance(getattr(drafter, "stats", None), dict):  # a plugin's own counters
                # with what a declab proposer computes on demand (DeclabProposer.stats_snapshot)
                snapshot = getattr(drafter, "stats_snapshot", None)
                out["drafter_stats"] = snapshot() if callable(snapshot) else dict(drafter.stats)
            return out

    _WORKER_CLASS = SpecBenchWorker
    return SpecBenchWorker


def __getattr__(name: str):
    # vLLM resolves worker_cls="declab.integrations.bench_spec.SpecBenchWorker" with getattr on this module; the
    # class is built on first use so that importing this module needs no vLLM.
    if name == "SpecBenchWorker":
        return _make_worker_class()
    raise AttributeError(name)


# ----------------------------------------------------------------------------------------------------------------
# Child process: one engine, warm-up, then the planned phases
# ----------------------------------------------------------------------------------------------------------------


def _active_seconds(request_output) -> float | None:
    """Engine-core time from the request's first scheduling to its last token (``RequestStateStats``)."""
    m = getattr(request_output, "metrics", None)
    try:
        t = float(m.last_token_ts) - float(m.scheduled_ts)
    except (AttributeError, TypeError, ValueError):
        return None
    return t if t > 0 else None


def _request_metrics(out) -> dict[str, Any] | None:
    m = getattr(out, "spec_decode_metrics", None)
    if m is None:
        return None
    return {"histogram": list(m.histogram), "num_draft_tokens": int(m.num_draft_tokens)}


def run_phases(payload: dict[str, Any]) -> dict[str, Any]:
    """Child side of one configuration (``engine_run --call``): one engine, a warm-up, then the planned phases."""
    spec = RunSpec(**payload["spec"])
    plan = payload["plan"]
    from vllm import LLM, SamplingParams

    kwargs = {**CPU_ENGINE_KWARGS, **spec.engine_kwargs}
    if spec.collect_metrics:
        kwargs["disable_log_stats"] = False
        if kwargs.get("speculative_config"):
            kwargs.setdefault("per_request_spec_decode_metrics", "summary")
    t0 = time.perf_counter()
    llm = LLM(model=spec.model, **kwargs)
    startup_s = time.perf_counter() - t0
    params = SamplingParams(**spec.sampling)
    warm = SamplingParams(**{**spec.sampling, "max_tokens": min(16, spec.sampling.get("max_tokens", 16))})
    llm.generate(WARMUP_PROMPTS, [warm] * len(WARMUP_PROMPTS), use_tqdm=False)

    phases = []
    for phase in plan["phases"]:
        reset = llm.collective_rpc("declab_bench_reset", args=(phase.get("drafter_attrs"), phase.get("max_draft")))
        before = spec_metrics(llm) if spec.collect_metrics else {}
        n = len(spec.prompts)
        token_ids: list[Any] = [None] * n
        req_metrics: list[Any] = [None] * n
        finish: list[Any] = [None] * n
        active: list[Any] = [None] * n
        batch_times = []
        for batch in phase["batches"]:
            t = time.perf_counter()
            outs = llm.generate([spec.prompts[i] for i in batch], [params] * len(batch), use_tqdm=False)
            batch_times.append(time.perf_counter() - t)
            for i, o in zip(batch, outs):
                token_ids[i] = list(o.outputs[0].token_ids)
                req_metrics[i] = _request_metrics(o.outputs[0])
                finish[i] = o.outputs[0].finish_reason
                active[i] = _active_seconds(o)
        metrics = metrics_diff(spec_metrics(llm), before) if spec.collect_metrics else None
        stats = llm.collective_rpc("declab_bench_stats")[0]
        phases.append({"name": phase["name"], "batches": phase["batches"], "batch_times_s": batch_times,
                       "token_ids": token_ids, "request_metrics": req_metrics, "finish_reasons": finish,
                       "active_s": active,
                       "spec_metrics": metrics, "worker": stats, "reset": reset[0],
                       "drafter_attrs": phase.get("drafter_attrs")})
    result = {"name": spec.name, "startup_s": startup_s, "phases": phases}
    stats_file = os.environ.get(PROPOSER_STATS_ENV)
    if stats_file and os.path.exists(stats_file):
        result["proposer_stats_file"] = json.loads(Path(stats_file).read_text())
    return result


def run_child(spec: RunSpec, plan: dict[str, Any], *, timeout: float = 1800) -> dict[str, Any]:
    """Run ``spec`` with ``plan`` in a fresh Python process (``engine_run``'s protocol); ``ChildFailed`` if it
    fails or times out."""
    return call_in_child(PHASES_TARGET, {"spec": asdict(spec), "plan": plan}, env=spec.env, timeout=timeout,
                         name=f"engine run {spec.name!r}")


# ----------------------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------------------


def acceptance(request_metrics: list[dict[str, Any] | None], token_ids: list[list[int]]) -> dict[str, Any]:
    """Acceptance over requests from their per-request histograms (``histogram[j]`` = verify steps with j drafts
    accepted), in vLLM's conventions."""
    hists = [m["histogram"] for m in request_metrics if m]
    if not hists:
        return {}
    width = max(len(h) for h in hists)
    hist = [sum(h[j] for h in hists if j < len(h)) for j in range(width)]
    drafts = sum(hist)
    accepted = sum(j * c for j, c in enumerate(hist))
    draft_tokens = sum(m["num_draft_tokens"] for m in request_metrics if m)
    generated = sum(len(t) for t in token_ids)
    per_pos = [sum(hist[j] for j in range(i + 1, width)) for i in range(width - 1)]
    while per_pos and per_pos[-1] == 0 and len(per_pos) > 1:
        per_pos.pop()
    return {
        "num_drafts": drafts,
        "num_draft_tokens": draft_tokens,
        "num_accepted_tokens": accepted,
        "mean_accepted_length": 1.0 + accepted / drafts if drafts else 1.0,
        "draft_acceptance_rate": accepted / draft_tokens if draft_tokens else 0.0,
        "acceptance_per_position": [a / drafts if drafts else 0.0 for a in per_pos],
        "tokens_per_forward": generated / max(1, generated - accepted),
        "draft_step_share": drafts / max(1, generated - accepted),
    }


def phase_numbers(items: list[dict[str, Any]], phase: dict[str, Any]) -> dict[str, Any]:
    """Per group and overall: tokens, seconds, tokens/s, acceptance."""
    groups = group_order(items)
    ran = [t is not None for t in phase["token_ids"]]
    # A batch's wall time is spread over its prompts by their share of the batch's request-active time (engine
    # timestamps: first scheduled -> last token), so a request that needs fewer steps gets less of it; by token
    # share when the timestamps are missing.
    active = phase.get("active_s") or [None] * len(items)
    time_of = [0.0] * len(items)
    for batch, t in zip(phase["batches"], phase["batch_times_s"]):
        weights = [active[i] for i in batch]
        if any(w is None for w in weights):
            weights = [len(phase["token_ids"][i]) for i in batch]
        total = sum(weights)
        for i, w in zip(batch, weights):
            time_of[i] = t * (w / total if total else 1.0 / len(batch))
    out: dict[str, Any] = {}
    for g in groups + ["all"]:
        idx = [i for i, it in enumerate(items) if ran[i] and (g == "all" or it["group"] == g)]
        if not idx:
            continue
        toks = sum(len(phase["token_ids"][i]) for i in idx)
        secs = sum(time_of[i] for i in idx)
        out[g] = {"prompts": len(idx), "generated_tokens": toks, "seconds": secs,
                  "tokens_per_s": toks / secs if secs else 0.0,
                  **acceptance([phase["request_metrics"][i] for i in idx], [phase["token_ids"][i] for i in idx])}
    return out


def _identical(a: list[list[int]], b: list[list[int]], idx: list[int]) -> float:
    return sum(a[i] == b[i] for i in idx) / max(1, len(idx))


def summarize_config(items, result, vanilla) -> dict[str, Any]:
    out: dict[str, Any] = {"available": True, "startup_s": result["startup_s"], "phases": {}}
    for ph in result["phases"]:
        nums = phase_numbers(items, ph)
        base_ph = next((p for p in vanilla["phases"] if p["name"] == ph["name"]), None) if vanilla else None
        base = phase_numbers(items, base_ph) if base_ph else None
        for g, row in nums.items():
            idx = [i for i, it in enumerate(items)
                   if ph["token_ids"][i] is not None and (g == "all" or it["group"] == g)]
            if base:
                row["speedup_vs_vanilla"] = row["tokens_per_s"] / base[g]["tokens_per_s"] if base[g][
                    "tokens_per_s"] else None
                row["token_identical_share"] = _identical(ph["token_ids"], base_ph["token_ids"], idx)
        w = ph["worker"]
        calls = w.get("propose_calls", 0)
        proposer = {"propose_calls": calls, "propose_seconds": w.get("propose_seconds", 0.0),
                    "seconds_per_step": w["propose_seconds"] / calls if calls else None,
                    "share_of_wall_time": w.get("propose_seconds", 0.0) / max(1e-9, sum(ph["batch_times_s"]))}
        if "drafter_stats" in w:  # a plugin proposer's own counters (its `stats` dict)
            ds = w["drafter_stats"]
            proposer["stats"] = ds
            if ds.get("propose_calls") and "propose_seconds" in ds:
                proposer["own_seconds_per_step"] = ds["propose_seconds"] / ds["propose_calls"]
        out["phases"][ph["name"]] = {
            "groups": nums,
            "engine_spec_metrics": ph["spec_metrics"],
            "proposer": proposer,
            "memory": {**w.get("memory", {}), "worker_rss_bytes": w.get("rss_bytes"),
                       "worker_peak_rss_bytes": w.get("peak_rss_bytes")},
            "wall_s": sum(ph["batch_times_s"]),
        }
    if "proposer_stats_file" in result:
        out["proposer_stats_file"] = result["proposer_stats_file"]
    # Headline numbers (batched phase, all prompts; batch 1 if only that ran) for `declab bench`'s summary lines.
    head = out["phases"].get("batch16") or next(iter(out["phases"].values()), None)
    if head:
        out["tokens_per_s"] = head["groups"]["all"]["tokens_per_s"]
        out["speedup_vs_vanilla"] = head["groups"]["all"].get("speedup_vs_vanilla")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------------------------


def _suffix_availability() -> dict[str, Any]:
    try:
        from arctic_inference.suffix_decoding import SuffixDecodingCache  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return {"available": False, "reason": f"arctic_inference.suffix_decoding does not import: {e!r} "
                "(vLLM's suffix method needs the arctic-inference package; PyPI has only the 0.3.0 sdist)"}
    from importlib.metadata import version

    return {"available": True, "arctic_inference_version": version("arctic_inference")}


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _parse_windows(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in w.split(",")) for w in text.split(";") if w.strip()]  # type: ignore[misc]


def _ngram_spec(lmin: int, lmax: int, k: int) -> dict[str, Any]:
    return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": lmin, "prompt_lookup_max": lmax}


def run_ngram_sweep(model, subset, sampling, engine_kwargs, windows, ks, batch_size, timeout, log) -> dict[str, Any]:
    """One engine with K = max(ks); each (window, K) is a phase: the window is set on the live n-gram drafter
    (``min_n``/``max_n``; it keeps no state across steps) and drafts are cut to K tokens (the same drafts a K engine
    makes: the lookup is the same, only fewer continuation tokens are taken)."""
    prompts = [it["text"] for it in subset]
    batches = [list(range(len(prompts)))[s : s + batch_size] for s in range(0, len(prompts), batch_size)]
    k_engine = max(ks)
    grid = [(a, b, k) for k in ks for a, b in windows]
    phases = [{"name": f"{a},{b},K{k}", "batches": batches, "drafter_attrs": {"min_n": a, "max_n": b},
               "max_draft": None if k == k_engine else k} for a, b, k in grid]
    lmin0, lmax0 = windows[0]
    spec = RunSpec(model=model, prompts=prompts, sampling=sampling, name="ngram-sweep",
                   engine_kwargs={**engine_kwargs, "speculative_config": _ngram_spec(lmin0, lmax0, k_engine)},
                   env=VLLM_METHOD_ENV, collect_metrics=True)
    t = time.perf_counter()
    res = run_child(spec, {"phases": phases}, timeout=timeout)
    log(f"  ngram sweep: {time.perf_counter() - t:.0f} s (startup {res['startup_s']:.0f} s)")
    rows = []
    for (a, b, k), ph in zip(grid, res["phases"]):
        toks = sum(len(t) for t in ph["token_ids"])
        acc = acceptance(ph["request_metrics"], ph["token_ids"])
        rows.append({"prompt_lookup_min": a, "prompt_lookup_max": b, "k": k,
                     "tokens_per_s": toks / sum(ph["batch_times_s"]),
                     "mean_accepted_length": acc.get("mean_accepted_length"),
                     "tokens_per_forward": acc.get("tokens_per_forward"),
                     "draft_acceptance_rate": acc.get("draft_acceptance_rate")})
    best = max(rows, key=lambda r: r["tokens_per_s"])
    return {"prompts": len(prompts), "prompt_ids": [it["id"] for it in subset], "batch_size": batch_size,
            "engine_k": k_engine, "startup_s": res["startup_s"],
            "criterion": "highest tokens/s on the subset (batches of --batch-size)", "results": rows,
            "chosen": best}


def proposer_engine_kwargs(c: ProposerConfig, k: int, settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Engine arguments of a plugin proposer configuration: its ``custom_class`` speculative config and, for a
    plugin with engine-wide settings, ``additional_config`` (``--settings`` under the configuration's own)."""
    out: dict[str, Any] = {"speculative_config": {"method": "custom_class", "model": c.proposer,
                                                  "num_speculative_tokens": k}}
    given = {**settings.get(c.plugin, {}), **c.bench.settings}
    spec = registry.get_spec(c.plugin)
    if spec.settings:
        out["additional_config"] = {CONFIG_KEY: {c.plugin: given}}
        try:
            engine_settings(spec, out["additional_config"])
        except ValueError as e:
            raise SystemExit(f"declab bench spec: configuration {c.name}: {e}") from e
    elif given:
        raise SystemExit(f"declab bench spec: plugin {c.plugin} has no engine-wide settings, got {given}")
    return out


def run_configs(specs: dict[str, RunSpec], plan: dict[str, Any], timeouts: dict[str, float],
                default_timeout: float, report: dict[str, Any], log) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each configuration's engine in its own child process, one after the other, with one retry (an engine start
    can fail when the shared machine is short of memory). A configuration that fails twice is reported as not
    available. Returns (results, load averages around each run)."""
    results: dict[str, Any] = {}
    load: dict[str, Any] = {}
    for name, spec in specs.items():
        t = time.perf_counter()
        load[name] = {"before": _loadavg()}
        for attempt in (1, 2):
            try:
                results[name] = run_child(spec, plan, timeout=timeouts.get(name, default_timeout))
                break
            except ChildFailed as e:
                log(f"  {name}: attempt {attempt} FAILED\n{str(e)[:3000]}")
                if attempt == 2:
                    report["configs"][name] = {"available": False, "reason": f"engine run failed twice: {str(e)[:2000]}"}
                else:
                    time.sleep(10)
        load[name]["after"] = _loadavg()
        if name in results:
            log(f"  {name}: {time.perf_counter() - t:.0f} s (startup {results[name]['startup_s']:.0f} s)")
    return results, load


def run(args) -> dict[str, Any]:
    t_start = time.perf_counter()
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    model = args.model or default_model()
    max_tokens = args.max_tokens if args.max_tokens is not None else DEFAULT_MAX_TOKENS
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    proposers = proposer_configs()
    unknown = [c for c in configs if c not in BUILTIN_CONFIGS and c not in proposers]
    if unknown:
        raise SystemExit(f"declab bench spec: unknown configurations {unknown} (known: "
                         f"{', '.join([*BUILTIN_CONFIGS, *proposers])})")
    selected = {c: proposers[c] for c in configs if c in proposers}
    settings = proposer_settings(args)
    for c in selected.values():  # fail before any engine starts: unknown setting, bad value (named)
        proposer_engine_kwargs(c, 1, settings)
    phases_wanted = [p.strip() for p in args.phases.split(",") if p.strip()]
    windows = _parse_windows(args.ngram_windows)
    ks = [int(k) for k in args.ngram_ks.split(",") if k.strip()]
    fixed_ngram = [int(x) for x in args.ngram.split(",")] if args.ngram else None
    suffix_info = _suffix_availability() if "suffix" in configs else {"available": False, "reason": "not requested"}
    suffix_k = args.suffix_k or SUFFIX_DEFAULT_K
    draft_info = (bench_spec_draft.draft_availability(resolve_draft_model(args.draft_model))
                  if "draft_model" in configs else {"available": False, "reason": "not requested"})
    draft_ks = [args.draft_k] if args.draft_k else bench_spec_draft.parse_ks(args.draft_ks)
    max_k = max([*(ks if not fixed_ngram else [fixed_ngram[2]]), suffix_k if suffix_info["available"] else 0,
                 *(draft_ks if draft_info["available"] else []),
                 *(c.bench.num_speculative_tokens or proposer_k(args, c.plugin) or 0 for c in selected.values())])
    max_model_len = CPU_ENGINE_KWARGS["max_model_len"]
    groups = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups is not None else None
    try:
        items_all, skipped, totals = load_prompt_set(model, max_tokens=max_tokens, max_k=max_k,
                                                     max_model_len=max_model_len, groups=groups)
    except ValueError as e:
        raise SystemExit(f"declab bench spec: --{e}") from None
    # --limit: the first N fitting prompts of each group, taken from the set already loaded (a second
    # load_prompt_set would tokenize every prompt again, the long code files included).
    items = items_all if args.limit is None else [items_all[i] for i in _first_per_group(items_all, args.limit)]
    prompts = [it["text"] for it in items]
    if not args.temperature >= 0.0:
        raise SystemExit(f"declab bench spec: --temperature must be >= 0, got {args.temperature}")
    sampling = {"temperature": args.temperature, "max_tokens": max_tokens, "ignore_eos": bool(args.ignore_eos)}
    engine_kwargs = {"enable_prefix_caching": False, "worker_cls": WORKER_CLS}
    log(f"declab bench spec: {len(items)} prompts in {len(group_order(items))} groups, {len(skipped)} skipped; "
        f"configs {configs}; phases {phases_wanted}")

    plan = {"phases": []}
    if "batch16" in phases_wanted:
        batches = (batches_by_group(items, args.batch_size) if args.batch_grouping == "category"
                   else batches_mixed(len(items), args.batch_size))
        plan["phases"].append({"name": "batch16", "batches": batches})
    if "batch1" in phases_wanted:
        one = _first_per_group(items, args.batch1_limit or None)
        plan["phases"].append({"name": "batch1", "batches": [[i] for i in one]})

    report: dict[str, Any] = {
        "benchmark": "spec",
        "model": model,
        "engine_kwargs": {**CPU_ENGINE_KWARGS, **engine_kwargs},
        "sampling": sampling,
        "batch_size": args.batch_size,
        "batch_grouping": args.batch_grouping,
        "limit": args.limit,
        "groups": groups,
        "batch1_limit": args.batch1_limit,
        "prompts": {
            "total": len(items), "groups": {g: sum(it["group"] == g for it in items) for g in group_order(items)},
            "available": totals, "skipped": skipped,
            "fit_rule": f"prompt_tokens + max_tokens ({max_tokens}) + largest K ({max_k}) <= {max_model_len}",
        },
        "configs": {},
    }

    # 1. ngram sweep
    if "ngram" in configs:
        if fixed_ngram:
            lmin, lmax, k_ngram = fixed_ngram
            report["ngram_sweep"] = {"skipped": True, "given": {"prompt_lookup_min": lmin, "prompt_lookup_max": lmax,
                                                                 "k": k_ngram}}
        else:
            subset = sweep_subset(items_all, args.sweep_per_category)
            log(f"ngram sweep: {len(subset)} prompts, windows {windows}, K {ks}")
            sweep = run_ngram_sweep(model, subset, sampling, engine_kwargs, windows, ks, args.batch_size,
                                    args.child_timeout, log)
            report["ngram_sweep"] = sweep
            c = sweep["chosen"]
            lmin, lmax, k_ngram = c["prompt_lookup_min"], c["prompt_lookup_max"], c["k"]
    else:
        lmin, lmax, k_ngram = 0, 0, (ks[0] if ks else 4)

    # 2. draft_model sweep (one engine per K)
    if draft_info["available"]:
        report["draft_model_sweep"] = bench_spec_draft.sweep_unless_given(
            args.draft_k, model=model, draft=draft_info["path"], sampling=sampling, engine_kwargs=engine_kwargs,
            subset=items if args.draft_sweep_on == "selected" else sweep_subset(items_all, args.sweep_per_category),
            ks=draft_ks, batch_size=args.batch_size,
            timeout=args.child_timeout, log=log)
        sweep = report["draft_model_sweep"]
        best = sweep.get("best_by_tokens_per_forward") if args.draft_choose == "tokens_per_forward" else None
        k_draft = (best or sweep["chosen"])["k"]
        sweep["phases_k"] = {"k": k_draft, "criterion": args.draft_choose}

    # 3. configurations, each in its own engine (child process)
    common = dict(model=model, prompts=prompts, sampling=sampling, collect_metrics=True)
    specs: dict[str, RunSpec] = {}
    timeouts: dict[str, float] = {}
    specs["vanilla"] = RunSpec(name="vanilla", engine_kwargs=engine_kwargs, env={PLUGINS_ENV: None}, **common)
    if "ngram" in configs:
        specs["ngram"] = RunSpec(name="ngram", env=VLLM_METHOD_ENV,
                                 engine_kwargs={**engine_kwargs, "speculative_config": _ngram_spec(lmin, lmax, k_ngram)},
                                 **common)
    if "suffix" in configs and suffix_info["available"]:
        specs["suffix"] = RunSpec(name="suffix", env=VLLM_METHOD_ENV,
                                  engine_kwargs={**engine_kwargs, "speculative_config": {
                                      "method": "suffix", "num_speculative_tokens": suffix_k}}, **common)
    if draft_info["available"]:
        specs["draft_model"] = RunSpec(name="draft_model", env=VLLM_METHOD_ENV, **common, engine_kwargs={
            **engine_kwargs, "speculative_config": bench_spec_draft.draft_spec(draft_info["path"], k_draft,
                                                                               sampling["temperature"])})
    with tempfile.TemporaryDirectory(prefix="declab-proposer-stats-") as stats_dir:
        for name, c in selected.items():
            k = c.bench.num_speculative_tokens or proposer_k(args, c.plugin) or k_ngram
            specs[name] = RunSpec(name=name, engine_kwargs={**engine_kwargs, **proposer_engine_kwargs(c, k, settings)},
                                  env={PLUGINS_ENV: c.plugin, PROPOSER_STATS_ENV: os.path.join(stats_dir, name + ".json")},
                                  **common)
            timeouts[name] = args.child_timeout * c.bench.timeout_factor
        results, load = run_configs(specs, plan, timeouts, args.child_timeout, report, log)

    vanilla = results.get("vanilla")
    for name, res in results.items():
        s = summarize_config(items, res, vanilla)
        s["speculative_config"] = specs[name].engine_kwargs.get("speculative_config")
        s["env"] = {k: v for k, v in specs[name].env.items() if v is not None and k != PROPOSER_STATS_ENV}
        if "additional_config" in specs[name].engine_kwargs:
            s["additional_config"] = specs[name].engine_kwargs["additional_config"]
        s["load_avg_1min"] = load.get(name)  # the machine's load around this run: timings on shared cores vary
        report["configs"][name] = s
    if "suffix" in configs and not suffix_info["available"]:
        report["configs"]["suffix"] = suffix_info
    elif "suffix" in report["configs"]:
        report["configs"]["suffix"]["package"] = suffix_info
    if "draft_model" in configs:  # a configuration that runs a draft model says so (verify-cost charges its cost)
        report["configs"]["draft_model"] = ({**report["configs"]["draft_model"], "draft_model": draft_info["path"],
                                             "draft_name": draft_info["name"]}
                                            if "draft_model" in report["configs"] else draft_info)
    report["comparison"] = compare(report, items)
    if "draft_model_sweep" in report:
        report["draft_model_sweep"]["same_prompts_as_phases"] = (
            report["draft_model_sweep"].get("prompt_ids") == [it["id"] for it in items])
        # The sweep runs batched: the batch-16 phase is the one on its prompts (batch 1 takes a subset).
        report["equal_draft_compute"] = bench_spec_draft.equal_draft_compute(report, "batch16")
    if "draft_model" in report["configs"]:
        report["trees_vs_chain"] = bench_spec_draft.trees_vs_chain(report)
    report["per_prompt_fields"] = list(PER_PROMPT_FIELDS)
    report["per_prompt"] = per_prompt(items, results)
    report["runtime_s"] = time.perf_counter() - t_start
    return report


# The fields of a per-prompt entry ``"<config>/<phase>": [...]``, in order (the report's ``per_prompt_fields``): a
# list rather than a dict per entry keeps a 486-prompt x 9-configuration report under half the size, and the
# repository under the device machine's 64 MiB.
PER_PROMPT_FIELDS = ("tokens", "accepted", "drafts", "identical")


def per_prompt(items, results) -> list[dict[str, Any]]:
    """Small per-prompt records: id, group, prompt tokens, and per configuration/phase ``PER_PROMPT_FIELDS``: the
    output length, the accepted and draft counts (None without drafts) and whether the output equals vanilla's."""
    out = []
    for i, it in enumerate(items):
        rec: dict[str, Any] = {"id": it["id"], "group": it["group"], "prompt_tokens": it["prompt_tokens"]}
        for name, res in results.items():
            for ph in res["phases"]:
                base = next(p for p in results["vanilla"]["phases"] if p["name"] == ph["name"]) \
                    if "vanilla" in results else None
                m = ph["request_metrics"][i]
                if ph["token_ids"][i] is None:
                    continue
                rec[f"{name}/{ph['name']}"] = [
                    len(ph["token_ids"][i]),
                    sum(j * c for j, c in enumerate(m["histogram"])) if m else None,
                    sum(m["histogram"]) if m else None,
                    ph["token_ids"][i] == base["token_ids"][i] if base else None,
                ]
        out.append(rec)
    return out


def compare(report: dict[str, Any], items) -> dict[str, Any]:
    """Each plugin proposer configuration vs ngram per phase and group: mean accepted length, tokens/s, ratios."""
    cfg = report["configs"]
    ng = cfg.get("ngram", {})
    out: dict[str, Any] = {}
    for name, this in cfg.items():
        if name in BUILTIN_CONFIGS or not (this.get("available") and ng.get("available")):
            continue
        for ph in this["phases"]:
            if ph not in ng["phases"]:
                continue
            rows = {}
            for g, t in this["phases"][ph]["groups"].items():
                n = ng["phases"][ph]["groups"][g]
                rows[g] = {
                    "mal": t["mean_accepted_length"], "mal_ngram": n["mean_accepted_length"],
                    "mal_ratio_over_ngram": t["mean_accepted_length"] / n["mean_accepted_length"],
                    "tps": t["tokens_per_s"], "tps_ngram": n["tokens_per_s"],
                    "tps_ratio_over_ngram": t["tokens_per_s"] / n["tokens_per_s"] if n["tokens_per_s"] else None,
                    "speedup": t.get("speedup_vs_vanilla"), "speedup_ngram": n.get("speedup_vs_vanilla"),
                }
            out.setdefault(name, {})[ph] = rows
    return out


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------

# plugin configurations bring their own
_COLORS = {"vanilla": "#888888", "ngram": "#1f77b4", "suffix": "#2ca02c", "draft_model": "#9467bd"}


def _color(name: str) -> str | None:
    if name in _COLORS:
        return _COLORS[name]
    c = proposer_configs().get(name)
    return c.bench.color if c is not None else None
PLOT_POSITIONS = 16  # acceptance plot: first positions (the tree's 80 "positions" are depths; beyond 6 all zero)


def _spec_configs(report) -> list[str]:
    return [c for c, v in report["configs"].items() if v.get("available") and c != "vanilla"]


def plot(report: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = _spec_configs(report)
    phases = [p for p in PHASES if any(p in report["configs"][c].get("phases", {}) for c in cfgs)]
    groups = []
    if cfgs and phases:
        groups = [g for g in report["configs"][cfgs[0]]["phases"][phases[0]]["groups"]]
    fig, axes = plt.subplots(2, 3, figsize=(19, 9))
    width = 0.8 / max(1, len(cfgs))
    x = list(range(len(groups)))

    def bars(ax, key, phase, title, baseline=None):
        for j, c in enumerate(cfgs):
            g_rows = report["configs"][c]["phases"].get(phase, {}).get("groups", {})
            vals = [(g_rows.get(g, {}).get(key) or 0.0) for g in groups]
            ax.bar([i + j * width for i in x], vals, width, label=c, color=_color(c))
        ax.set_xticks([i + 0.4 - width / 2 for i in x], groups, rotation=45, ha="right", fontsize=8)
        if baseline is not None:
            ax.axhline(baseline, color="k", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)

    if groups:
        bars(axes[0, 0], "mean_accepted_length", phases[0], f"mean accepted length ({phases[0]})", 1.0)
        for ax, ph in zip((axes[0, 1], axes[0, 2]), ("batch1", "batch16")):
            if ph in phases:
                bars(ax, "speedup_vs_vanilla", ph, f"speed-up vs vanilla, {ph} (tokens/s ratio)", 1.0)
            else:
                ax.text(0.5, 0.5, f"{ph}: not run", ha="center", va="center")
                ax.set_axis_off()
    ax = axes[1, 0]
    for c in cfgs:
        row = report["configs"][c]["phases"][phases[0]]["groups"]["all"] if phases else {}
        acc = row.get("acceptance_per_position", [])[:PLOT_POSITIONS]
        ax.plot(range(1, len(acc) + 1), acc, marker="o", label=c, color=_color(c))
    ax.set_xlabel("draft position")
    ax.set_title("acceptance rate per position (accepted_at_pos / drafts, all prompts)", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    sweep = report.get("ngram_sweep", {}).get("results", [])
    if sweep:
        labels = [f"{r['prompt_lookup_min']}-{r['prompt_lookup_max']}\nK{r['k']}" for r in sweep]
        vals = [r["tokens_per_s"] for r in sweep]
        best = report["ngram_sweep"]["chosen"]
        ax.bar(range(len(vals)), vals, color=["#d62728" if r is best or r == best else "#1f77b4" for r in sweep])
        ax.set_xticks(range(len(vals)), labels, fontsize=7)
        for i, r in enumerate(sweep):
            ax.text(i, vals[i], f"MAL {r['mean_accepted_length']:.2f}", ha="center", va="bottom", fontsize=6)
    ax.set_title("ngram sweep on the subset: tokens/s (lookup min-max, K)", fontsize=10)
    ax = axes[1, 2]
    names, per_step, mem = [], [], []
    ph_name = "batch1" if "batch1" in phases else (phases[0] if phases else "")
    for c in cfgs:
        ph = report["configs"][c]["phases"][ph_name]
        names.append(c)
        per_step.append(1e3 * (ph["proposer"]["seconds_per_step"] or 0.0))
        mem.append(ph["memory"].get("proposer_bytes", 0))
    ax.bar(range(len(names)), per_step, color=[_color(c) for c in names])
    ax.set_xticks(range(len(names)), names, fontsize=8)
    for i, (v, m) in enumerate(zip(per_step, mem)):
        ax.text(i, v, f"{v:.3f} ms\nstate {m / 1e6:.2f} MB", ha="center", va="bottom", fontsize=7)
    ax.set_title(f"proposer time per step (ms, {ph_name}) and proposer state size at its end", fontsize=10)
    not_avail = [f"{c}: {v['reason'][:90]}" for c, v in report["configs"].items() if not v.get("available")]
    title = (f"declab bench spec: {report['prompts']['total']} prompts, max_tokens {report['sampling']['max_tokens']},"
             f" greedy, {report['model'].rsplit('/', 1)[-1]}")
    if not_avail:
        title += "\nnot available: " + "; ".join(not_avail)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(report: dict[str, Any]) -> str:
    cfgs = [c for c, v in report["configs"].items() if v.get("available")]
    lines = []
    for ph in PHASES:
        if not any(ph in report["configs"][c].get("phases", {}) for c in cfgs):
            continue
        lines.append(f"[{ph}] group: " + " | ".join(f"{c} tok/s (MAL, x)" for c in cfgs))
        groups = report["configs"]["vanilla"]["phases"][ph]["groups"]
        for g in groups:
            cells = []
            for c in cfgs:
                r = report["configs"][c]["phases"][ph]["groups"][g]
                mal = r.get("mean_accepted_length")
                cells.append(f"{r['tokens_per_s']:7.1f} ({mal:.2f}, {r.get('speedup_vs_vanilla') or 1:.2f}x)"
                             if mal else f"{r['tokens_per_s']:7.1f}")
            lines.append(f"  {g:<15} " + " | ".join(cells))
    for c, v in report["configs"].items():
        if not v.get("available"):
            lines.append(f"{c}: not available: {v['reason'][:300]}")
    if "draft_model_sweep" in report:
        lines.append(bench_spec_draft.sweep_summary(report["draft_model_sweep"]))
    lines.append(f"runtime {report['runtime_s']:.0f} s")
    return "\n".join(lines)
