"""Splitting the session into shards that run side by side (``tests/run_shards.py``, ``make test``).

The unit of a split is a *group*: the tests of one engine or server profile (the profile the test is ordered by,
``conftest._rank``), the core tests of one module, or the tests that start processes of their own. A group never
spans two shards, so every engine still starts once per shard that needs it.

* ``i/n`` (``--declab-shard 0/2``): the shared groups assigned to shard ``i`` of ``n`` by their recorded durations
  (``timings.json``; longest first onto the least loaded shard), each shard a pytest process of its own. Shard ``i``'s
  servers bind vLLM's OpenMP thread to core ``i % cores`` (vLLM's ``auto`` binding puts every server on core 0).
* ``exclusive``: the groups that need the whole machine, run after the shards: tensor- and data-parallel profiles
  (one worker bound to each core) and the tests that start their own ``declab serve`` with vLLM's defaults.

Without ``--declab-shard`` the session runs every test, in order, as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TIMINGS = Path(__file__).with_name("timings.json")  # {group: seconds} from a recorded session
TIMINGS_ENV = "DECLAB_TEST_TIMINGS"  # a session writes its groups' durations to this path
CORE_ENV = "DECLAB_TEST_CORE"  # the core shard i's servers are bound to (set by run_shards.py)
EXCLUSIVE = "exclusive"
DEFAULT_SECONDS = {"engine": 60.0, "server": 120.0, "core": 5.0}  # a group with no recorded duration


def parse(spec: str) -> tuple[int, int] | str:
    """``"i/n"`` -> ``(i, n)``; ``"exclusive"`` as is; anything else is a usage error naming the option."""
    if spec == EXCLUSIVE:
        return spec
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--declab-shard must be 'i/n' or '{EXCLUSIVE}', got {spec!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--declab-shard {spec!r}: i must be in [0, n)")
    return index, count


def assign(groups: dict[str, str], count: int, seconds: dict[str, float]) -> dict[str, int]:
    """Shard of each shared group (``groups``: name -> kind): longest first onto the least loaded shard; ties by
    name, so every shard computes the same split."""
    load = [0.0] * count
    out = {}
    cost = {g: seconds.get(g, DEFAULT_SECONDS[kind]) for g, kind in groups.items()}
    for group in sorted(groups, key=lambda g: (-cost[g], g)):
        shard = min(range(count), key=lambda i: (load[i], i))
        out[group] = shard
        load[shard] += cost[group]
    return out


def recorded() -> dict[str, float]:
    return json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}


def write_timings(durations: dict[str, float]) -> None:
    """Merge this session's group durations into the file ``DECLAB_TEST_TIMINGS`` names (if set)."""
    path = os.environ.get(TIMINGS_ENV)
    if not path:
        return
    target = Path(path)
    merged = json.loads(target.read_text()) if target.exists() else {}
    merged.update({g: round(s, 1) for g, s in durations.items()})
    target.write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")
