"""Engine adapters for Diverse Beam Search: an offline ``vllm.LLM`` and a running OpenAI-compatible server.

Both run the pure search of ``core.py`` as a front-end loop, like vLLM's own ``LLM.beam_search``: every step sends
one 1-token greedy request per live beam (all beams of all groups of all prompts in one batch) asking for the top
``2*beam_width`` log-probs, and expands the beams from them. Prefix caching keeps the repeated prompts cheap.
vLLM is imported lazily (only the offline adapter needs it); the HTTP adapter uses the standard library only.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Mapping, Sequence

from declab.plugins.diverse_beam.core import Beam, check_params, diverse_beam_search_batch

__all__ = ["Beam", "diverse_beam_search", "diverse_beam_search_http", "llm_next_logprobs"]


def _check_max_logprobs(limit: int | None, beam_width: int, where: str) -> None:
    if limit is not None and limit != -1 and 2 * beam_width > limit:
        raise ValueError(
            f"declab.beam_width={beam_width} needs 2*beam_width={2 * beam_width} log-probs per step, more than "
            f"{where} max_logprobs={limit}; lower beam_width or raise max_logprobs"
        )


# ------------------------------------------------------------------------------------------------- offline (LLM)


def llm_next_logprobs(llm: Any, num_logprobs: int):
    """``next_logprobs`` callback over ``llm.generate``: one batched call, greedy 1-token requests on token ids."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(max_tokens=1, logprobs=num_logprobs, temperature=0.0, detokenize=False)

    def next_logprobs(sequences: list[list[int]]) -> list[dict[int, float]]:
        outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False)
        result = []
        for out in outs:
            completion = out.outputs[0]
            if completion.finish_reason == "abort" or completion.logprobs is None:
                raise RuntimeError(f"engine request {out.request_id} returned no log-probs "
                                   f"(finish_reason={completion.finish_reason})")
            # Keep the engine's order (sampled token first, then by rank): it breaks ties like vLLM's beam search.
            result.append({int(t): lp.logprob for t, lp in completion.logprobs[0].items()})
        return result

    return next_logprobs


def _prompt_ids(tokenizer: Any, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer.encode(prompt))
    if isinstance(prompt, Mapping) and "prompt_token_ids" in prompt:
        return [int(t) for t in prompt["prompt_token_ids"]]
    if isinstance(prompt, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    raise ValueError(f"declab.prompts: each prompt must be a string, token ids or a TokensPrompt, got {prompt!r}")


def diverse_beam_search(
    llm: Any,
    prompts: Sequence[str | Sequence[int] | Mapping[str, Any]],
    *,
    beam_width: int,
    num_groups: int,
    diversity_penalty: float,
    max_tokens: int,
    length_penalty: float = 1.0,
    ignore_eos: bool = False,
    skip_special_tokens: bool = True,
) -> list[list[Beam]]:
    """Diverse beam search on a ``vllm.LLM``; per prompt, ``beam_width`` beams sorted by score (best first).

    ``prompts`` are strings (tokenized with the engine's tokenizer, special tokens added as vLLM does), token-id
    lists or ``TokensPrompt`` dicts. ``Beam.token_ids``/``Beam.text`` are the generated part only.
    ``num_groups=1, diversity_penalty=0`` returns what ``llm.beam_search`` returns.
    """
    p = check_params(beam_width=beam_width, num_groups=num_groups, diversity_penalty=diversity_penalty,
                     max_tokens=max_tokens, length_penalty=length_penalty, ignore_eos=ignore_eos)
    model_config = getattr(llm, "model_config", None)
    _check_max_logprobs(getattr(model_config, "max_logprobs", None), p["beam_width"], "the engine's")
    tokenizer = llm.get_tokenizer()
    token_prompts = [_prompt_ids(tokenizer, pr) for pr in prompts]
    results = diverse_beam_search_batch(
        token_prompts,
        llm_next_logprobs(llm, 2 * p["beam_width"]),
        eos_token_id=tokenizer.eos_token_id,
        **p,
    )
    for beams in results:
        for b in beams:
            b.text = tokenizer.decode(b.token_ids, skip_special_tokens=skip_special_tokens)
    return results


# ------------------------------------------------------------------------------------------------- HTTP (server)


def _root(base_url: str) -> str:
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _request(url: str, payload: dict[str, Any] | None, timeout: float, headers: Mapping[str, str]) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **headers},
                                 method="GET" if payload is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        if e.code == 400:
            raise ValueError(f"server rejected the request ({url}): {body}") from None
        raise RuntimeError(f"HTTP {e.code} from {url}: {body}") from None


