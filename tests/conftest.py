"""Shared fixtures. Engine tests run vLLM in child processes (plugin selection is per process)."""

from __future__ import annotations

import os

import pytest

from declab.integrations.models import default_model, fixture_model


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
    # Tests that need plugins set DECLAB_PLUGINS for the child processes they start.
    monkeypatch.delenv("DECLAB_PLUGINS", raising=False)
    yield
