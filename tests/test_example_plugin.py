"""The example plugin (examples/plugin_example): a plugin is one folder plus its tests.

Its core against the naive reference; discovery through the ``declab.plugins`` entry-point group (a dist-info
folder on the path, as ``pip install`` would write, so nothing in the repo lists it); and a real engine that loads
it that way and blocks repeated n-grams that plain greedy decoding produces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "plugin_example"
sys.path.insert(0, str(EXAMPLE))

from declab_no_repeat_ngram.core import NGramIndex, NoRepeatNGramProcessor, banned_tokens_naive  # noqa: E402

from declab.integrations.sdk import RowContext  # noqa: E402


@pytest.mark.core
@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 4), max_size=40), st.integers(1, 4), st.lists(st.integers(0, 40), max_size=4))
def test_incremental_index_matches_the_naive_reference(tokens, n, cuts):
    index = NGramIndex(n)
    # Grow the sequence step by step, with occasional roll-backs to a shorter prefix.
    lengths = list(range(len(tokens) + 1))
    for cut in cuts:
        lengths.insert(min(cut, len(lengths)), min(cut, len(tokens)) // 2)
    for length in lengths:
        assert index.banned(tokens[:length]) == banned_tokens_naive(tokens[:length], n)


@pytest.mark.core
def test_processor_masks_repeats_and_never_empties_a_row():
    out: list[int] = []
    proc = NoRepeatNGramProcessor({"ngram_size": 2}, [1, 2, 3, 1], out, RowContext(vocab_size=5))
    row = proc(torch.zeros(5))
    assert row[2] == float("-inf") and torch.isfinite(row[[0, 1, 3, 4]]).all()  # "1 2" occurred: 2 is banned
    only_two = torch.full((5,), float("-inf"))
    only_two[2] = 0.0
    assert proc(only_two.clone())[2] == 0.0  # the only finite token stays


def _entry_point_path(tmp_path: Path) -> str:
    """A dist-info folder registering the example in the ``declab.plugins`` group, plus the example's source."""
    info = tmp_path / "declab_no_repeat_ngram-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: declab-no-repeat-ngram\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[declab.plugins]\nno_repeat_ngram = declab_no_repeat_ngram\n")
    return os.pathsep.join([str(tmp_path), str(EXAMPLE)])


def _run(code: str, pythonpath: str, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k != "DECLAB_PLUGINS"}
    full.update(env, PYTHONPATH=pythonpath)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.core
def test_discovered_through_the_entry_point_group(tmp_path):
    out = _run("""
        from declab.integrations import registry
        from declab.integrations.catalog import format_markdown
        spec = registry.get_spec("no_repeat_ngram")
        print(registry.package_of("no_repeat_ngram"), spec.hook, [p.name for p in spec.params])
        print("TABLE" if "`no_repeat_ngram`" in format_markdown() else "NO TABLE")
    """, _entry_point_path(tmp_path))
    assert "declab_no_repeat_ngram logits-processor ['ngram_size']" in out and "TABLE" in out


@pytest.mark.engine
def test_engine_blocks_repeated_ngrams_that_plain_greedy_produces(tmp_path):
    out = _run("""
        import json
        from vllm import LLM, SamplingParams
        from declab.integrations.engine_run import CPU_ENGINE_KWARGS
        from declab.integrations.models import default_model

        if __name__ == "__main__":
            llm = LLM(model=default_model(), **{**CPU_ENGINE_KWARGS, "max_model_len": 512})
            prompts = ["The quick brown fox jumps over the lazy dog. The quick brown fox", "def add(a, b):\\n    return"]
            plain = SamplingParams(temperature=0, max_tokens=48)
            blocked = SamplingParams(temperature=0, max_tokens=48,
                                     extra_args={"declab": {"method": "no_repeat_ngram", "ngram_size": 3}})
            outs = llm.generate(prompts * 2, [plain] * 2 + [blocked] * 2, use_tqdm=False)
            print("RESULT", json.dumps([[list(o.prompt_token_ids), list(o.outputs[0].token_ids)] for o in outs]))
    """, _entry_point_path(tmp_path),
                DECLAB_PLUGINS="no_repeat_ngram", VLLM_CPU_KVCACHE_SPACE="1")
    seqs = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])

    def repeats(prompt_and_output):
        """Generated tokens that complete a 3-gram already present in prompt + output before them."""
        prompt, output = prompt_and_output
        seq = prompt + output
        return sum(tuple(seq[i - 2:i + 1]) in {tuple(seq[j - 2:j + 1]) for j in range(2, i)}
                   for i in range(max(len(prompt), 2), len(seq)))

    plain, blocked = seqs[:2], seqs[2:]
    assert sum(repeats(s) for s in plain) > 0, "the prompts no longer make plain greedy repeat: pick others"
    assert all(repeats(s) == 0 for s in blocked)
