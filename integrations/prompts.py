"""Prompt sets for benchmarks, tests and the demo."""

from __future__ import annotations

import json
from typing import Any

from declab.integrations.models import eval_file

CODE_GROUP = "code"  # group name of CODE_PROMPTS in the Spec-Bench prompt set
# Long code files (``long_code_prompts``): opt-in, only when a benchmark names the group (``--groups long_code``), so
# the default set and the reports made with it stay as they are.
LONG_CODE_GROUP = "long_code"
LONG_CODE_FILES = 16
LONG_CODE_MIN_CHARS = 8_000  # files long enough to fill the prompt
LONG_CODE_MAX_TOKENS = 1_800  # a file's opening, cut at a line end, leaves room for 64 new tokens and K in 2,048

# Code prompts in the style of decoder-29m's training data (its greedy output loops on code).
CODE_PROMPTS = (
    "def fibonacci(n):\n    ",
    "import os\nimport sys\n\n\ndef main():\n    ",
    "class Stack:\n    def __init__(self):\n        ",
    "def read_file(path):\n    with open(path) as f:\n        ",
    "# Utilities for parsing command line arguments\nimport argparse\n\n",
    "def binary_search(items, target):\n    lo, hi = 0, len(items) - 1\n",
    "class Config(dict):\n    \"\"\"A dictionary with attribute access.\"\"\"\n\n    def ",
    "def merge_sort(xs):\n    if len(xs) <= 1:\n        return xs\n",
    "import json\n\n\ndef load(path):\n    ",
    "class Node:\n    def __init__(self, value, next=None):\n",
    "def is_prime(n):\n    if n < 2:\n        return False\n",
    "from collections import defaultdict\n\n\ndef group_by(items, key):\n    ",
    "def test_addition():\n    assert ",
    "class Timer:\n    def __enter__(self):\n        ",
    "def flatten(nested):\n    result = []\n",
    "import re\n\nPATTERN = re.compile(",
)


def spec_bench_prompts(limit: int | None = None, max_chars: int | None = None) -> list[tuple[str, str]]:
    """(category, first-turn prompt) of Spec-Bench, if ../shared/eval is present; else []."""
    path = eval_file("spec_bench", "question.jsonl")
    if path is None:
        return []
    out = []
    for line in path.read_text().splitlines():
        item = json.loads(line)
        text = item["turns"][0]
        if max_chars is not None and len(text) > max_chars:
            continue
        out.append((item.get("category", "unknown"), text))
        if limit is not None and len(out) >= limit:
            break
    return out


def long_code_prompts(tokenizer) -> list[tuple[str, str]]:
    """(id, text) of ``LONG_CODE_FILES`` long code files: the Python sources of the pinned vLLM package (fixed by the
    version pin; not decoder-29m's training data, which is the standard library) of at least ``LONG_CODE_MIN_CHARS``
    characters, taken at an even stride through their sorted paths, each cut to its first ``LONG_CODE_MAX_TOKENS``
    tokens at a line end: the prompt of a model asked to continue the file (RAPID's long-context code case)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("vllm")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(list(spec.submodule_search_locations)[0])
    files = sorted(f for f in root.rglob("*.py") if f.stat().st_size >= LONG_CODE_MIN_CHARS)
    stride = max(1, len(files) // LONG_CODE_FILES)
    out = []
    for f in files[::stride][:LONG_CODE_FILES]:
        text = f.read_text(encoding="utf-8", errors="replace")
        offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) > LONG_CODE_MAX_TOKENS:
            end = offsets[LONG_CODE_MAX_TOKENS - 1][1]
            text = text[:text.rindex("\n", 0, end) + 1]
        out.append((f"vllm/{f.relative_to(root).as_posix()}", text))
    return out


def default_bench_prompts(n: int) -> list[str]:
    """n prompts: code prompts first, then Spec-Bench first turns (short ones) when available."""
    prompts = list(CODE_PROMPTS)
    prompts += [p for _, p in spec_bench_prompts(max_chars=1500)]
    return prompts[:n]


def load_prompt_set(model: str, *, max_tokens: int, max_k: int, max_model_len: int,
                    limit: int | None = None, groups: list[str] | None = None,
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """The speculative-decoding prompt set: (items, skipped, totals). Items: Spec-Bench first turns (file order)
    then the code prompts (group ``code``), each ``{"group", "id", "text", "prompt_tokens"}``; a prompt is kept when
    ``prompt_tokens + max_tokens + max_k <= max_model_len``. ``limit`` keeps the first N kept prompts of each
    group; ``groups`` keeps only the named groups (an unknown name is a ``ValueError`` listing the known ones), and
    naming ``LONG_CODE_GROUP`` adds the long code files (``long_code_prompts``). Used by
    ``declab bench spec`` and by the proposers' own benchmarks, so they measure the same prompts."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    raw: list[tuple[str, str, str]] = []
    path = eval_file("spec_bench", "question.jsonl")
    if path is not None:
        for line in path.read_text().splitlines():
            item = json.loads(line)
            raw.append((item.get("category", "unknown"), str(item.get("question_id")), item["turns"][0]))
    raw += [(CODE_GROUP, f"code-{i}", p) for i, p in enumerate(CODE_PROMPTS)]
    if groups is not None and LONG_CODE_GROUP in groups:
        raw += [(LONG_CODE_GROUP, qid, text) for qid, text in long_code_prompts(tok)]
    if groups is not None:
        known = list(dict.fromkeys([*(g for g, _, _ in raw), LONG_CODE_GROUP]))
        unknown = [g for g in groups if g not in known]
        if unknown or not groups:
            raise ValueError(f"groups: {unknown or groups} not among the prompt groups {known}")
        raw = [r for r in raw if r[0] in groups]
    budget = max_model_len - max_tokens - max_k
    items, skipped, totals = [], [], {}
    for group, qid, text in raw:
        n = len(tok(text).input_ids)
        totals[group] = totals.get(group, 0) + 1
        rec = {"group": group, "id": qid, "text": text, "prompt_tokens": n}
        (items if n <= budget else skipped).append(rec)
    if limit is not None:
        kept, seen = [], {}
        for it in items:
            seen[it["group"]] = seen.get(it["group"], 0) + 1
            if seen[it["group"]] <= limit:
                kept.append(it)
        items = kept
    return items, [{k: v for k, v in s.items() if k != "text"} for s in skipped], totals


def group_order(items: list[dict[str, Any]]) -> list[str]:
    """The groups of ``items`` in order of first appearance."""
    out: list[str] = []
    for it in items:
        if it["group"] not in out:
            out.append(it["group"])
    return out
