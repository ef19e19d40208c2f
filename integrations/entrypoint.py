"""The ``vllm.general_plugins`` entry point of vllm-decoding-lab (``declab``).

vLLM calls ``register()`` once in every process it starts (API server / front-end, engine core, each worker, the
model-inspection subprocess). It must be idempotent and cheap:

* ``DECLAB_PLUGINS`` unset or empty: return at once. Nothing is imported beyond this module, nothing registered,
  nothing patched.
* Otherwise: validate the names, check the vLLM version against the pin (``DECLAB_SKIP_VERSION_CHECK=1`` to
  override), and apply exactly the seams and patches the selected plugins need (from their specs; no plugin is
  named here), plus the fixes of vLLM itself (``declab.patches.VLLM_FIXES``, e.g. seeded requests under chunked
  prefill on CPU).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("declab")

_done_for: str | None = None


def register() -> None:
    global _done_for
    value = os.environ.get("DECLAB_PLUGINS", "").strip()
    if not value or _done_for == value:
        return

    from declab.integrations import registry
    from declab.integrations.version import check_vllm_version
    from declab.integrations.sdk import apply_patches
    from declab.patches import VLLM_FIXES

    names = registry.parse_selection(value)
    check_vllm_version()
    specs = [registry.get_spec(n) for n in names]
    # The fixes of vLLM, then the seams the selected plugins need (from what their specs declare), then the
    # plugins' own patches.
    needed = [*VLLM_FIXES, "engine_args"]
    if any(s.logits is not None for s in specs):
        # Logits-level plugins implement the V1 runner's logits-processor interface. On GPU vLLM 0.32 may pick
        # Model Runner V2; prefer V1 unless the user chose explicitly (then the engine-args seam explains the clash).
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    else:  # no router: the request's declab arguments are validated by a seam of their own
        needed.append("declab_args_admission")
    if any(s.logits is not None and s.logits.companions for s in specs):
        needed += ["prompt_rendering", "request_groups"]
    for s in specs:
        needed.extend(p for p in s.patches if p not in needed)
    applied = apply_patches(needed)
    _done_for = value
    logger.info(
        "declab: plugins %s enabled in pid %d; patches applied: %s", ",".join(names), os.getpid(), applied or "none"
    )
