"""Engines shared by the test session: one vLLM engine per configuration profile, in a child "engine host".

Plugin selection is per process (vLLM's entry point reads ``DECLAB_PLUGINS`` once and patches the process), so each
profile (environment + engine kwargs, listed in ``profiles.py``) lives in a host process of its own
(``engine_host.py``) holding one ``LLM``. A test sends it a function written next to its assertions:
``handle.run(fn, *args)`` ships ``fn`` with cloudpickle (test modules by value) and returns ``fn(llm, *args)``.
Because a test module travels by value, a scenario imports process state it reads (a plugin's store, the scheduler)
inside its body: a module-level object of the test module would arrive as a copy of the test process's one.

Memory: ``EnginePool`` keeps at most one host or server alive; asking for another shuts the live one down first, and
``conftest.py`` orders the tests by profile so that each engine starts once per session. Nothing outlives pytest:
each host has its own process group (killed by its PID on close or exit), ``PR_SET_PDEATHSIG``, and ends when its
socket to pytest closes.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import glob
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Mapping

import cloudpickle
import shards
from helpers import child_env, declab_server

from declab.integrations import lifetime
from declab.integrations.engine_run import CPU_ENGINE_KWARGS, IN_PROCESS_ENGINE_ENV, kill_group
from declab.integrations.models import default_model

TESTS_DIR = Path(__file__).resolve().parent
HOST_SCRIPT = TESTS_DIR / "engine_host.py"
START_TIMEOUT_S = 900
RUN_TIMEOUT_S = 1800

# The environment of every host (a profile may override any of it).
HOST_ENV = IN_PROCESS_ENGINE_ENV

def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when pytest (its parent) exits, however it exits."""
    return functools.partial(lifetime.die_with_parent, os.getpid(), sig)


def _torch_libgomp() -> str | None:
    """PyTorch's libgomp, which vLLM preloads into its CPU workers (``platforms/cpu.py``); the host does the same."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    torch_dir = Path(spec.origin).parent
    found = sorted(glob.glob(str(torch_dir.parent / "torch.libs" / "libgomp*.so*")) +
                   glob.glob(str(torch_dir / "lib" / "libgomp*.so*")))
    return found[0] if found else None


@dataclass(frozen=True)
class EngineProfile:
    """One engine configuration: the plugins selected, more environment, engine kwargs over CPU_ENGINE_KWARGS.
    ``{workdir}`` in an environment value is the session's engine folder (for files the engine writes)."""

    name: str
    plugins: str | None = None  # DECLAB_PLUGINS; None: unset
    env: Mapping[str, str | None] = field(default_factory=dict)  # None: unset
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fixture(self) -> str:
        return f"{self.name}_engine"

    def environment(self, workdir: Path) -> dict[str, str]:
        preload = _torch_libgomp()
        env: dict[str, str | None] = {**HOST_ENV, "DECLAB_PLUGINS": self.plugins}
        if preload and "libgomp" not in os.environ.get("LD_PRELOAD", ""):
            env["LD_PRELOAD"] = ":".join(p for p in (os.environ.get("LD_PRELOAD"), preload) if p)
        env.update({k: v.replace("{workdir}", str(workdir)) if v else v for k, v in self.env.items()})
        return child_env(**env)

    def kwargs(self) -> dict[str, Any]:
        return {**CPU_ENGINE_KWARGS, **self.engine_kwargs}


@dataclass(frozen=True)
class ServerProfile:
    """A ``declab serve --plugins PLUGINS [-- VLLM_ARGS]`` shared by the server tests that name its fixture
    ``<name>_server``."""

    name: str
    plugins: str
    args: tuple[str, ...] = ()  # more ``vllm serve`` flags
    env: Mapping[str, str | None] = field(default_factory=dict)  # more environment (None: unset)

    @property
    def fixture(self) -> str:
        return f"{self.name}_server"


class EngineStartError(RuntimeError):
    """The engine of a profile refused to start. ``error``: ``Type: message`` of what ``LLM(...)`` raised; ``log``:
    that error with its causes, its traceback and everything the host printed."""

    def __init__(self, profile: str, failure: dict[str, str], host_log: str):
        self.error = failure["error"]
        self.log = f"{failure['chain']}\n{failure['traceback']}\n--- host log ---\n{host_log}"
        super().__init__(f"engine {profile!r} did not start: {self.log[-6000:]}")


