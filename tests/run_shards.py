"""``make test``: the session in shards (tests/shards.py) — N pytest processes side by side, then the groups that need
the whole machine — and one summary. Usage::

    python tests/run_shards.py [--shards N] [pytest arguments ...]

Each shard's output goes to ``/tmp/dl*/shard-<i>.log`` and is printed whole when the shard ends (in-process
engines run one OpenMP thread each, so N = the machine's cores keeps every core busy). Exit status: the first
non-zero one of the pytest runs (5, "no tests collected", counts as success for a shard that got no group).
Every shard writes its groups' durations to ``tests/timings.json`` when ``DECLAB_TEST_TIMINGS`` names it.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shards import CORE_ENV, EXCLUSIVE

from declab.integrations import lifetime

NO_TESTS = 5  # pytest's exit code when a shard selected nothing


def run(pytest_args: list[str], shards: int) -> int:
    # Short: vLLM binds ZMQ sockets under a test's TMPDIR (inside its basetemp), and a socket path has at most 107
    # characters; "/tmp/dlXXXXXXXX/0/<test dir>/tmp/<uuid>" stays shorter than pytest's own default basetemp.
    base = Path(tempfile.mkdtemp(prefix="dl"))
    cores = os.cpu_count() or 1

    def start(spec: str, name: str, core: int | None) -> tuple[str, subprocess.Popen, Path, float]:
        log = base / f"{name}.log"
        basetemp = base / (EXCLUSIVE[0] if spec == EXCLUSIVE else spec.split("/")[0])
        env = dict(os.environ)
        if core is not None:
            env[CORE_ENV] = str(core)
        argv = [sys.executable, "-m", "pytest", f"--declab-shard={spec}", f"--basetemp={basetemp}", *pytest_args]
        with open(log, "w") as fh:
            # A shard dies with this runner (a CI time-out kills the runner), and its engines with the shard.
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=functools.partial(lifetime.die_with_parent, os.getpid(),
                                                                 signal.SIGTERM))
        print(f"[run_shards] {name}: {' '.join(argv[1:])} (log {log})", flush=True)
        return name, proc, log, time.monotonic()

    def finish(jobs) -> int:
        status = 0
        for name, proc, log, t0 in jobs:
            code = proc.wait()
            print(f"\n===== {name}: exit {code}, {time.monotonic() - t0:.0f} s =====", flush=True)
            print(log.read_text(errors="replace"), flush=True)
            if code not in (0, NO_TESTS) and status == 0:
                status = code
        return status

    t0 = time.monotonic()
    status = finish([start(f"{i}/{shards}", f"shard-{i}", i % cores) for i in range(shards)])
    code = finish([start(EXCLUSIVE, EXCLUSIVE, None)])
    print(f"[run_shards] {shards} shards + {EXCLUSIVE}: {time.monotonic() - t0:.0f} s in all", flush=True)
    return status or (code if code != NO_TESTS else 0)


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--shards", type=int, default=os.cpu_count() or 1)
    args, pytest_args = parser.parse_known_args()
    return run(pytest_args, max(1, args.shards))


if __name__ == "__main__":
    sys.exit(main())
