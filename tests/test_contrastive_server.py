"""Contrastive decoding through a running ``declab serve --plugins cad,lqcd,cfg``: HTTP 400 for bad input; completions
and chat answers (CAD, and CFG with the context-free prompt as negative prompt) equal to the offline engine (the
``contrastive`` profile) on the items where CAD's answer differs from plain greedy, so a server that dropped the
contrast fails; and 64 concurrent plain / CAD / LQCD requests (some aborted midway) that all finish, equal the
offline answers, and leave the KV cache as they found it."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from contrastive_requests import MAX_TOKENS
from helpers import CHAT_TEMPLATE, assert_idle_and_empty, stream_and_abort

from declab.integrations.models import eval_file

pytestmark = pytest.mark.server
N_CONCURRENT = 64
ALPHA = 0.5
# Items (of N_CONCURRENT) where the offline CAD answer differs from plain greedy; measured on decoder-29m (vLLM CPU
# 0.32): 15 for completions, 33 for chat. Each is sent over HTTP and must get the offline CAD answer.
MIN_CHANGED = {"cad": 10, "chat_cad": 25}


def offline_answers(llm, conflict: list[dict], leading: list[dict], chats: list[tuple[str, str]]) -> dict:
    """Greedy answers of the offline engine: plain and CAD on the knowledge-conflict items, LQCD on the leading
    queries, and plain and CAD on the chat-rendered conflict items (``chats``: (main, contrast) rendered texts)."""
    from contrastive_requests import contrastive, generate
    from vllm import SamplingParams

    plain = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)

    def texts(prompts, params):
        return [o["text"] for o in generate(llm, prompts, params)]

    return {
        "plain": texts([it["prompt_with_context"] for it in conflict], plain),
        "cad": texts([it["prompt_with_context"] for it in conflict],
                     [contrastive("cad", it["prompt_without_context"], alpha=ALPHA) for it in conflict]),
        "lqcd": texts([it["leading_prompt"] for it in leading],
                      [contrastive("lqcd", it["neutral_prompt"], alpha=ALPHA) for it in leading]),
        "chat_plain": texts([main for main, _ in chats], plain),
        "chat_cad": texts([main for main, _ in chats], [contrastive("cad", c, alpha=ALPHA) for _, c in chats]),
    }


def render_chat(content: str) -> str:
    """One user turn rendered with the chat template the test server is started with (helpers.CHAT_TEMPLATE)."""
    from transformers import AutoTokenizer

    from declab.integrations.models import default_model

    tok = AutoTokenizer.from_pretrained(default_model())
    return tok.apply_chat_template([{"role": "user", "content": content}], chat_template=CHAT_TEMPLATE.read_text(),
                                   tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="session")
def offline(contrastive_engine):
    """The offline engine's answers for the items the HTTP tests send (computed before the server starts)."""
    conflict, leading = _items()
    conflict, leading = conflict[:N_CONCURRENT], leading[:N_CONCURRENT]
    chats = [(render_chat(it["prompt_with_context"]), render_chat(it["prompt_without_context"])) for it in conflict]
    return {"chats": chats, **contrastive_engine.run(offline_answers, conflict, leading, chats)}


@pytest.fixture
def server(offline, contrastive_server):
    """``declab serve --plugins cad,lqcd,cfg``, shared by this module's tests (profiles.SERVERS); the offline answers
    are computed first, so the engine and the server start once each."""
    return contrastive_server


@pytest.fixture(autouse=True)
def _needs_eval_data():
    if eval_file("conflict_dev.jsonl") is None:
        pytest.skip("../shared/eval is not present")


def _items():
    conflict = [json.loads(x) for x in eval_file("conflict_dev.jsonl").read_text().splitlines()]
    leading = [json.loads(x) for x in eval_file("leading_dev.jsonl").read_text().splitlines()]
    return conflict, leading