class ScenarioError(AssertionError):
    """A scenario raised inside its host; the message carries the host's traceback."""


def _ship_by_value(fn: Callable) -> None:
    """Test modules are pickled by value: the host runs their functions without importing them."""
    module = sys.modules.get(fn.__module__)
    path = getattr(module, "__file__", None)
    if module is not None and path and Path(path).resolve().parent == TESTS_DIR and module.__name__ != __name__:
        cloudpickle.register_pickle_by_value(module)


class EngineHost:
    """The host process of one profile: ``start``, any number of ``run``, ``close``."""

    _started = 0  # hosts started in this session: numbers their logs

    def __init__(self, profile: EngineProfile, workdir: Path):
        EngineHost._started += 1
        self.profile = profile
        self.log_path = workdir / f"{EngineHost._started:02d}-{profile.name}.log"
        self._workdir = workdir
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self.startup_s: float | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, str(HOST_SCRIPT), str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                env=self.profile.environment(self._workdir), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent())
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send_bytes(cloudpickle.dumps((default_model(), self.profile.kwargs())))
        status, payload = self._receive(START_TIMEOUT_S, "start-up")
        if status != "ready":
            self.close()
            raise EngineStartError(self.profile.name, payload, self.log())
        self.startup_s = payload

    def run(self, fn: Callable, *args: Any, timeout: float = RUN_TIMEOUT_S) -> Any:
        """``fn(llm, *args)`` in the host; its result (picklable), or ScenarioError with the host's traceback."""
        _ship_by_value(fn)
        self._conn.send_bytes(cloudpickle.dumps((fn, args)))
        status, payload = self._receive(timeout, fn.__name__)
        if status == "error":
            raise ScenarioError(f"{fn.__name__} failed on engine {self.profile.name!r}:\n{payload}")
        return cloudpickle.loads(payload)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self, tail: int = 20000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""

    def _receive(self, timeout: float, what: str) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while not self._conn.poll(1.0):
            if self._proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"engine {self.profile.name!r}: {what} took over {timeout:.0f}s\n{self.log(4000)}")
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            proc = self._proc
            self.close()
            raise RuntimeError(f"engine {self.profile.name!r} died during {what} (exit {proc.returncode}):\n"
                               f"{self.log(6000)}") from None

    def close(self) -> None:
        proc, conn = self._proc, self._conn
        if proc is None:
            return
        with contextlib.suppress(OSError):
            conn.send_bytes(b"close")
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own group: the host and anything it started
            proc.wait()
        # The host exits without shutting its engine down: tensor-parallel workers it started (same process group)
        # would otherwise spin on their message queues for minutes after it, slowing the next engine's start.
        kill_group(proc.pid, grace_s=5.0)
        conn.close()
        self._proc = self._conn = None


# A server runs vLLM's multiprocessing engine (the API server requires it); only the KV cache size is shared.
HOST_ENV_SERVER = {"VLLM_CPU_KVCACHE_SPACE": HOST_ENV["VLLM_CPU_KVCACHE_SPACE"]}


def shard_binding() -> dict[str, str]:
    """The core this shard's servers bind vLLM's OpenMP thread to (tests/shards.py): without it every server binds
    to core 0, and two shards' servers would share it while the other core idles."""
    core = os.environ.get(shards.CORE_ENV)
    return {"VLLM_CPU_OMP_THREADS_BIND": core} if core else {}


class RunningServer:
    """A live ``declab serve`` (helpers.declab_server) of one server profile."""

    def __init__(self, profile: ServerProfile, workdir: Path):
        self.profile = profile
        self._stack = contextlib.ExitStack()
        self.url = self._stack.enter_context(declab_server(
            profile.plugins, workdir / f"server-{profile.name}.log", *profile.args,
            env={**HOST_ENV_SERVER, **shard_binding(), **profile.env},
            preexec_fn=die_with_parent(signal.SIGTERM)))

    def close(self) -> None:
        self._stack.close()


