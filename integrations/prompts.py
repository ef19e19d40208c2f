"""Prompt sets for benchmarks, tests and the demo."""

from __future__ import annotations

import json

from declab.integrations.models import eval_file

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


def default_bench_prompts(n: int) -> list[str]:
    """n prompts: code prompts first, then Spec-Bench first turns (short ones) when available."""
    prompts = list(CODE_PROMPTS)
    prompts += [p for _, p in spec_bench_prompts(max_chars=1500)]
    return prompts[:n]
