"""Run one engine configuration on a prompt set, in a child process of its own.

Plugin selection (``DECLAB_PLUGINS``, ``VLLM_PLUGINS``) is read once per process by vLLM's plugin loader, so each
configuration of a comparison runs in a fresh child process of the same process tree:
``python -m declab.integrations.engine_run SPEC.json RESULT.json``. Benchmarks, engine tests and ``declab demo``
share this runner. Besides one batch of ``prompts``, a spec may name ``calls``: functions that receive the started
engine (``function(llm, options) -> JSON-able``) and run their own requests on it, one after the other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

# Engine settings that suit a 2-core CPU machine and the 29M fixture model.
CPU_ENGINE_KWARGS: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 2048,
    "enforce_eager": True,
    "gpu_memory_utilization": 0.3,
    "seed": 0,
}


@dataclass
class RunSpec:
    model: str
    prompts: list[str]
    sampling: dict[str, Any]  # SamplingParams kwargs shared by all prompts
    per_prompt_extra_args: list[dict[str, Any] | None] | None = None  # overrides sampling["extra_args"] per prompt
    env: dict[str, str | None] = field(default_factory=dict)  # None = unset in the child
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    repeats: int = 1  # timed batch runs (after one warm-up)
    latency_prompts: int = 0  # additionally time this many prompts one at a time (batch 1)
    name: str = ""
    collect_metrics: bool = False  # engine stats on (disable_log_stats=False); vllm:spec_decode_* counters returned
    # "module:function" names, each called in the child as function(llm, call_options) after the prompt batch (if
    # any); a call that raises is reported with its error and does not stop the calls after it.
    calls: list[str] = field(default_factory=list)
    call_options: dict[str, Any] = field(default_factory=dict)


def _sampling_params(spec: RunSpec):
    from vllm import SamplingParams

    out = []
    for i in range(len(spec.prompts)):
        kw = dict(spec.sampling)
        if spec.per_prompt_extra_args is not None:
            kw["extra_args"] = spec.per_prompt_extra_args[i]
        out.append(SamplingParams(**kw))
    return out


def _spec_metrics(llm) -> dict[str, Any]:
    """vLLM's speculative-decoding counters (cumulative since engine start)."""
    out: dict[str, Any] = {}
    for m in llm.get_metrics():
        if m.name.startswith("vllm:spec_decode"):
            key = m.name.removeprefix("vllm:spec_decode_")
            out[key] = list(m.values) if hasattr(m, "values") else m.value
    return out


def _diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in after.items():
        b = before.get(k)
        if isinstance(v, list):
            out[k] = [x - y for x, y in zip(v, b)] if b else v
        else:
            out[k] = v - (b or 0)
    return out


def _run_calls(llm, spec: RunSpec) -> list[dict[str, Any]]:
    """Each of ``spec.calls`` on the engine: its result (or error), wall time and spec-decode counters over it."""
    import importlib
    import traceback

    out = []
    for target in spec.calls:
        module, _, attr = target.partition(":")
        before = _spec_metrics(llm) if spec.collect_metrics else None
        t = time.perf_counter()
        record: dict[str, Any] = {"target": target}
        try:
            record["result"] = getattr(importlib.import_module(module), attr)(llm, dict(spec.call_options))
        except Exception:  # noqa: BLE001 - one failing call must not lose the others' results
            record["error"] = traceback.format_exc()[-4000:]
        record["wall_s"] = time.perf_counter() - t
        record["spec_metrics"] = _diff(_spec_metrics(llm), before) if spec.collect_metrics else None
        out.append(record)
    return out


def _child(spec_path: str, result_path: str) -> None:
    spec = RunSpec(**json.loads(open(spec_path).read()))
    from vllm import LLM

    t0 = time.perf_counter()
    kwargs = {**CPU_ENGINE_KWARGS, **spec.engine_kwargs}
    if spec.collect_metrics:
        kwargs["disable_log_stats"] = False
    llm = LLM(model=spec.model, **kwargs)
    startup_s = time.perf_counter() - t0
    params = _sampling_params(spec)
    batch_times, outputs, metrics = [], [], None
    if spec.prompts:
        llm.generate(spec.prompts[:2], params[:2], use_tqdm=False)  # warm-up
        metrics_before = _spec_metrics(llm) if spec.collect_metrics else None
        for _ in range(max(1, spec.repeats)):
            t = time.perf_counter()
            outputs = llm.generate(spec.prompts, params, use_tqdm=False)
            batch_times.append(time.perf_counter() - t)
        # Counters over the timed batch runs only (warm-up excluded).
        metrics = _diff(_spec_metrics(llm), metrics_before) if spec.collect_metrics else None
    latencies, single_token_ids = [], []
    for i in range(min(spec.latency_prompts, len(spec.prompts))):
        t = time.perf_counter()
        single = llm.generate([spec.prompts[i]], [params[i]], use_tqdm=False)
        latencies.append(time.perf_counter() - t)
        single_token_ids.append(list(single[0].outputs[0].token_ids))
    token_ids = [list(o.outputs[0].token_ids) for o in outputs]
    result = {
        "name": spec.name,
        "startup_s": startup_s,
        "batch_times_s": batch_times,
        "latencies_s": latencies,
        "single_token_ids": single_token_ids,  # batch-1 outputs of the first `latency_prompts` prompts
        "token_ids": token_ids,
        "texts": [o.outputs[0].text for o in outputs],
        "cumulative_logprobs": [o.outputs[0].cumulative_logprob for o in outputs],
        "finish_reasons": [o.outputs[0].finish_reason for o in outputs],
        "generated_tokens": sum(len(t) for t in token_ids),
        "spec_metrics": metrics,
        "calls": _run_calls(llm, spec),
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


def run_in_child(spec: RunSpec, *, timeout: float = 1800, quiet: bool = True) -> dict[str, Any]:
    """Run ``spec`` in a fresh Python process; return its result dict (raises with the child's log on failure)."""
    env = dict(os.environ)
    for k, v in spec.env.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    with tempfile.TemporaryDirectory(prefix="declab-run-") as tmp:
        spec_path, result_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "result.json")
        with open(spec_path, "w") as f:
            json.dump(asdict(spec), f)
        proc = subprocess.run(
            [sys.executable, "-m", "declab.integrations.engine_run", spec_path, result_path],
            env=env,
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.STDOUT if quiet else None,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0 or not os.path.exists(result_path):
            log = (proc.stdout or "")[-6000:]
            raise RuntimeError(f"engine run {spec.name!r} failed (exit {proc.returncode}):\n{log}")
        with open(result_path) as f:
            return json.load(f)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