def _body(prompt, xargs=None, **extra):
    body = {"model": "decoder-29m", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
    if xargs:
        body["vllm_xargs"] = xargs
    body.update(extra)
    return body


def _post(base, body, timeout=300):
    # json.dumps, not requests' json=: it writes NaN / Infinity literals (a bad value a client can send).
    return requests.post(f"{base}/v1/completions", data=json.dumps(body), timeout=timeout,
                         headers={"Content-Type": "application/json"})


def _cad(item, **more):
    return {"declab.method": "cad", "declab.alpha": ALPHA, "declab.contrast_prompt": item["prompt_without_context"],
            **more}


@pytest.mark.parametrize(
    "xargs,extra,needle",
    [
        ({"declab.method": "cad", "declab.alpha": 0.5}, {}, "declab.contrast_prompt"),
        ({"declab.method": "cad", "declab.contrast_prompt": "Q:", "declab.alpha": 11.0}, {}, "declab.alpha"),
        ({"declab.method": "cad", "declab.contrast_prompt": "Q:", "declab.alpha": "x"}, {}, "declab.alpha"),
        ({"declab.method": "m3id", "declab.contrast_prompt": "Q:"}, {}, "not enabled"),
        ({"declab.method": "cad", "declab.contrast_prompt": "word " * 3000}, {}, "declab.contrast_prompt"),
        ({"declab.method": "cad", "declab.contrast_prompt": "Q:"}, {"repetition_penalty": 1.3}, "repetition_penalty"),
        ({"declab.method": "cfg", "declab.guidance_scale": 30.5}, {}, "declab.guidance_scale"),
        ({"declab.method": "cfg", "declab.guidance_scale": -1}, {}, "declab.guidance_scale"),
        ({"declab.method": "cfg", "declab.guidance_scale": math.nan}, {}, "declab.guidance_scale"),
        ({"declab.method": "cfg", "declab.guidance_scale": math.inf}, {}, "declab.guidance_scale"),
        ({"declab.method": "cfg", "declab.guidance_scale": "x"}, {}, "declab.guidance_scale"),
        ({"declab.method": "cfg", "declab.negative_prompt": "word " * 3000}, {}, "declab.negative_prompt"),
        ({"declab.method": "cfg", "declab.guidance_scale": 2}, {"repetition_penalty": 1.3}, "repetition_penalty"),
    ],
)
def test_bad_input_is_rejected_with_400(server, xargs, extra, needle):
    r = _post(server, _body("Question: Where is it?\nAnswer:", xargs, **extra))
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
    assert _post(server, _body("Question: Where is it?\nAnswer:")).status_code == 200


def _changed(offline: dict, plain: str, cad: str) -> list[int]:
    """Items whose offline CAD answer differs from the offline plain greedy one (a dropped contrast shows there)."""
    changed = [i for i, (p, c) in enumerate(zip(offline[plain], offline[cad], strict=True)) if p != c]
    print(f"\n{cad}: {len(changed)}/{len(offline[cad])} items differ from {plain}")
    assert len(changed) >= MIN_CHANGED[cad], changed
    return changed


def test_completions_contrast_like_the_offline_engine(server, offline):
    conflict, _ = _items()
    for i in _changed(offline, "plain", "cad"):
        r = _post(server, _body(conflict[i]["prompt_with_context"], _cad(conflict[i])))
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == offline["cad"][i] != offline["plain"][i], i


def _tokens(base: str, text: str) -> list[int]:
    r = requests.post(f"{base}/tokenize", json={"model": "decoder-29m", "prompt": text, "add_special_tokens": False},
                      timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def test_chat_with_contrast_prompt_contrasts_like_the_offline_engine(server, offline):
    """The chat path: the user turn rendered with the server's chat template, the contrast conversation rendered
    the same way (contrast_prompt's contract for chat requests)."""
    conflict, _ = _items()
    # The offline rendering is the server's (helpers.declab_server passes CHAT_TEMPLATE; should the bundled model
    # bring its own template and the server use it, this says so instead of a confusing answer mismatch).
    messages = [{"role": "user", "content": conflict[0]["prompt_with_context"]}]
    served = requests.post(f"{server}/tokenize", json={"model": "decoder-29m", "messages": messages,
                                                       "add_generation_prompt": True}, timeout=60)
    assert served.status_code == 200, served.text
    assert served.json()["tokens"] == _tokens(server, offline["chats"][0][0]), "server and test render chats apart"
    for i in _changed(offline, "chat_plain", "chat_cad"):
        contrast = offline["chats"][i][1]
        body = {"model": "decoder-29m", "max_tokens": MAX_TOKENS, "temperature": 0,
                "messages": [{"role": "user", "content": conflict[i]["prompt_with_context"]}],
                "vllm_xargs": {"declab.method": "cad", "declab.alpha": ALPHA, "declab.contrast_prompt": contrast}}
        r = requests.post(f"{server}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == offline["chat_cad"][i] != offline["chat_plain"][i], i


def test_cfg_over_http_gives_cads_answers_and_follows_the_reference(server, offline):
    """CFG at g = 1.5 with the context-free prompt (completions) or the rendered context-free conversation (chat)
    as negative prompt answers like the offline engine's CAD at alpha 0.5 on the items where CAD changes the answer;
    with an empty (or no) negative prompt it follows the two-pass reference (the prompt's last token alone as the
    unconditional stream, HF's rule)."""
    import contrastive_reference as ref

    conflict, _ = _items()
    g = 1.0 + ALPHA
    for i in _changed(offline, "plain", "cad"):
        xargs = {"declab.method": "cfg", "declab.guidance_scale": g,
                 "declab.negative_prompt": conflict[i]["prompt_without_context"]}
        r = _post(server, _body(conflict[i]["prompt_with_context"], xargs))
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == offline["cad"][i], i
    for i in _changed(offline, "chat_plain", "chat_cad"):
        body = {"model": "decoder-29m", "max_tokens": MAX_TOKENS, "temperature": 0,
                "messages": [{"role": "user", "content": conflict[i]["prompt_with_context"]}],
                "vllm_xargs": {"declab.method": "cfg", "declab.guidance_scale": g,
                               "declab.negative_prompt": offline["chats"][i][1]}}
        r = requests.post(f"{server}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == offline["chat_cad"][i], i

    prompts = ["def fibonacci(n):\n    ", "The capital of France is", "import os\nimport sys\n\n\ndef main():\n    "]
    model, tok = ref.load_model()
    vocab = model.get_output_embeddings().weight.shape[0]
    expected = ref.generate_pairs(model, tok, [(p, "") for p in prompts],
                                  lambda: ref.make_processor("cfg", {"guidance_scale": 3.0}, vocab, tok.eos_token_id),
                                  max_tokens=MAX_TOKENS, stop_at_newline=False)
    for prompt, gen in zip(prompts, expected, strict=True):
        for xargs in ({"declab.method": "cfg", "declab.guidance_scale": 3.0, "declab.negative_prompt": ""},
                      {"declab.method": "cfg", "declab.guidance_scale": 3.0}):
            r = _post(server, _body(prompt, xargs))
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == gen.text, (prompt, xargs)


def test_concurrent_mixed_requests_with_aborts(server, offline):
    conflict, leading = _items()
    jobs = []  # (kind, body, offline answer)
    for i in range(N_CONCURRENT):
        c, q = conflict[i], leading[i]
        kind = ("plain", "cad", "lqcd")[i % 3]
        if kind == "plain":
            body = _body(c["prompt_with_context"])
        elif kind == "cad":
            body = _body(c["prompt_with_context"], _cad(c))
        else:
            body = _body(q["leading_prompt"], {"declab.method": "lqcd", "declab.alpha": ALPHA,
                                               "declab.contrast_prompt": q["neutral_prompt"]})
        jobs.append(("abort" if i % 4 == 3 else kind, body, offline[kind][i]))

    def run(job):
        kind, body, _ = job
        if kind == "abort":
            return kind, stream_and_abort(server, body, timeout=300)
        r = _post(server, body)
        assert r.status_code == 200, r.text
        return kind, r.json()["choices"][0]["text"]

    with ThreadPoolExecutor(N_CONCURRENT) as pool:
        results = list(pool.map(run, jobs))
    assert sum(1 for kind, _ in results if kind == "abort") == N_CONCURRENT // 4

    # Every finished greedy output equals the offline engine's answer to the same request, and the contrast
    # changed some of them (a server that dropped it would answer like plain greedy).
    for (kind, body, expected), (_, text) in zip(jobs, results, strict=True):
        if kind != "abort":
            assert text == expected, (kind, body["prompt"][:60])
    cad_rows = [i for i, (kind, _, _) in enumerate(jobs) if kind == "cad"]
    assert sum(offline["cad"][i] != offline["plain"][i] for i in cad_rows) >= 2

    # Aborted requests and their companions are gone and the KV cache is back to empty.
    assert_idle_and_empty(server)
