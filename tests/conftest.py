"""Shared fixtures, test markers and test order.

* Engine tests run scenarios on engines shared by the whole session (``engines.py``): a test names the fixture of
  the profile it needs (``<profile>_engine``, ``<profile>_server``, see ``profiles.py``) and sends it functions.
* Markers are set from what a test uses: ``engine`` (an engine profile or a start-up check), ``server``, else
  ``core`` (no engine; ``make test-fast`` runs ``-m core``).
* Tests are ordered core first, then by profile in ``profiles.py`` order, start-up checks, servers, then the tests
  that start processes of their own (fixture ``no_shared_engine``; stable within a group), so each engine starts once
  and the previous one is shut down before the next starts.
"""

from __future__ import annotations

import pytest
import shards
from engines import EngineHandle, EnginePool, EngineProfile, VanillaReferences
from profiles import PROFILES, SERVERS, VANILLA_REFERENCES

from declab.integrations.models import default_model, fixture_model

STARTUP_FIXTURE = "engine_startup_error"
OWN_PROCESSES_FIXTURE = "no_shared_engine"


@pytest.fixture(scope="session")
def model_path() -> str:
    """decoder-29m from ../shared when present, else the bundled copy."""
    return default_model()


@pytest.fixture(scope="session")
def shared_model() -> str:
    path = fixture_model()
    if path is None:
        pytest.skip("../shared/fixtures/decoder-29m is not present")
    return str(path)


@pytest.fixture(autouse=True)
def _no_plugin_env_leak(monkeypatch):
    # Engines get DECLAB_PLUGINS from their profile, never from the test process.
    monkeypatch.delenv("DECLAB_PLUGINS", raising=False)
    yield


# -- engines ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def engine_pool(request, tmp_path_factory):
    pool = EnginePool(tmp_path_factory.mktemp("engines"))
    request.config._declab_pool = pool  # for the summary line
    yield pool
    pool.release()


def _engine_fixture(profile: EngineProfile):
    @pytest.fixture(scope="session", name=profile.fixture)
    def engine(engine_pool) -> EngineHandle:
        return EngineHandle(engine_pool, profile)

    return engine


def _server_fixture(profile):
    @pytest.fixture(name=profile.fixture)
    def server(engine_pool) -> str:
        """The base URL of the profile's server, started (and the live engine shut down) when first needed."""
        return engine_pool.server(profile)

    return server


for _profile in PROFILES:
    globals()[_profile.fixture] = _engine_fixture(_profile)
for _profile in SERVERS:
    globals()[_profile.fixture] = _server_fixture(_profile)


@pytest.fixture(scope="session")
def vanilla(request, vanilla_engine) -> VanillaReferences:
    """``vanilla(name) -> result`` of the reference ``name`` of ``profiles.VANILLA_REFERENCES``."""

    def declared() -> set[str]:
        marks = (m for item in request.session.items for m in item.iter_markers("vanilla"))
        return {name for m in marks for name in m.args}

    return VanillaReferences(vanilla_engine, VANILLA_REFERENCES, declared)


@pytest.fixture(name=STARTUP_FIXTURE)
def engine_startup_error(engine_pool):
    """``(profile) -> EngineStartError | None``: why the profile's engine refused to start (``.error``: what
    ``LLM(...)`` raised; ``.log``: its causes, traceback and the host's output), from a short-lived host."""
    return engine_pool.startup_error


@pytest.fixture(name=OWN_PROCESSES_FIXTURE)
def no_shared_engine(engine_pool) -> None:
    """For a test that starts its own engine or server processes (``declab serve`` with its defaults, process
    lifetime): the session's live engine or server is shut down first, so that two engines never run side by side.
    These tests run last."""
    engine_pool.release()


# -- markers and order --------------------------------------------------------------------------------------------


def pytest_configure(config):
    # `core`, `engine` and `server` are declared in pyproject.toml.
    config.addinivalue_line(
        "markers", "vanilla(*names): the vanilla references (profiles.VANILLA_REFERENCES) the test reads")

_ENGINE_RANK = {p.fixture: i + 1 for i, p in enumerate(PROFILES)}
_STARTUP_RANK = len(PROFILES) + 1
_SERVER_RANK = {p.fixture: _STARTUP_RANK + 1 + i for i, p in enumerate(SERVERS)}
_OWN_PROCESSES_RANK = _STARTUP_RANK + 1 + len(SERVERS)