class EnginePool:
    """The session's engines and servers, at most one alive at a time; each started on first use."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._live: EngineHost | RunningServer | None = None
        self.starts: list[tuple[str, float]] = []  # (profile, seconds to start), for the session report
        atexit.register(self.release)

    def host(self, profile: EngineProfile) -> EngineHost:
        if isinstance(self._live, EngineHost) and self._live.profile == profile and self._live.alive:
            return self._live
        self.release()
        host = EngineHost(profile, self.workdir)
        t0 = time.perf_counter()
        host.start()
        self.starts.append((profile.name, time.perf_counter() - t0))
        self._live = host
        return host

    def server(self, profile: ServerProfile) -> str:
        if isinstance(self._live, RunningServer) and self._live.profile == profile:
            return self._live.url
        self.release()
        t0 = time.perf_counter()
        self._live = RunningServer(profile, self.workdir)
        self.starts.append((f"server {profile.name}", time.perf_counter() - t0))
        return self._live.url

    def startup_error(self, profile: EngineProfile) -> EngineStartError | None:
        """Start ``profile`` in a short-lived host: why it refused to start, or None if it started."""
        self.release()
        host = EngineHost(profile, self.workdir)
        t0 = time.perf_counter()
        try:
            host.start()
        except EngineStartError as e:
            return e
        finally:
            self.starts.append((f"start-up check {profile.name}", time.perf_counter() - t0))
        host.close()
        return None

    def release(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.close()


class EngineHandle:
    """What a ``<profile>_engine`` fixture gives a test: runs scenarios on that profile's engine, started (and the
    live one shut down) on first use."""

    def __init__(self, pool: EnginePool, profile: EngineProfile):
        self._pool = pool
        self.profile = profile

    def run(self, fn: Callable, *args: Any, timeout: float = RUN_TIMEOUT_S) -> Any:
        return self._pool.host(self.profile).run(fn, *args, timeout=timeout)


# ---------------------------------------------------------------------------------------------------------------
# Scenarios several modules share (run in a host: ``fn(llm, *args)``)


def spec_counters(llm) -> dict[str, float]:
    """vLLM's speculative-decoding counters (cumulative), e.g. ``num_accepted_tokens``; {} when stats are off."""
    if not llm.llm_engine.log_stats:
        return {}
    return {m.name.removeprefix("vllm:spec_decode_"): m.value for m in llm.get_metrics()
            if m.name.startswith("vllm:spec_decode") and hasattr(m, "value")}


def _drafter_stats(worker) -> dict[str, Any]:
    return worker.model_runner.drafter.stats_snapshot()  # vLLM's name for a runner's speculative proposer


def drafter_stats(llm) -> dict[str, Any]:
    """The speculative proposer's statistics now (``DeclabProposer.stats_snapshot``), cumulative."""
    return llm.collective_rpc(_drafter_stats)[0]


def counter_delta(after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """``after - before`` for the numeric counters; other entries (settings, flags) as ``after`` has them."""
    return {k: v - before.get(k, 0) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            for k, v in after.items()}


def mixed_tree_batch(llm, prompts: list[str]) -> dict[str, Any]:
    """A tree proposer's mixed batch through the engine loop (8 prompts): greedy and sampled rows (trees), a greedy row
    asking for logprobs and a sampled row with a repetition penalty (chains, verified by vLLM's rejection sampler),
    and a greedy and a sampled tree row aborted after three steps. Free KV blocks before and after, requests left."""
    from vllm import SamplingParams

    sched = llm.llm_engine.engine_core.engine_core.scheduler
    free_before = sched.kv_cache_manager.block_pool.get_num_free_blocks()
    before, spec_before = drafter_stats(llm), spec_counters(llm)
    params = {
        "greedy0": SamplingParams(temperature=0.0, max_tokens=64),
        "t1": SamplingParams(temperature=1.0, max_tokens=64),
        "logprobs": SamplingParams(temperature=0.0, max_tokens=64, logprobs=1),
        "greedy3": SamplingParams(temperature=0.0, max_tokens=64),
        "t07_p09_seeded": SamplingParams(temperature=0.7, top_p=0.9, seed=7, max_tokens=64),
        "penalty": SamplingParams(temperature=1.0, repetition_penalty=1.2, max_tokens=64),
        "aborted_t1": SamplingParams(temperature=1.0, max_tokens=64, ignore_eos=True),
        "aborted_greedy": SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True),
    }
    engine = llm.llm_engine
    for (rid, sp), prompt in zip(params.items(), prompts, strict=True):
        engine.add_request(rid, prompt, sp)
    outs, steps = {}, 0
    while engine.has_unfinished_requests():
        for o in engine.step():
            outs[o.request_id] = {"token_ids": list(o.outputs[0].token_ids), "finished": o.finished,
                                  "finish_reason": o.outputs[0].finish_reason,
                                  "logprobs_steps": len(o.outputs[0].logprobs or [])}
        steps += 1
        if steps == 3:
            engine.abort_request(["aborted_t1", "aborted_greedy"])
    return {"outputs": outs, "stats": counter_delta(drafter_stats(llm), before),
            "spec": counter_delta(spec_counters(llm), spec_before),
            "free_blocks": (free_before, sched.kv_cache_manager.block_pool.get_num_free_blocks()),
            "requests_left": len(sched.requests)}


