"""Engine host: the child process that holds one vLLM ``LLM`` for a test session (started by ``engines.EngineHost``).

    python tests/engine_host.py FD

``FD`` is this process's end of a socket pair with pytest. Protocol (``multiprocessing.connection`` messages):

1. pytest sends the cloudpickled ``(model, engine_kwargs)``; the host creates the ``LLM`` (its environment, set by
   pytest, selects the plugins) and answers ``("ready", start-up seconds)`` or
   ``("start_failed", {"error", "chain", "traceback"})``.
2. Each further message is a cloudpickled ``(fn, args)``; the host answers ``("ok", cloudpickle.dumps(fn(llm, *args)))``
   or ``("error", traceback)`` and keeps serving (a failing scenario fails its test, not the engine).
3. ``b"close"``, or the end of the socket (pytest is gone), ends the host at once.

The host holds no scenario of its own: the tests send functions written next to their assertions.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from multiprocessing.connection import Connection


def _chain(e: BaseException) -> str:
    """``Type: message <- Type: message ...``: the error and its causes."""
    chain, cur = [], e
    while cur is not None and len(chain) < 10:
        chain.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    return " <- ".join(chain)


def _start(conn: Connection):
    import cloudpickle

    model, engine_kwargs = cloudpickle.loads(conn.recv_bytes())
    t0 = time.perf_counter()
    try:
        from vllm import LLM

        llm = LLM(model=model, **engine_kwargs)
    except Exception as e:  # noqa: BLE001 - start-up errors are what some tests check
        conn.send(("start_failed", {"error": f"{type(e).__name__}: {e}", "chain": _chain(e),
                                    "traceback": traceback.format_exc()}))
        return None
    conn.send(("ready", time.perf_counter() - t0))
    return llm


def _serve(conn: Connection, llm) -> None:
    import cloudpickle

    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):  # pytest is gone
            return
        if message == b"close":
            return
        try:
            fn, args = cloudpickle.loads(message)
            reply = ("ok", cloudpickle.dumps(fn(llm, *args)))
        except Exception:  # noqa: BLE001 - reported to the test that sent the scenario
            reply = ("error", traceback.format_exc())
        conn.send(reply)


def main(fd: int) -> None:
    conn = Connection(fd)
    try:
        llm = _start(conn)
        if llm is not None:
            _serve(conn, llm)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # No engine shutdown: the process holds nothing else, and vLLM's teardown can take longer than a start.
        os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]))
