"""The one child-process protocol of declab's benchmarks: run a function in a fresh Python process of its own.

Plugin selection (``DECLAB_PLUGINS``, ``VLLM_PLUGINS``) is read once per process by vLLM's plugin loader, so each
configuration of a comparison runs in a fresh child process: ``python -m declab.integrations.engine_run --call
module:function PAYLOAD.json RESULT.json`` calls ``function(payload)`` and writes its JSON result. The common case,
one engine configuration over a prompt set (``RunSpec``: timed batches, batch-1 latencies, speculative-decoding
counters), is ``run_in_child(spec)``; a benchmark with its own engine logic calls ``call_in_child(target, payload)``
or, to watch a child while it runs, ``ChildCall``. A ``RunSpec`` may also name ``calls``: functions that receive the
started engine (``function(llm, options) -> JSON-able``) and run their own requests on it (``declab demo``).
Benchmarks, the demo and engine tests share this runner.

Every child starts in a process group of its own (``start_new_session``) that is killed as a whole when the call
ends, times out, or is interrupted (Ctrl-C, ``SIGTERM`` to ``declab bench``): the engine core and the workers vLLM
starts inside the child never outlive the call. If the parent dies without cleaning up (SIGKILL), nothing else
survives it either (Linux, ``lifetime.py``): the child gets ``SIGTERM`` (``PR_SET_PDEATHSIG``), removes the call's
temporary folder (``DECLAB_CHILD_DIR``: the folder is the child's to remove when it is terminated) and dies, and the
engine core and workers it forked die with it (``DECLAB_DIE_WITH_PARENT``).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from declab.integrations import lifetime

# Engine settings that suit a 2-core CPU machine and the 29M fixture model.
CPU_ENGINE_KWARGS: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 2048,
    "enforce_eager": True,
    "gpu_memory_utilization": 0.3,
    "seed": 0,
}

RUN_SPEC_TARGET = "declab.integrations.engine_run:run_spec"
# The environment of an engine run inside its own Python process (``declab demo``, the test hosts): one process per
# engine, so it starts in seconds and callers can read scheduler state.
IN_PROCESS_ENGINE_ENV: dict[str, str] = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    # In-process, vLLM cannot give the worker its OpenMP binding (its multiprocessing executor does): two OpenMP
    # threads spinning on two shared cores generated 8-20x slower than one (measured on this 2-core machine).
    "OMP_NUM_THREADS": "1",
    # GiB of KV cache (65k tokens of decoder-29m). An explicit size also skips vLLM's start-up memory profiling.
    "VLLM_CPU_KVCACHE_SPACE": "1",
}
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL to whatever of the group is left after this long
# The call's temporary folder, which the child removes when it is terminated (its parent may be gone).
OWNED_DIR_ENV = "DECLAB_CHILD_DIR"


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
    # any); a call that raises is reported with its error and does not stop the calls after it (``declab demo``).
    calls: list[str] = field(default_factory=list)
    call_options: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Parent side: start, watch, kill
# ----------------------------------------------------------------------------------------------------------------


class ChildFailed(RuntimeError):
    """The child exited with an error or wrote no result; the message carries its error lines and log tail."""


class ChildTimeout(ChildFailed):
    """The child ran past its timeout; its process group was killed."""


def child_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment with ``overrides`` applied (None unsets a variable)."""
    env = dict(os.environ)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def kill_group(pgid: int, grace_s: float = KILL_GRACE_S, proc: subprocess.Popen | None = None) -> None:
    """End every process of group ``pgid``: ``SIGTERM`` (vLLM shuts its engine core down on it), ``SIGKILL`` to what
    is left after ``grace_s``. A group with no process left is fine. ``proc``: the group's leader when it is this
    process's child; it is reaped as soon as it exits (unreaped, its zombie keeps the group alive for the whole grace
    period: 60 s per server stop, measured)."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class ChildCall:
    """``target(payload)`` running in a fresh Python process, in a process group of its own.

    ``log_path``: the child's stdout and stderr (default: a file in the call's temporary folder; ``quiet=False``
    lets them through to this process's terminal instead). Use as a context manager, or call ``close()``: the
    child's whole process group is killed if anything of it is still running, and the temporary folder removed.
    """

    def __init__(self, target: str, payload: Any, *, env: Mapping[str, str | None] | None = None,
                 log_path: str | Path | None = None, quiet: bool = True, name: str = "") -> None:
        self.target, self.name = target, name or target
        self._tmp = tempfile.TemporaryDirectory(prefix="declab-child-")
        folder = Path(self._tmp.name)
        payload_path, self.result_path = folder / "payload.json", folder / "result.json"
        payload_path.write_text(json.dumps(payload))
        self.log_path = Path(log_path) if log_path is not None else (folder / "child.log" if quiet else None)
        self._log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "w")
        argv = [sys.executable, "-m", "declab.integrations.engine_run", "--call", target, str(payload_path),
                str(self.result_path)]
        lifetime_env = {lifetime.ENV: "1", OWNED_DIR_ENV: str(folder)}
        self.proc = subprocess.Popen(argv, env=child_env({**(env or {}), **lifetime_env}), stdout=self._log,
                                     stderr=subprocess.STDOUT if self._log else None, start_new_session=True,
                                     preexec_fn=functools.partial(_hold_sigterm_and_die_with_parent, os.getpid())
                                     if lifetime.supported() else None)
        self.pid = self.proc.pid  # == the process group id (start_new_session)

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        """The child's exit status; on timeout the group is killed and ``ChildTimeout`` raised."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ChildTimeout(f"child {self.name!r} timed out after {timeout:.0f} s; killed"
                               + self._log_excerpt()) from None

    def kill(self) -> None:
        """Kill the child's whole process group (engine core and workers included) and reap the child."""
        kill_group(self.pid, proc=self.proc)
        try:
            self.proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent to the group
            pass

    def result(self) -> Any:
        """The target's return value (after ``wait``); ``ChildFailed`` with the log's error lines otherwise."""
        code = self.proc.returncode
        if code != 0 or not self.result_path.exists():
            raise ChildFailed(f"child {self.name!r} failed (exit {code})" + self._log_excerpt())
        return json.loads(self.result_path.read_text())

    def log_text(self) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""

    def _log_excerpt(self, tail: int = 4000) -> str:
        text = self.log_text()
        if not text:
            return ""
        errors = [ln for ln in text.splitlines() if "Error" in ln or "Exception" in ln]
        where = f" (log {self.log_path})" if self.log_path and not str(self.log_path).startswith(self._tmp.name) else ""
        return (f"{where}; error lines:\n" + "\n".join(errors[:12]) + f"\n--- log tail ---\n{text[-tail:]}")

    def close(self) -> None:
        if self.proc.returncode is None and self.proc.poll() is None:
            self.kill()
        else:
            kill_group(self.pid, grace_s=1.0)  # the child exited: end anything it left behind in its group
        if self._log is not None:
            self._log.close()
            self._log = None
        self._tmp.cleanup()

    def __enter__(self) -> "ChildCall":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def call_in_child(target: str, payload: Any, *, env: Mapping[str, str | None] | None = None,
                  timeout: float | None = 1800, log_path: str | Path | None = None, quiet: bool = True,
                  name: str = "") -> Any:
    """``target(payload)`` (``"module:function"``, JSON in and out) in a fresh Python process with ``env`` applied;
    its result. Raises ``ChildFailed`` (``ChildTimeout``) with the child's error lines and log tail."""
    with ChildCall(target, payload, env=env, log_path=log_path, quiet=quiet, name=name) as child:
        child.wait(timeout)
        return child.result()