def _eos_from_model_dir(path: str) -> int | None:
    """The tokenizer's EOS id read from a local model folder (tokenizer files first, then the configs)."""
    if not os.path.isdir(path):
        return None

    def load(name: str) -> dict[str, Any] | None:
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            return None
        with open(f) as fh:
            return json.load(fh)

    tok_cfg = load("tokenizer_config.json") or {}
    eos = tok_cfg.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    if isinstance(eos, str):
        tok = load("tokenizer.json") or {}
        for added in tok.get("added_tokens", []):
            if added.get("content") == eos:
                return int(added["id"])
        vocab = (tok.get("model") or {}).get("vocab")
        if isinstance(vocab, dict) and eos in vocab:
            return int(vocab[eos])
    for name in ("generation_config.json", "config.json"):
        value = (load(name) or {}).get("eos_token_id")
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, int):
            return value
    return None


def _server_eos(root: str, model: str, timeout: float, headers: Mapping[str, str]) -> int:
    candidates = [model]
    try:
        for entry in _request(f"{root}/v1/models", None, timeout, headers).get("data", []):
            if entry.get("id") == model and entry.get("root"):
                candidates.append(entry["root"])
    except (RuntimeError, OSError, ValueError):
        pass
    for path in candidates:
        eos = _eos_from_model_dir(path)
        if eos is not None:
            return eos
    raise ValueError(
        "declab.eos_token_id could not be found (the served model is not a local folder); pass eos_token_id, "
        "or ignore_eos=True"
    )


def http_next_logprobs(base_url: str, model: str, num_logprobs: int, *, timeout: float = 600.0,
                       headers: Mapping[str, str] | None = None):
    """``next_logprobs`` callback over ``/v1/completions``: all sequences in one request (token-id prompts)."""
    root, hdrs = _root(base_url), dict(headers or {})

    def next_logprobs(sequences: list[list[int]]) -> list[dict[int, float]]:
        payload = {
            "model": model,
            "prompt": [list(s) for s in sequences],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": num_logprobs,
            # Keys "token_id:N" instead of decoded strings (which collide and may not be valid UTF-8).
            "return_tokens_as_token_ids": True,
        }
        resp = _request(f"{root}/v1/completions", payload, timeout, hdrs)
        choices = sorted(resp["choices"], key=lambda c: c["index"])
        if len(choices) != len(sequences):
            raise RuntimeError(f"/v1/completions returned {len(choices)} choices for {len(sequences)} prompts")
        out = []
        for c in choices:
            top = ((c.get("logprobs") or {}).get("top_logprobs") or [None])[0]
            if top is None:
                raise RuntimeError(f"/v1/completions returned no top_logprobs (finish_reason={c.get('finish_reason')})")
            out.append({int(k.rpartition(":")[2]): float(v) for k, v in top.items()})
        return out

    return next_logprobs


def diverse_beam_search_http(
    base_url: str,
    model: str,
    prompt: str | Sequence[int],
    *,
    beam_width: int,
    num_groups: int,
    diversity_penalty: float,
    max_tokens: int,
    length_penalty: float = 1.0,
    ignore_eos: bool = False,
    eos_token_id: int | None = None,
    timeout: float = 600.0,
    headers: Mapping[str, str] | None = None,
) -> list[Beam]:
    """Diverse beam search through a running vLLM OpenAI-compatible server (e.g. ``declab serve``).

    ``base_url`` is the server root (``http://host:8000``, with or without ``/v1``). A text prompt is tokenized by
    the server's ``/tokenize``; texts come from ``/detokenize``. ``eos_token_id`` defaults to the tokenizer's EOS
    read from the served model folder when it is local (else pass it, or ``ignore_eos=True``). Returns
    ``beam_width`` beams sorted by score, best first.
    """
    p = check_params(beam_width=beam_width, num_groups=num_groups, diversity_penalty=diversity_penalty,
                     max_tokens=max_tokens, length_penalty=length_penalty, ignore_eos=ignore_eos)
    if eos_token_id is not None and (isinstance(eos_token_id, bool) or not isinstance(eos_token_id, int)):
        raise ValueError(f"declab.eos_token_id must be an integer, got {eos_token_id!r}")
    root, hdrs = _root(base_url), dict(headers or {})
    if isinstance(prompt, str):
        ids = _request(f"{root}/tokenize", {"model": model, "prompt": prompt}, timeout, hdrs)["tokens"]
    else:
        ids = _prompt_ids(None, prompt)
    if eos_token_id is None:
        try:
            eos_token_id = _server_eos(root, model, timeout, hdrs)
        except ValueError:
            if not p["ignore_eos"]:  # with ignore_eos the EOS id only affects the length in the score
                raise
    beams = diverse_beam_search_batch(
        [ids],
        http_next_logprobs(root, model, 2 * p["beam_width"], timeout=timeout, headers=hdrs),
        eos_token_id=eos_token_id,
        **p,
    )[0]
    for b in beams:
        b.text = _request(f"{root}/detokenize", {"model": model, "tokens": b.token_ids}, timeout, hdrs)["prompt"]
    return beams
