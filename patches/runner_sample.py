"""Runner-sample seam: any number of declab patches act around ``GPUModelRunner._sample``.

Why: two declab patches need the model runner's sampling step: the CPU fix for seeded requests under chunked prefill
(``seeded_chunked_prefill_cpu``: keep the generator state of rows whose token vLLM discards) and the runner-to-proposer
feed (``runner_feeds_proposer``: keep a reference to the step's logits for the proposer). Each wrapping ``_sample``
itself would be a ``PatchConflict`` as soon as both are applied (a plugin selected and a declab proposer running).

How: wraps ``GPUModelRunner._sample`` (the CPU runner inherits it) once. A listener is a function
``listener(runner, logits, spec_decode_metadata)`` returning a context manager, entered around the original call in
subscription order (``subscribe``, idempotent). With no listener the original runs unchanged.

vLLM version: 0.32.0 (``vllm/v1/worker/gpu_model_runner.py::GPUModelRunner._sample``).

Removal plan: goes when its last listener goes (see theirs).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

from declab.integrations.sdk import DeclabPatch

SampleListener = Callable[[Any, Any, Any], ContextManager[Any]]
_LISTENERS: list[SampleListener] = []


def subscribe(listener: SampleListener) -> None:
    """Open the seam (once per process) and add ``listener`` (once)."""
    RunnerSamplePatch.apply()
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


class RunnerSamplePatch(DeclabPatch):
    name = "runner_sample"
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        original = target._sample

        def _sample(self, logits, spec_decode_metadata, *args, **kwargs):
            if not _LISTENERS:
                return original(self, logits, spec_decode_metadata, *args, **kwargs)
            with contextlib.ExitStack() as stack:
                for listener in _LISTENERS:
                    stack.enter_context(listener(self, logits, spec_decode_metadata))
                return original(self, logits, spec_decode_metadata, *args, **kwargs)

        _sample.__wrapped__ = original
        return {"_sample": _sample}