MIXED_GREEDY_ROWS = {"greedy0": 0, "logprobs": 2, "greedy3": 3}  # mixed_tree_batch's greedy rows: prompt index


def greedy_run(llm, prompts: list[str], max_tokens: int, batch1: int = 0) -> dict[str, Any]:
    """Greedy outputs of ``prompts`` in one concurrent batch, and of the first ``batch1`` prompts one at a time;
    ``spec`` / ``single_spec``: the speculative-decoding counters over the batch / over the one-at-a-time runs."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    before = spec_counters(llm)
    outs = llm.generate(prompts, params, use_tqdm=False)
    after = spec_counters(llm)
    singles = [list(llm.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids) for p in prompts[:batch1]]
    after_singles = spec_counters(llm)
    return {"prompts": list(prompts), "token_ids": [list(o.outputs[0].token_ids) for o in outs],
            "texts": [o.outputs[0].text for o in outs], "single_token_ids": singles,
            "spec": {k: v - before.get(k, 0) for k, v in after.items()},
            "single_spec": {k: v - after.get(k, 0) for k, v in after_singles.items()}}


def sample_run(llm, prompt: str, n: int, temperature: float, max_tokens: int, top_p: float = 1.0) -> dict[str, Any]:
    """``n`` samples of ``prompt`` in one batch (``ignore_eos``), and the speculative-decoding counters over them.

    No per-request seeds: on the CPU build a seeded request whose prefill is chunked kills the engine ("CPU
    Generator does not use offset": gpu_model_runner.py rewinds torch.Generator offsets, CUDA-only). The engine-wide
    seed (CPU_ENGINE_KWARGS) and the session's fixed test order keep the draws reproducible."""
    from vllm import SamplingParams

    params = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, ignore_eos=True)
              for _ in range(n)]
    before = spec_counters(llm)
    outs = llm.generate([prompt] * n, params, use_tqdm=False)
    after = spec_counters(llm)
    return {"prompt": prompt, "n": n, "temperature": temperature, "max_tokens": max_tokens, "top_p": top_p,
            "token_ids": [list(o.outputs[0].token_ids) for o in outs],
            "spec": {k: v - before.get(k, 0) for k, v in after.items()}}


def seeded_sample_run(llm, prompts: list[str], max_tokens: int, temperature: float, top_p: float = 1.0,
                      batch1: int = 0) -> dict[str, Any]:
    """Prompt ``i`` sampled with ``seed=i`` (``ignore_eos``), all in one batch, and the first ``batch1`` alone.
    Short prompts only: on the CPU build without declab's seeded-chunked-prefill fix (the vanilla engine) a seeded
    request whose prefill is chunked kills the engine."""
    from vllm import SamplingParams

    params = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=i, ignore_eos=True)
              for i in range(len(prompts))]
    outs = llm.generate(prompts, params, use_tqdm=False)
    singles = [list(llm.generate([prompts[i]], params[i], use_tqdm=False)[0].outputs[0].token_ids)
               for i in range(batch1)]
    return {"token_ids": [list(o.outputs[0].token_ids) for o in outs], "single_token_ids": singles}