def run_in_child(spec: RunSpec, *, timeout: float = 1800, quiet: bool = True) -> dict[str, Any]:
    """Run ``spec`` in a fresh Python process; return its result dict (raises with the child's log on failure)."""
    return call_in_child(RUN_SPEC_TARGET, asdict(spec), env=spec.env, timeout=timeout, quiet=quiet,
                         name=f"engine run {spec.name!r}")


# ----------------------------------------------------------------------------------------------------------------
# Child side
# ----------------------------------------------------------------------------------------------------------------


def sampling_params(spec: RunSpec):
    from vllm import SamplingParams

    out = []
    for i in range(len(spec.prompts)):
        kw = dict(spec.sampling)
        if spec.per_prompt_extra_args is not None:
            kw["extra_args"] = spec.per_prompt_extra_args[i]
        out.append(SamplingParams(**kw))
    return out


def spec_metrics(llm) -> dict[str, Any]:
    """vLLM's speculative-decoding counters (cumulative since engine start)."""
    out: dict[str, Any] = {}
    for m in llm.get_metrics():
        if m.name.startswith("vllm:spec_decode"):
            key = m.name.removeprefix("vllm:spec_decode_")
            out[key] = list(m.values) if hasattr(m, "values") else m.value
    return out


def metrics_diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Counters ``after`` minus ``before`` (lists element-wise)."""
    out = {}
    for k, v in after.items():
        b = before.get(k)
        if isinstance(v, list):
            out[k] = [x - y for x, y in zip(v, b)] if b else v
        else:
            out[k] = v - (b or 0)
    return out


def run_spec(payload: dict[str, Any]) -> dict[str, Any]:
    """Child side of ``run_in_child``: one engine, one warm-up, ``repeats`` timed batches, batch-1 latencies."""
    spec = RunSpec(**payload)
    from vllm import LLM

    t0 = time.perf_counter()
    kwargs = {**CPU_ENGINE_KWARGS, **spec.engine_kwargs}
    if spec.collect_metrics:
        kwargs["disable_log_stats"] = False
    llm = LLM(model=spec.model, **kwargs)
    startup_s = time.perf_counter() - t0
    params = sampling_params(spec)
    batch_times, outputs, metrics = [], [], None
    if spec.prompts:
        llm.generate(spec.prompts[:2], params[:2], use_tqdm=False)  # warm-up
        metrics_before = spec_metrics(llm) if spec.collect_metrics else None
        for _ in range(max(1, spec.repeats)):
            t = time.perf_counter()
            outputs = llm.generate(spec.prompts, params, use_tqdm=False)
            batch_times.append(time.perf_counter() - t)
        # Counters over the timed batch runs only (warm-up excluded).
        metrics = metrics_diff(spec_metrics(llm), metrics_before) if spec.collect_metrics else None
    latencies, single_token_ids = [], []
    for i in range(min(spec.latency_prompts, len(spec.prompts))):
        t = time.perf_counter()
        single = llm.generate([spec.prompts[i]], [params[i]], use_tqdm=False)
        latencies.append(time.perf_counter() - t)
        single_token_ids.append(list(single[0].outputs[0].token_ids))
    token_ids = [list(o.outputs[0].token_ids) for o in outputs]
    return {
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


def _run_calls(llm, spec: RunSpec) -> list[dict[str, Any]]:
    """Each of ``spec.calls`` on the engine: its result (or error), wall time and spec-decode counters over it."""
    import traceback

    from declab.integrations.sdk.spec import load_object

    out = []
    for target in spec.calls:
        before = spec_metrics(llm) if spec.collect_metrics else None
        t = time.perf_counter()
        record: dict[str, Any] = {"target": target}
        try:
            record["result"] = load_object(target)(llm, dict(spec.call_options))
        except Exception:  # noqa: BLE001 - one failing call must not lose the others' results
            record["error"] = traceback.format_exc()[-4000:]
        record["wall_s"] = time.perf_counter() - t
        record["spec_metrics"] = metrics_diff(spec_metrics(llm), before) if spec.collect_metrics else None
        out.append(record)
    return out


def _hold_sigterm_and_die_with_parent(parent_pid: int) -> None:
    """In the child between fork and exec: ``SIGTERM`` is blocked (the mask survives exec) until ``_main`` has put its
    handler in place, so a parent killed while the child's Python starts still gets its folder removed (the signal
    waits instead of killing the child outright); then the child is armed against its parent's death."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    lifetime.die_with_parent(parent_pid)


def _remove_when_terminated(folder: Path) -> None:
    """On ``SIGTERM`` (from the parent, or ``PR_SET_PDEATHSIG`` when the parent died) remove ``folder``, then die of
    the signal. Processes forked before vLLM sets its own handlers inherit this one: they only die."""
    owner = os.getpid()

    def terminated(signum, _frame):
        if os.getpid() == owner:
            shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, terminated)


def _main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "--call":
        print("usage: python -m declab.integrations.engine_run --call module:function PAYLOAD.json RESULT.json",
              file=sys.stderr)
        return 2
    from declab.integrations.sdk.spec import load_object

    lifetime.arm_if_requested()  # the engine core and workers vLLM forks here die with this process
    if os.environ.get(OWNED_DIR_ENV):
        _remove_when_terminated(Path(os.environ[OWNED_DIR_ENV]))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # held since fork (_hold_sigterm_and_die_with_parent)

    target, payload_path, result_path = argv[1:]
    result = load_object(target)(json.loads(Path(payload_path).read_text()))
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
