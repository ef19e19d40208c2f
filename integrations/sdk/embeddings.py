"""Two seams for methods that decode several sequences inside ONE engine row (Superposed Decoding, paper 30, first).

Row input embeddings (``declab.patches.row_input_embeddings``, worker): a ``RowProcessor`` that also implements
``RowInputEmbeddings`` gives the input embedding of its row at the positions it chooses (e.g. a weighted mix of
several tokens' embeddings); every other position, and every other row, gets vLLM's own token embedding.

Bundled completions (``declab.patches.bundled_completions``, worker + engine core): a request sent with ``n``
completions (vLLM's parallel sampling fans it out into ``n`` child requests) is decoded by ONE row, child 0's; the
other children never enter the scheduler. The row's processor implements ``BundledCompletions``: after every step
the worker ships its current completions to the engine core, and when the row finishes, child ``i`` receives
completion ``i`` (tokens and finish reason) in one piece; the row's own per-step tokens never reach the client.

Declared in the plugin's ``LogitsHook`` (``input_embeddings=True``, ``bundled_completions=True``); the entry point
applies the seams only then. Plain contract: torch only, no vLLM import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

STATE_ATTR = "_declab_row_state"  # on the runner's per-request state: survives preemption, freed with the request
COMPLETIONS_ATTR = "declab_completions"  # on ModelRunnerOutput: {request id: [Completion, ...]}


@dataclass(frozen=True)
class Completion:
    """One of a bundled request's completions: generated token ids and why it ended (``"stop"`` / ``"length"``)."""

    token_ids: tuple[int, ...]
    finish_reason: str


class RowInputEmbeddings:
    """Mixin for a ``RowProcessor`` whose row takes plugin-given input embeddings at some positions.

    Before each forward the seam calls ``attach(store)`` with a per-request dict that lives as long as the request
    (across preemption; the router makes a new processor when a preempted request comes back), then
    ``input_embeddings(first_position, count, embed)`` for the positions the row runs this step (0 = the first
    prompt token). ``embed(token_ids) -> [n, hidden]`` is the model's own embedding. Return ``[count, hidden]`` (rows
    to keep may be ``embed`` of the row's tokens) or None for "vLLM's token embeddings".
    """

    def attach(self, store: dict[str, Any]) -> None:  # pragma: no cover - default: stateless
        pass

    def input_embeddings(self, first_position: int, count: int,
                         embed: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
        raise NotImplementedError


class BundledCompletions:
    """Mixin for a ``RowProcessor`` whose one row decodes all ``n`` completions of its request."""

    def completions(self) -> list[Completion] | None:
        """The request's completions so far (best first, exactly ``n`` once any exist), or None before the first."""
        raise NotImplementedError


def check_bundled_count(sampling_params: Any, count: int, param: str, method: str) -> None:
    """Admission: a bundled request's ``n`` (the completions vLLM returns) must equal its count parameter."""
    n = getattr(sampling_params, "n", 1)
    if n != count:
        raise ValueError(f"declab.{param} must equal n (the number of completions vLLM returns) for "
                         f"declab.method={method!r}: got {param}={count}, n={n}")


def child_index(request_id: str) -> tuple[int, str] | None:
    """``(index, parent id)`` of a parallel-sampling child request id (vLLM 0.32: ``f"{index}_{parent}"``)."""
    head, sep, parent = request_id.partition("_")
    if not sep or not head.isdigit() or not parent:
        return None
    return int(head), parent