def _rank(item) -> tuple[tuple[int, int], str]:
    """((group, first), kind). Group 0 is core; an engine test goes with the last profile (profiles.py order) it
    uses, and within a group the tests that also use an earlier profile (the vanilla references) come first, while
    that engine may still be alive."""
    names = set(getattr(item, "fixturenames", ()))
    if OWN_PROCESSES_FIXTURE in names:
        return (_OWN_PROCESSES_RANK, _OWN_PROCESSES_RANK), "engine"
    servers = [_SERVER_RANK[n] for n in names if n in _SERVER_RANK]
    if servers:
        return (max(servers), min(servers)), "server"
    engines = [_ENGINE_RANK[n] for n in names if n in _ENGINE_RANK]
    if STARTUP_FIXTURE in names:
        engines.append(_STARTUP_RANK)
    if engines:
        return (max(engines), min(engines)), "engine"
    return (0, 0), "core"


_GROUPS: dict[str, str] = {}  # test id -> group (shards.py)
_DURATIONS: dict[str, float] = {}  # group -> seconds this session
_RANKED = {**{p.fixture: p for p in PROFILES}, **{p.fixture: p for p in SERVERS}}
_RANK_FIXTURE = {rank: fixture for fixture, rank in {**_ENGINE_RANK, **_SERVER_RANK}.items()}
_RANK_FIXTURE[_STARTUP_RANK] = STARTUP_FIXTURE


def _group(item, rank: tuple[int, int], kind: str) -> tuple[str, bool]:
    """(the item's group for shards.py, whether the group needs the whole machine)."""
    if rank[0] == _OWN_PROCESSES_RANK:
        return "own_processes", True
    if rank[0] == 0:
        return f"{kind}:{item.path.name}", False
    fixture = _RANK_FIXTURE[rank[0]]
    profile = _RANKED.get(fixture)
    if isinstance(profile, EngineProfile):
        exclusive = profile.engine_kwargs.get("tensor_parallel_size", 1) > 1
    else:
        exclusive = profile is not None and ("|" in (profile.env.get("VLLM_CPU_OMP_THREADS_BIND") or "")
                                             or "--data-parallel-size" in profile.args)
    return fixture, exclusive


def pytest_addoption(parser):
    parser.addoption("--declab-shard", default=None,
                     help="run one shard of the session: 'i/n' or 'exclusive' (tests/shards.py; make test)")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so the markers set here count
def pytest_collection_modifyitems(config, items):
    ranks, groups, kinds, exclusive = {}, {}, {}, set()
    for item in items:
        rank, kind = _rank(item)
        if kind == "core" and (item.get_closest_marker("engine") or item.get_closest_marker("server")):
            kind = "engine"
        item.add_marker(kind)
        ranks[item.nodeid] = rank
        group, alone = _group(item, rank, kind)
        groups[item.nodeid] = group
        kinds[group] = kind
        if alone:
            exclusive.add(group)
    items.sort(key=lambda it: ranks[it.nodeid])  # stable: file order within a rank
    _GROUPS.update(groups)
    spec = config.getoption("--declab-shard")
    if spec is None:
        return
    try:
        shard = shards.parse(spec)
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    if shard == shards.EXCLUSIVE:
        keep = exclusive
    else:
        index, count = shard
        shared = {g: k for g, k in kinds.items() if g not in exclusive}
        keep = {g for g, s in shards.assign(shared, count, shards.recorded()).items() if s == index}
    kept = [it for it in items if groups[it.nodeid] in keep]
    config.hook.pytest_deselected(items=[it for it in items if groups[it.nodeid] not in keep])
    items[:] = kept


def pytest_runtest_logreport(report):
    """Each group's time (set-up, call, tear-down: engine starts included), for shards.write_timings."""
    group = _GROUPS.get(report.nodeid)
    if group is not None:
        _DURATIONS[group] = _DURATIONS.get(group, 0.0) + report.duration


def pytest_sessionfinish(session):
    shards.write_timings(_DURATIONS)


def pytest_terminal_summary(terminalreporter):
    pool = getattr(terminalreporter.config, "_declab_pool", None)
    if pool and pool.starts:
        terminalreporter.write_line("engine starts: " + ", ".join(f"{n} {s:.0f}s" for n, s in pool.starts))
