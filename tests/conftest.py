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


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so the markers set here count
def pytest_collection_modifyitems(config, items):
    ranks = {}
    for item in items:
        rank, kind = _rank(item)
        if kind == "core" and (item.get_closest_marker("engine") or item.get_closest_marker("server")):
            kind = "engine"
        item.add_marker(kind)
        ranks[item.nodeid] = rank
    items.sort(key=lambda it: ranks[it.nodeid])  # stable: file order within a rank


def pytest_terminal_summary(terminalreporter):
    pool = getattr(terminalreporter.config, "_declab_pool", None)
    if pool and pool.starts:
        terminalreporter.write_line("engine starts: " + ", ".join(f"{n} {s:.0f}s" for n, s in pool.starts))
