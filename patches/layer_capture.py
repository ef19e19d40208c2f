"""The layer-capture seam: the served model's lower-layer states at every sampled position, for early-exit logits.

Why: layer-contrast decoders (LOL, paper 29; DoLa-style contrast) need, at every decode step, what a lower layer of
the served model predicts: its residual stream at the sampled position through the final norm and the vocabulary
projection. vLLM 0.32 runs the whole decoder stack in one ``model.forward``, keeps only the last layer's output and
gives a logits processor nothing but the final logits (its ``aux_hidden_states`` path serves EAGLE-3 drafters only,
is configured per model class and returns whole-batch tensors to the drafter). The alternatives are a plugin model
class per architecture (re-registering ``LlamaForCausalLM``) or a second forward pass per step.

How: wraps ``GPUModelRunner.execute_model`` (the CPU runner inherits it) to register, once per runner, torch forward
hooks on its model's decoder layers (``declab.integrations.sdk.early_exit.capture_hooks``): the first layer's hook
reads the step's sampled positions (``query_start_loc[1:num_reqs + 1] - 1``, the V1 runner's ``logits_indices``
without speculative decoding), and the hook of each decoder layer copies its output stream
(``hidden + residual``) at those positions into ``early_exit.StepCapture`` (``[requests, hidden]`` per layer). The
router tells each ``RowProcessor`` its batch row (``batch_row``); the processor asks ``early_exit.logits(row, k)``,
which projects that one row with the model's own ``model.norm`` and ``compute_logits`` (tied embeddings, vocabulary
padding and logit scaling as vLLM does them). ``execute_model`` itself runs unchanged. Refused at the first step
with a ``ValueError`` naming the setting: speculative decoding (several sampled positions per request),
``enforce_eager=False`` (hooks do not run inside captured graphs), pipeline parallelism, a model without
``model.layers`` / ``model.norm``. Applied only when a selected plugin declares it (``PluginSpec.patches``).

vLLM version: 0.32.0 (``vllm/v1/worker/gpu_model_runner.py::GPUModelRunner.execute_model`` and ``_prepare_inputs``'s
``logits_indices = query_start_loc[1:] - 1``; ``vllm/model_executor/models/llama.py::LlamaDecoderLayer.forward``
returning ``(hidden_states, residual)``).

Removal plan: vLLM's "return hidden states / intermediate layer outputs" work (RFC "expose hidden states to logits
processors"; the ``aux_hidden_states`` layers of EAGLE-3 made configurable) would hand a logits processor the
layers it names; then read them there and delete this file. Check: ``tests/test_lol_engine.py`` (early-exit logits
against transformers' ``hidden_states``).
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk import DeclabPatch

_INSTALLED_ATTR = "_declab_layer_capture"


def refusal(runner: Any) -> str | None:
    """Why this runner's model cannot be captured, or None."""
    if runner.speculative_config is not None:
        return "layer capture (early-exit logits) does not work with speculative_config (one position per request)"
    if not runner.model_config.enforce_eager:
        return "layer capture (early-exit logits) needs enforce_eager=True (hooks do not run in captured graphs)"
    if runner.parallel_config.pipeline_parallel_size > 1:
        return "layer capture (early-exit logits) does not work with pipeline_parallel_size > 1"
    stack = getattr(runner.get_model(), "model", None)
    if stack is None or not hasattr(stack, "layers") or not hasattr(stack, "norm"):
        return f"layer capture: model {type(runner.get_model()).__name__} has no model.layers / model.norm"
    return None


def install(runner: Any) -> None:
    """Register the capture hooks on ``runner``'s model (once)."""
    import torch

    from declab.integrations.sdk import early_exit

    why = refusal(runner)
    if why:
        raise ValueError(why)
    model = runner.get_model()
    stack = model.model
    layers = list(stack.layers)
    vocab = runner.model_config.get_vocab_size()

    @torch.inference_mode()
    def project(states: torch.Tensor) -> torch.Tensor:
        return model.compute_logits(stack.norm(states))

    def rows_of_step():
        n = runner.input_batch.num_reqs
        if n <= 0:
            return None
        return (runner.query_start_loc.cpu[1 : n + 1] - 1).to(torch.long)

    capture = early_exit.StepCapture(num_layers=len(layers), vocab_size=vocab, project=project,
                                     model_path=str(runner.model_config.model))
    for layer, hook in zip(layers, early_exit.capture_hooks(capture, rows_of_step, len(layers))):
        layer.register_forward_hook(hook)
    early_exit.install(capture)
    setattr(runner, _INSTALLED_ATTR, True)


class LayerCapturePatch(DeclabPatch):
    name = "layer_capture"
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        original = target.execute_model

        def execute_model(self, *args, **kwargs):
            if not self.__dict__.get(_INSTALLED_ATTR):
                install(self)
            return original(self, *args, **kwargs)

        execute_model.__wrapped__ = original
        return {"execute_model": execute_model}