def seeded_in_a_crowd(llm, prompts: list[str], max_tokens: int, temperature: float, top_p: float) -> dict:
    """``seeded_sample_run`` (one batch, and the first two alone), then the same seeded requests interleaved with as
    many unseeded requests on other prompts (greedy and sampled) in one batch."""
    from vllm import SamplingParams

    out = seeded_sample_run(llm, prompts, max_tokens, temperature, top_p, batch1=2)
    seeded = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=i, ignore_eos=True)
              for i in range(len(prompts))]
    others = [SamplingParams(temperature=t, max_tokens=max_tokens + 8) for t in (0.0, 1.0) * (len(prompts) // 2)]
    crowd_prompts = [p for pair in zip(prompts, reversed(prompts)) for p in pair]
    crowd_params = [sp for pair in zip(seeded, others) for sp in pair]
    crowd = llm.generate(crowd_prompts, crowd_params, use_tqdm=False)
    out["crowd_token_ids"] = [list(o.outputs[0].token_ids) for o in crowd[::2]]
    return out


def sample_run_unpatched_kernel(llm, *args) -> dict:
    """``sample_run`` with the rejection sampler's ``expand_kernel`` sent back to vLLM's unpatched CPU fallback (the
    bug ``patches/cpu_expand_kernel.py`` fixes: per-draft temperatures left uninitialised), restored after. The
    engine core runs in this host process, so the kernel override the worker registered is this module's."""
    from vllm.utils import cpu_triton_utils
    from vllm.v1.sample import rejection_sampler

    override = rejection_sampler.expand_kernel  # vLLM's KernelOverride, shared by every reference to the kernel
    patched = override._impl
    assert patched is cpu_triton_utils._expand_kernel_impl, "the cpu_expand_kernel patch is not in place"
    override._impl = override.func = cpu_triton_utils._declab_orig__expand_kernel_impl
    try:
        return sample_run(llm, *args)
    finally:
        override._impl = override.func = patched


def sample_run_accepting_every_draft(llm, *args) -> dict:
    """``sample_run`` with a deliberately biased verifier: vLLM's ``rejection_sample`` replaced by EAD's
    (``patches/ead_accepts_drafts.py``: every draft token, then the target's bonus token), restored after. A
    distribution test must fail on it."""
    from vllm.v1.sample import rejection_sampler

    from declab.patches.ead_accepts_drafts import accept_every_draft

    original = rejection_sampler.rejection_sample
    rejection_sampler.rejection_sample = accept_every_draft
    try:
        return sample_run(llm, *args)
    finally:
        rejection_sampler.rejection_sample = original


def sample_run_with_biased_tree_rule(llm, bias: str, delegate, *args) -> dict:
    """``sample_run`` with a deliberately biased tree verifier subscribed first (removed after); a distribution test
    must fail on it. At every node, ``bias="argmax_first"`` accepts a child whose token is the target's argmax
    outright, ``bias="first_child"`` accepts the first child outright (the tree's "accept every draft"); otherwise
    ``delegate`` (the ``tree_sampling`` rule matching how the proposer drew its children) decides."""
    from declab.integrations.sdk.tree_sampling import NodeRule
    from declab.integrations.sdk.tree_verification import SEAM, SamplingTreeVerifier

    if bias not in ("argmax_first", "first_child"):
        raise ValueError(f"bias must be 'argmax_first' or 'first_child', got {bias!r}")

    class Biased(NodeRule):
        def choose(self, logits, children, tokens, q_rows, draws):
            if bias == "first_child":
                hit = children[0] if children else None
            else:
                top = int(logits.argmax())
                hit = next((c for c in children if tokens[c] == top), None)
            if hit is not None:
                return hit, tokens[hit]
            return delegate.choose(logits, children, tokens, q_rows, draws)

    biased = SamplingTreeVerifier(rule=Biased())
    SEAM.subscribe(biased)
    try:
        return sample_run(llm, *args)
    finally:
        SEAM.unsubscribe(biased)


@dataclass(frozen=True)
class Reference:
    """A vanilla computation several tests compare against: ``scenario(llm, *args())`` on the vanilla engine."""

    scenario: Callable[..., dict[str, Any]]
    args: Callable[[], tuple]


class VanillaReferences:
    """The references of ``profiles.VANILLA_REFERENCES``, computed once per session on the vanilla engine. The first
    request computes every reference the session's tests declare (``@pytest.mark.vanilla(name, ...)``), so the
    vanilla engine starts once whatever the test order."""

    def __init__(self, engine: EngineHandle, references: Mapping[str, Reference], declared: Callable[[], set[str]]):
        self._engine = engine
        self._references = references
        self._declared = declared
        self._cache: dict[str, dict[str, Any]] = {}

    def __call__(self, name: str) -> dict[str, Any]:
        if name not in self._cache:
            for key in sorted({name} | self._declared()):
                if key not in self._cache:
                    ref = self._references[key]
                    self._cache[key] = self._engine.run(ref.scenario, *ref.args())
        return self._cache[name]
