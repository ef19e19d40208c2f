"""Nothing declab starts outlives the process that started it (Linux ``PR_SET_PDEATHSIG``).

vLLM ends its processes with their parent only part of the way: a Worker watches a pipe to its EngineCore and exits
when it closes, but EngineCore has no watch on the process that started it (the API server, or the process holding
``LLM``). SIGKILL that parent and EngineCore and its Workers stay, holding the model and the KV cache (4.8 GB measured
behind one ``declab serve``).

``declab serve`` and the children of ``declab bench`` / ``declab demo`` run with ``DECLAB_DIE_WITH_PARENT=1``. In a
process armed by it (``arm_if_requested``):

* every process it **forks** gets ``SIGTERM`` when its parent dies (``os.register_at_fork``: the hook is inherited by
  the forked child, so the Workers forked by a forked EngineCore get it too). vLLM forks EngineCore and Workers by
  default (``VLLM_WORKER_MULTIPROC_METHOD=fork``); both shut down cleanly on ``SIGTERM``;
* a process vLLM **spawns** (``VLLM_WORKER_MULTIPROC_METHOD=spawn``, forced e.g. when CUDA is initialised) is a fresh
  interpreter without that hook: declab's ``vllm.general_plugins`` entry point, which vLLM runs in every process it
  starts, arms it there against the parent ``multiprocessing`` recorded. (With plugin loading off, ``VLLM_PLUGINS=""``,
  vLLM runs no entry point: spawned processes are then not covered.)

When the parent is already gone at the moment the signal is armed, the process signals itself. Linux sends the signal
when the *thread* that forked exits: vLLM starts EngineCore and Workers from their parent's main thread.

``SIGTERM`` asks for vLLM's graceful shutdown, which waits for the step in flight: an EngineCore whose Worker was
compiling a sampler kernel (torch inductor, first request with logprobs) stayed 17-20 s after its parent was
SIGKILLed, 30 s and more on a loaded machine (measured; the CI failure of ``test_process_lifetime``). So every armed
process also watches its parent (``kill_when_orphaned``: a daemon thread blocked on a pidfd of the parent, no polling)
and sends itself ``SIGKILL`` ``ORPHAN_GRACE_S`` after the parent is gone, whatever its shutdown is doing; nothing
it would still send has a reader. A chain EngineCore -> Worker is gone within twice that.
No vLLM code is patched: nothing here depends on vLLM's version.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import select
import signal
import sys
import threading
import time

ENV = "DECLAB_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1
_fork_hook_installed = False
_forking_pid: int | None = None  # the pid of the process about to fork, read by the child right after
_watching_pid: int | None = None  # the process whose parent watch runs (a forked child inherits the variable)
# Seconds an orphan may spend on its graceful shutdown before it kills itself; KILL_GRACE_S of engine_run is the same
# allowance for a group its parent ends.
ORPHAN_GRACE_S = 5.0


def supported() -> bool:
    return sys.platform.startswith("linux")


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGTERM) -> None:
    """This process gets ``sig`` when its parent dies; at once if ``parent_pid`` is given and already gone."""
    if not supported():
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))
    except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
        return
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl: nobody will signal
        os.kill(os.getpid(), sig)


def _wait_for_exit(parent_pid: int) -> None:
    """Return once ``parent_pid`` is no longer this process's parent (it died; this process was re-parented)."""
    try:
        pidfd = os.pidfd_open(parent_pid)
    except (AttributeError, OSError):  # pragma: no cover - Linux before 5.3: poll the parent pid instead
        pidfd = None
    if pidfd is not None:
        try:
            if os.getppid() == parent_pid:  # the pidfd is the parent's, not a reused pid's
                select.select([pidfd], [], [])  # readable when that process exits
        finally:
            os.close(pidfd)
        return
    while os.getppid() == parent_pid:  # pragma: no cover
        time.sleep(1.0)


def kill_when_orphaned(parent_pid: int, grace_s: float = ORPHAN_GRACE_S) -> None:
    """``SIGKILL`` this process ``grace_s`` after ``parent_pid`` (its parent) exits: the bound on the graceful shutdown
    ``die_with_parent``'s signal starts. One watch per process; a daemon thread, so it never delays an exit."""
    global _watching_pid
    if not supported() or _watching_pid == os.getpid():
        return
    _watching_pid = os.getpid()

    def watch() -> None:
        _wait_for_exit(parent_pid)
        time.sleep(grace_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="declab-orphan-watch", daemon=True).start()


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _after_fork_in_child() -> None:
    die_with_parent(_forking_pid)
    kill_when_orphaned(_forking_pid)


def arm_forks() -> None:
    """Every process this one forks from now on (and the processes they fork) dies with its parent: ``SIGTERM`` at
    once, ``SIGKILL`` ``ORPHAN_GRACE_S`` later if it is still there. Idempotent."""
    global _fork_hook_installed
    if _fork_hook_installed or not supported():
        return
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _fork_hook_installed = True


def arm_if_requested(env=os.environ) -> bool:
    """With ``DECLAB_DIE_WITH_PARENT=1``: arm this process's forks and, in a process ``multiprocessing`` started
    (spawned EngineCore / Worker), this process itself against its parent. Whether it was requested."""
    if env.get(ENV) != "1":
        return False
    arm_forks()
    parent = multiprocessing.parent_process()
    if parent is not None:
        die_with_parent(parent.pid)
        kill_when_orphaned(parent.pid)
    return True
