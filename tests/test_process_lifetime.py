"""Nothing declab starts outlives its parent (``integrations/lifetime.py``, ``engine_run.ChildCall``).

A ``declab serve`` or ``declab bench`` parent is killed mid-generation (SIGKILL: no handler runs; SIGTERM for the
bench too); within 30 s none of the processes it started (API server's EngineCore and Worker; the bench's child and
its EngineCore and Worker) is alive, and no temporary folder they made is left (they run with ``TMPDIR`` in the test's
folder). Only the processes this test started are signalled, by PID.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
from helpers import child_env, declab_serve_argv, free_port, wait_healthy

from declab.integrations import lifetime

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")

GONE_WITHIN_S = 30
SMALL_ENGINE = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_all_gone(procs: list[psutil.Process]) -> None:
    deadline = time.monotonic() + GONE_WITHIN_S
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [f"{p.pid} {p.name()}" for p in procs if _alive(p)]
    for p in procs:  # a failed test must not leave them running either (these are the test's own processes)
        if _alive(p):
            p.kill()
    assert not left, f"still alive {GONE_WITHIN_S} s after the parent was killed: {left}"


# Not per-run state: torch's compile cache (``$TMPDIR/torchinductor_$USER``), made at import and kept across runs by
# design. (vLLM's ZMQ sockets, files named by UUID, are not folders either: the killed API server bound them.)
PERSISTENT_CACHES = ("torchinductor_",)


def _folders_left(tmpdir: Path) -> list[str]:
    return sorted(p.name for p in tmpdir.iterdir() if p.is_dir() and not p.name.startswith(PERSISTENT_CACHES))


def _wait_for(predicate, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _engine_processes(pid: int) -> list[psutil.Process]:
    """The descendants of ``pid`` once vLLM's EngineCore and a Worker are among them."""
    procs: list[psutil.Process] = []

    def engine_up() -> bool:
        procs[:] = _descendants(pid)
        names = " ".join(" ".join(p.cmdline()) + p.name() for p in procs if _alive(p))
        return "EngineCore" in names and "Worker" in names

    _wait_for(engine_up, "EngineCore and Worker")
    return procs


def _start_python(code: str, tmpdir: Path) -> tuple[subprocess.Popen, int]:
    """``python -c CODE`` (which prints a PID first) with ``TMPDIR`` in ``tmpdir``; the process and that PID."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=child_env(TMPDIR=str(tmpdir)))
    return proc, int(proc.stdout.readline())


@pytest.mark.parametrize("on_sigterm", ["", "signal.signal(signal.SIGTERM, signal.SIG_IGN); "],
                         ids=["default", "sigterm_ignored"])
def test_a_process_forked_by_an_armed_process_dies_with_it(tmp_path, on_sigterm):
    """The mechanism alone (no engine): what an armed process forks, and what that forks, dies with its parent;
    also when both ignore ``SIGTERM`` (like an EngineCore waiting for a step in flight): then within
    ``ORPHAN_GRACE_S`` of their parent's death each (twice the grace for the second generation)."""
    code = ("import os, signal, time; from declab.integrations import lifetime; lifetime.arm_forks()\n"
            "if os.fork() == 0:\n"
            f"    {on_sigterm}\n"
            f"    if os.fork() == 0: {on_sigterm}time.sleep(300)\n"
            "    time.sleep(300)\n"
            "print(os.getpid(), flush=True); time.sleep(300)")
    parent, pid = _start_python(code, tmp_path)
    _wait_for(lambda: len(_descendants(pid)) == 2, "two generations of children", timeout=60)
    procs = _descendants(pid)
    time.sleep(0.5)  # both have run their signal set-up
    parent.kill()
    parent.wait()
    killed_at = time.monotonic()
    _assert_all_gone(procs)
    assert time.monotonic() - killed_at < 2 * lifetime.ORPHAN_GRACE_S + 5


def test_a_bench_child_removes_its_temporary_folder_when_its_parent_is_killed(tmp_path):
    code = ("import os; from declab.integrations.engine_run import call_in_child; print(os.getpid(), flush=True); "
            "call_in_child('time:sleep', 300, timeout=600)")
    parent, pid = _start_python(code, tmp_path)
    _wait_for(lambda: _descendants(pid) and list(tmp_path.glob("declab-child-*/payload.json")), "the child",
              timeout=60)
    procs = _descendants(pid)
    parent.kill()
    parent.wait()
    _assert_all_gone(procs)
    assert _folders_left(tmp_path) == []


@pytest.mark.server
@pytest.mark.usefixtures("no_shared_engine")
def test_sigkill_of_declab_serve_leaves_no_engine_and_no_temporary_folder(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        server = subprocess.Popen(declab_serve_argv("momentum", port, test_args=()), stdout=fh,
                                  stderr=subprocess.STDOUT, env=child_env(**SMALL_ENGINE, TMPDIR=str(tmpdir)))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(server, base, log)
        procs = _engine_processes(server.pid)
        streaming = threading.Event()

        def generate() -> None:  # a long streamed request, cut off by the kill
            body = {"model": "decoder-29m", "prompt": "def f():", "max_tokens": 1500, "ignore_eos": True,
                    "stream": True}
            try:
                with requests.post(f"{base}/v1/completions", json=body, stream=True, timeout=300) as r:
                    for _ in r.iter_lines():
                        streaming.set()
            except requests.RequestException:
                pass

        threading.Thread(target=generate, daemon=True).start()
        assert streaming.wait(120), "no tokens streamed"
        server.send_signal(signal.SIGKILL)
        server.wait()
        _assert_all_gone(procs)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert _folders_left(tmpdir) == []


@pytest.mark.engine
@pytest.mark.usefixtures("no_shared_engine")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_killing_declab_bench_mid_generation_leaves_no_engine_and_no_temporary_folder(tmp_path, sig):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    argv = [sys.executable, "-m", "declab.integrations.cli", "bench", "plugin", "--method", "momentum",
            "--prompts", "4", "--max-tokens", "1500", "--repeats", "50", "--latency-prompts", "0",
            "--out", str(tmp_path / "out")]
    bench = subprocess.Popen(argv, env=child_env(**SMALL_ENGINE, TMPDIR=str(tmpdir)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        procs = _engine_processes(bench.pid)
        child_logs = list(tmpdir.glob("declab-child-*/child.log"))
        assert child_logs, _folders_left(tmpdir)
        # Generating: the engine is up (vLLM logs the start-up time once the KV cache and warm-up are done).
        _wait_for(lambda: "init engine" in child_logs[0].read_text(errors="replace"), "the engine to start")
        time.sleep(3)
        assert all(_alive(p) for p in procs)
        bench.send_signal(sig)
        bench.wait(timeout=GONE_WITHIN_S)
        _assert_all_gone(procs)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert _folders_left(tmpdir) == []
