"""Token Recycling's stage-2 pieces (tree drafting, tree attention mask, longest accepted path, KV selection) are
lossless end to end: the reference verifier of ``declab bench spec-tree`` decodes decoder-29m token-identically to
plain greedy decoding, with the chain and with the paper's 80-node tree (plain transformers, no engine)."""

import pytest
from helpers import assert_lossless

from declab.plugins.token_recycling.bench import ReferenceDecoder

PROMPTS = [
    "def fibonacci(n):\n    ",
    "Question: Where is Mikagro Works headquartered?\nAnswer:",
]


@pytest.fixture(scope="module")
def decoder(model_path):
    return ReferenceDecoder(model_path)


@pytest.mark.parametrize("mode", ["chain", "tree"])
def test_reference_verifier_reproduces_greedy_decoding(decoder, mode):
    outputs, reference, accepted = [], [], 0
    for prompt in PROMPTS:  # one matrix across prompts (hot start), as in the engine
        ids = decoder.encode(prompt)
        expected = decoder.vanilla(ids, 32)
        run = decoder.speculative(mode, ids, 32)
        outputs.append(run["tokens"])
        reference.append(expected)
        accepted += run["accepted"]
        assert run["steps"] + run["accepted"] >= len(expected)  # every forward pass commits 1 + accepted tokens
        assert run["steps"] <= len(expected)
    assert_lossless(outputs, reference, accepted, f"reference verifier, {mode}")
