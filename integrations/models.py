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


SHARED_DRAFT = "draft-5m"  # the shared fixture fixtures/draft-5m (trained on 256-token windows)
# Drafts the package ships as a delta on the shared draft (``sdk.lora_delta``; a full copy would not fit the
# repository's 64 MiB): name -> delta file. Each folder holds the delta and its model card.
BUNDLED_DRAFT_DELTAS = {
    "draft-5m-long": Path(__file__).resolve().parent / "default_model" / "draft-5m-long" / "delta.safetensors",
}
CACHE_ENV = "DECLAB_CACHE"  # where derived model folders are written (default ~/.cache/declab)


def shared_draft_model() -> str | None:
    """The shared fixture ``fixtures/draft-5m`` beside the repository, or None."""
    shared = shared_dir()
    path = shared / "fixtures" / SHARED_DRAFT if shared else None
    return str(path) if path and (path / "config.json").is_file() else None


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env) if env else Path.home() / ".cache" / "declab"


CACHE_DIGEST_CHARS = 12  # hex digits of the content hash in a merged folder's name: <name>-<digest>


def materialize_delta_model(base: str | Path, delta: Path, name: str) -> str:
    """A model folder = ``base`` with ``delta`` merged, written once under ``cache_dir()`` (named by the delta's and
    the base weights' hashes, so a new delta or base makes a new folder) and reused after. Written to a temporary
    folder and renamed into place, so concurrent processes never read a half-written folder."""
    import hashlib
    import shutil
    import tempfile

    import torch
    from safetensors.torch import save_file

    from declab.integrations.sdk.draft_model import load_folder_weights
    from declab.integrations.sdk.lora_delta import merge_delta

    base = Path(base)
    digest = hashlib.sha256(delta.read_bytes())
    for f in sorted(base.glob("*.safetensors")):
        digest.update(f.name.encode() + f.read_bytes())
    folder = cache_dir() / "models" / f"{name}-{digest.hexdigest()[:CACHE_DIGEST_CHARS]}"
    if (folder / "model.safetensors").is_file():
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        for f in base.iterdir():
            if f.is_file() and not f.name.endswith(".safetensors") and not f.name.endswith(".index.json"):
                shutil.copy2(f, tmp / f.name)
        merged = merge_delta(load_folder_weights(base, torch.float16), delta)  # as the shared draft is stored
        save_file({k: v.contiguous() for k, v in merged.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt", "base": str(base), "delta": str(delta)})
        try:
            tmp.rename(folder)
        except OSError:  # another process got there first: its folder is as good as ours
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def named_draft_model(name: str) -> str | None:
    """The folder of a draft known by name (``draft-5m``, or a bundled delta's name), None if its base is absent."""
    base = shared_draft_model()
    if name == SHARED_DRAFT or base is None:
        return base
    return materialize_delta_model(base, BUNDLED_DRAFT_DELTAS[name], name)


def draft_names() -> tuple[str, ...]:
    return (SHARED_DRAFT, *BUNDLED_DRAFT_DELTAS)


def draft_label(path: str | os.PathLike) -> str:
    """How a report names a draft folder: a known draft's name for its merged cache folder (``draft-5m-long`` for
    ``.../models/draft-5m-long-<hash>``), else the folder's name."""
    name = Path(path).name
    stem, _, digest = name.rpartition("-")
    hex_digest = len(digest) == CACHE_DIGEST_CHARS and all(c in "0123456789abcdef" for c in digest)
    return stem if stem in BUNDLED_DRAFT_DELTAS and hex_digest else name


def resolve_draft_model(value: str | None) -> str | None:
    """A draft setting's folder: empty -> ``default_draft_model()``; a known draft's name -> its folder; anything
    else is a folder path, returned as given."""
    value = (value or "").strip()
    if not value:
        return default_draft_model()
    if value in draft_names():
        return named_draft_model(value)
    return value


def default_draft_model() -> str | None:
    """The draft model folder a draft-model proposer uses when its ``draft_model`` setting is empty:
    ``DECLAB_DRAFT_MODEL`` (a folder or a known draft's name), else the shared fixture ``fixtures/draft-5m``, else
    None. (The package cannot bundle a whole draft: its tracked files must stay under 64 MiB and decoder-29m takes
    59 MB; ``draft-5m-long`` ships as a delta on the shared draft, see ``BUNDLED_DRAFT_DELTAS``.)"""
    env = os.environ.get(DRAFT_MODEL_ENV, "").strip()
    if env:
        return resolve_draft_model(env)
    return shared_draft_model()


def default_model() -> str:
    """The shared fixture if present, else the bundled copy (same weights)."""
    return str(fixture_model() or BUNDLED_MODEL)



def eval_file(*parts: str) -> Path | None:
    shared = shared_dir()
    path = shared.joinpath("eval", *parts) if shared else None
    return path if path and path.exists() else None
