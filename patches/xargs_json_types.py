"""Per-request arguments keep their JSON type over HTTP: a ``declab.*`` boolean stays a boolean.

Why: the OpenAI server declares ``vllm_xargs`` as ``dict[str, str | int | float | list[...]]``; pydantic narrows a
JSON ``true`` / ``false`` to ``1`` / ``0`` before any plugin sees it (vLLM says so itself in
``vllm/utils/diffusion.py``). So ``"declab.alpha": true`` ran with alpha 1.0 over HTTP while the same request is
refused offline, where ``extra_args`` keeps Python's ``True``; and a boolean parameter could not be given over HTTP
at all (``1`` is not a boolean).

How: wraps ``OpenAIServingCompletion.create_completion`` and ``OpenAIServingChat.create_chat_completion`` (front-end,
before the request becomes ``SamplingParams``). For every ``declab.*`` key of ``vllm_xargs`` whose value in the
request's JSON body (``await raw_request.json()``: Starlette keeps the body FastAPI already parsed) is a boolean, the
boolean is put back. Admission (``ParamSpec.validate``) then sees what the client sent, as offline: a boolean given
for a number is an HTTP 400 naming the parameter. Other keys of ``vllm_xargs`` are left as vLLM made them. Applying
it imports the two serving modules (0.24 s measured after ``import vllm``) in each process where a selected plugin
declares per-request parameters (a logits method, or a proposer such as contrastive search: found by the fuzz
suite, ``declab.alpha: true`` ran with alpha 1.0 on a contrastive search server); only the API server calls them.

vLLM version: 0.32.0 (``vllm/entrypoints/openai/completion/serving.py``, ``chat_completion/serving.py``).

Removal plan: when vLLM's ``vllm_xargs`` schema accepts ``bool`` (a one-word change upstream), delete this patch.
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk import DeclabPatch

_PREFIX = "declab."


async def restore_json_booleans(request: Any, raw_request: Any) -> None:
    """Put the JSON booleans of ``declab.*`` keys back into ``request.vllm_xargs`` (in place)."""
    xargs = getattr(request, "vllm_xargs", None)
    if not xargs or raw_request is None or not any(k.lower().startswith(_PREFIX) for k in xargs):
        return
    try:
        body = await raw_request.json()
    except Exception:  # noqa: BLE001 - no JSON body to compare with: leave the request as vLLM parsed it
        return
    sent = body.get("vllm_xargs") if isinstance(body, dict) else None
    if not isinstance(sent, dict):
        return
    for key, value in sent.items():
        if isinstance(value, bool) and key in xargs and key.lower().startswith(_PREFIX):
            xargs[key] = value


def _wrap(original):
    async def create(self, request, raw_request=None, *args, **kwargs):
        await restore_json_booleans(request, raw_request)
        return await original(self, request, raw_request, *args, **kwargs)

    create.__wrapped__ = original
    return create


class CompletionXargsPatch(DeclabPatch):
    name = "xargs_json_types_completion"
    target = "vllm.entrypoints.openai.completion.serving:OpenAIServingCompletion"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        return {"create_completion": _wrap(target.create_completion)}


class ChatXargsPatch(DeclabPatch):
    name = "xargs_json_types_chat"
    target = "vllm.entrypoints.openai.chat_completion.serving:OpenAIServingChat"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        return {"create_chat_completion": _wrap(target.create_chat_completion)}

