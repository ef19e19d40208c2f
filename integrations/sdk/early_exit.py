"""Early-exit logits of the served model: what its lower layers would predict, per request, at every decode step.

Layer-contrast decoders (DoLa's premature layer, LOL's lower layer) compare the model's final next-token distribution
with the one read off a lower layer: the residual stream after ``k`` decoder layers, put through the model's final
norm and vocabulary projection (``k`` = HF's ``hidden_states[k]``; ``k = num_layers`` would be the final logits).
vLLM 0.32 computes only the last layer's logits and hands a logits processor nothing else, so the layer-capture
seam (``declab.patches.layer_capture``, applied when a plugin declares it in ``PluginSpec.patches``) keeps, at every
forward, each decoder layer's output at the positions vLLM samples from (one row per request: ``[requests, hidden]``
per layer, a copy, a few KB) in this module's ``StepCapture``. A ``RowProcessor`` then asks for its own row:

    early_exit.logits(self.batch_row, layer)     # float32 [vocab]; batch_row is set by the router every step

The projection runs only for the rows and layers asked for (one ``[hidden] x [hidden, vocab]`` product each).
Limits: the V1 runner without speculative decoding (one sampled position per request), eager mode (forward hooks do
not run inside captured CUDA graphs / compiled graphs), the last pipeline stage; the seam refuses other engines at
start-up with an error naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class StepCapture:
    """The current step's lower-layer states and how to project them (filled in the worker by the seam)."""

    num_layers: int
    vocab_size: int
    project: Callable[[torch.Tensor], torch.Tensor]  # [n, hidden] residual stream -> [n, vocab] float32 logits
    model_path: str = ""  # the served model's folder (a plugin's companion model may be built from its weights)
    rows: torch.Tensor | None = None  # token positions of the sampled rows in this forward (None: not a real step)
    layers: dict[int, torch.Tensor] = field(default_factory=dict)  # k -> [rows, hidden], stream after k layers

    def logits(self, batch_row: int, layer: int) -> torch.Tensor:
        if not 1 <= layer < self.num_layers:
            raise ValueError(f"early-exit layer must be in 1..{self.num_layers - 1}, got {layer}")
        states = self.layers.get(layer)
        if states is None or not 0 <= batch_row < states.shape[0]:
            raise RuntimeError(f"layer capture: no state of layer {layer} for batch row {batch_row} this step")
        return self.project(states[batch_row : batch_row + 1])[0, : self.vocab_size].float()


_CAPTURE: StepCapture | None = None


def install(capture: StepCapture) -> None:
    """Called by the layer-capture seam in the worker once the model is loaded."""
    global _CAPTURE
    _CAPTURE = capture


def current() -> StepCapture:
    if _CAPTURE is None:
        raise RuntimeError("layer capture is not installed in this process: the plugin must declare the "
                           "'layer_capture' patch in its PluginSpec.patches")
    return _CAPTURE


def available() -> bool:
    return _CAPTURE is not None


def logits(batch_row: int, layer: int) -> torch.Tensor:
    """Early-exit logits (float32 ``[vocab]``) of ``batch_row`` after ``layer`` decoder layers, this step."""
    return current().logits(batch_row, layer)


def num_layers() -> int:
    return current().num_layers


def capture_hooks(capture: StepCapture, rows_of_step: Callable[[], torch.Tensor | None],
                  num_layers: int) -> list[Callable]:
    """The forward hooks the seam registers, one per decoder layer: layer ``i`` keeps the stream after ``i + 1``
    layers at the step's sampled positions; the first layer's hook also reads those positions (``rows_of_step``) and
    starts a new step. (A hook on the decoder stack itself does not run: vLLM's compile decorator calls its
    ``forward`` directly.) A layer's output is ``(hidden, residual)`` (vLLM adds the residual inside the next norm)
    or a tensor."""

    def after_layer(k: int):
        def hook(module, args, output):
            if k == 1:
                capture.rows = rows_of_step()
                capture.layers.clear()
            rows = capture.rows
            if rows is None or k >= capture.num_layers:
                return None
            hidden, residual = output if isinstance(output, tuple) else (output, None)
            if rows.numel() and int(rows.max()) >= hidden.shape[0]:
                return None
            stream = hidden[rows] if residual is None else hidden[rows] + residual[rows]
            capture.layers[k] = stream.detach().clone()
            return None

        return hook

    return [after_layer(i + 1) for i in range(num_layers)]
