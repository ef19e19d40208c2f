"""The ``vllm.general_plugins`` entry point of vllm-decoding-lab (``declab``).

vLLM calls ``register()`` once in every process it starts (API server / front-end, engine core, each worker, the
model-inspection subprocess). It must be idempotent and cheap:

* ``DECLAB_DIE_WITH_PARENT=1`` (set by ``declab serve`` and declab's benchmark children): this process and the ones it
  forks die with their parent (``lifetime.py``; no vLLM code patched). Checked first, whatever the plugins.
* ``DECLAB_PLUGINS`` unset or empty: return at once. Nothing is imported beyond this module, nothing registered,
  nothing patched -- unless ``DECLAB_VLLM_FIXES=1`` asks for the fixes of vLLM itself alone (below), with nothing
  else.
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
    if os.environ.get("DECLAB_DIE_WITH_PARENT") == "1":
        from declab.integrations import lifetime

        lifetime.arm_if_requested()
    value = os.environ.get("DECLAB_PLUGINS", "").strip()
    if not value:
        if os.environ.get("DECLAB_VLLM_FIXES") == "1" and _done_for != "":
            _apply_vllm_fixes_alone()
        return
    if _done_for == value:
        return

    from declab.integrations import registry
    from declab.integrations.version import check_vllm_version
    from declab.integrations.sdk import apply_patches
    from declab.patches import VLLM_FIXES

    names = registry.parse_selection(value)
    check_vllm_version()
    carry_to_ray_workers()
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
    if any(s.params for s in specs):
        # Per-request arguments (of a logits method or of a proposer such as contrastive search) keep their JSON
        # types over HTTP: booleans are not narrowed to 0 / 1 before admission sees them.
        needed += ["xargs_json_types_completion", "xargs_json_types_chat"]
    if any(s.logits is not None or s.proposer is not None for s in specs):
        needed.append("declab_stat_logger")  # declab:* metrics on /metrics (integrations/stat_logger.py)
    if any(s.logits is not None and s.logits.companions for s in specs):
        needed += ["prompt_rendering", "scheduler_stats_field", "request_groups"]
    if any(s.logits is not None and s.logits.input_embeddings for s in specs):
        needed.append("row_input_embeddings")
    if any(s.logits is not None and s.logits.bundled_completions for s in specs):
        needed += ["bundled_completions", "bundled_completions_worker"]
    for s in specs:
        needed.extend(p for p in s.patches if p not in needed)
    applied = apply_patches(needed)
    _done_for = value
    logger.info(
        "declab: plugins %s enabled in pid %d; patches applied: %s", ",".join(names), os.getpid(), applied or "none"
    )


def _apply_vllm_fixes_alone() -> None:
    """``DECLAB_VLLM_FIXES=1`` with no plugin: the version check and ``VLLM_FIXES``, nothing else."""
    global _done_for
    from declab.integrations.sdk import apply_patches
    from declab.integrations.version import check_vllm_version
    from declab.patches import VLLM_FIXES

    check_vllm_version()
    carry_to_ray_workers()
    applied = apply_patches(list(VLLM_FIXES))
    _done_for = ""
    logger.info("declab: no plugin selected; fixes of vLLM applied in pid %d: %s", os.getpid(), applied or "none")


RAY_PREFIXES_ENV = "VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY"
DECLAB_PREFIX = "DECLAB_"


def carry_to_ray_workers() -> None:
    """Have vLLM's Ray backend copy ``DECLAB_*`` (the selection, deprecated settings variables) to the workers and
    engine cores it starts, as it copies ``VLLM_*``: a Ray worker on another node has only the environment of its
    ``ray start`` plus what vLLM copies, and a worker without ``DECLAB_PLUGINS`` would run without the selected
    plugins' worker patches. vLLM's own setting, extended (never replaced); read when the executor starts, after
    this entry point has run in that process (``EngineCore`` loads plugins first)."""
    prefixes = [p.strip() for p in os.environ.get(RAY_PREFIXES_ENV, "").split(",") if p.strip()]
    if DECLAB_PREFIX not in prefixes:
        os.environ[RAY_PREFIXES_ENV] = ",".join([*prefixes, DECLAB_PREFIX])
