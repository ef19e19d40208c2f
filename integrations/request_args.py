"""Per-request plugin arguments: how a request selects a logits-level plugin, and their admission-time validation.

Python (offline ``LLM`` or ``SamplingParams``)::

    SamplingParams(extra_args={"declab": {"method": NAME, "alpha": 0.2}})   # NAME: a selected plugin

OpenAI-compatible server: ``vllm_xargs`` only carries flat scalar values, so the same arguments are written as
dotted keys::

    {"vllm_xargs": {"declab.method": NAME, "declab.alpha": 0.2}}

Both forms resolve to the same ``DeclabRequest``. Requests without ``declab`` arguments are untouched.
No vLLM import here: the front-end validator and the worker-side router both call ``parse_request_args``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from declab.integrations import registry
from declab.integrations.sdk.params import resolve_params

KEY = "declab"
_PREFIX = KEY + "."


@dataclass(frozen=True)
class DeclabRequest:
    spec: registry.PluginSpec
    params: dict[str, Any]


def _refuse_misspelt_keys(extra_args: Mapping[str, Any]) -> None:
    """A key that is ``declab`` / ``declab.*`` but for its capitalisation would be silently ignored: refuse it."""
    for key in extra_args:
        if not isinstance(key, str):
            continue
        low = key.lower()
        if (low == KEY or low.startswith(_PREFIX)) and not (key == KEY or key.startswith(_PREFIX)):
            raise ValueError(f"{key} is not a declab argument (they are lower-case): did you mean {low}?")


def _collect(extra_args: Mapping[str, Any]) -> dict[str, Any] | None:
    _refuse_misspelt_keys(extra_args)
    nested = extra_args.get(KEY)
    flat = {k[len(_PREFIX):]: v for k, v in extra_args.items() if k.startswith(_PREFIX)}
    if nested is None and not flat:
        return None
    if nested is not None and flat:
        raise ValueError(f"give declab arguments either as extra_args['{KEY}'] or as '{KEY}.*' keys, not both")
    if nested is None:
        return flat
    if not isinstance(nested, Mapping):
        raise ValueError(f"{KEY} must be an object like {{'method': NAME, ...}}, got {type(nested).__name__}")
    return dict(nested)


def requested_method(extra_args: Mapping[str, Any] | None) -> Any:
    """The ``method`` a request's declab arguments name, unvalidated (None if none); for labelling a rejection."""
    if not extra_args:
        return None
    nested = extra_args.get(KEY)
    if isinstance(nested, Mapping):
        return nested.get("method")
    return extra_args.get(_PREFIX + "method")


def parse_request_args(
    extra_args: Mapping[str, Any] | None, *, selected: tuple[str, ...] | None = None
) -> DeclabRequest | None:
    """Validate a request's declab arguments. Returns None for a request that names no plugin.

    Raises ``ValueError`` naming the offending parameter (vLLM reports it as HTTP 400).
    """
    if not extra_args:
        return None
    args = _collect(extra_args)
    if args is None:
        return None
    method = args.pop("method", None)
    if method is None and any(k.lower() == "method" for k in args if isinstance(k, str)):
        given = next(k for k in args if isinstance(k, str) and k.lower() == "method")
        raise ValueError(f"{KEY}.{given} is not a parameter: did you mean {KEY}.method?")
    if method is None:
        raise ValueError(f"{KEY}.method is required (one of: {', '.join(_logits_plugins())})")
    if not isinstance(method, str) or method not in registry.all_specs():
        raise ValueError(f"{KEY}.method: unknown method {method!r} (known: {', '.join(_logits_plugins())})")
    spec = registry.get_spec(method)
    # A proposer that declares per-request parameters (e.g. a threshold) is named the same way; its proposer reads
    # them from the request's extra_args in the worker (``DeclabRequest.spec.logits`` is None for it).
    if spec.hook != registry.HOOK_LOGITS and not (spec.hook == registry.HOOK_PROPOSER and spec.params):
        raise ValueError(
            f"{KEY}.method: {method!r} is a {spec.hook} plugin, not a per-request logits method; "
            "see `declab list` for how to enable it"
        )
    selected = registry.selected_plugins() if selected is None else selected
    if method not in selected:
        raise ValueError(
            f"{KEY}.method: {method!r} is not enabled on this engine "
            f"({registry.PLUGINS_ENV}={','.join(selected) or '<unset>'}); add it to {registry.PLUGINS_ENV}"
        )
    params = resolve_params(spec.params, args, prefix=KEY)
    spec.validate_request(params)
    return DeclabRequest(spec, params)


def check_proposer_request(request: DeclabRequest | None, sampling_params: Any, vllm_config: Any = None) -> None:
    """A proposer method's own admission check (``ProposerHook.check_request``), if it declares one."""
    hook = request.spec.proposer if request is not None else None
    if hook is not None and hook.check_request:
        from declab.integrations.sdk.spec import load_object

        load_object(hook.check_request)(sampling_params, request.params, vllm_config)


def _logits_plugins() -> list[str]:
    return sorted(n for n, s in registry.all_specs().items() if s.hook == registry.HOOK_LOGITS)
