"""Where models and evaluation data are found.

The package bundles ``decoder-29m`` (29M-parameter Llama, float16, 57 MB) so that the main job runs on a fresh
machine with no model hub. Tests and benchmarks prefer the project's shared fixture copy at
``../shared/fixtures/decoder-29m`` (beside the checkout) when it is there; ``DECLAB_SHARED`` overrides that folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from declab.integrations.sdk.draft_settings import DRAFT_MODEL_ENV

BUNDLED_MODEL = Path(__file__).resolve().parent / "default_model" / "decoder-29m"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    env = os.environ.get("DECLAB_SHARED")
    candidate = Path(env) if env else _REPO_ROOT.parent / "shared"
    return candidate if candidate.is_dir() else None


def fixture_model() -> Path | None:
    shared = shared_dir()
    path = shared / "fixtures" / "decoder-29m" if shared else None
    return path if path and (path / "config.json").is_file() else None


def default_draft_model() -> str | None:
    """The draft model folder a draft-model proposer uses when its ``draft_model`` setting is empty:
    ``DECLAB_DRAFT_MODEL``, else the shared fixture ``fixtures/draft-5m``, else None. (The package cannot bundle a
    draft: its tracked files must stay under 64 MiB and decoder-29m takes 59 MB.)"""
    env = os.environ.get(DRAFT_MODEL_ENV, "").strip()
    if env:
        return env
    shared = shared_dir()
    path = shared / "fixtures" / "draft-5m" if shared else None
    return str(path) if path and (path / "config.json").is_file() else None


def default_model() -> str:
    """The shared fixture if present, else the bundled copy (same weights)."""
    return str(fixture_model() or BUNDLED_MODEL)



def eval_file(*parts: str) -> Path | None:
    shared = shared_dir()
    path = shared.joinpath("eval", *parts) if shared else None
    return path if path and path.exists() else None
