"""CAD / LQCD / M3ID through a real vLLM engine on decoder-29m (CPU): companion rows in lockstep.

Checks the mechanism (``declab.patches.request_groups``): plain requests in the same batch are token-identical
to plain decoding alone; a contrastive request's result does not depend on the batch around it; every companion
is freed with its main request (no request left, free KV blocks back to the start); a KV cache small enough to
force preemption gives the same outputs; seeded sampling is reproducible. Equivalence with a two-pass transformers
reference is in ``test_contrastive_reference.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_child

from declab.integrations.models import eval_file

pytestmark = pytest.mark.engine
CHILD = Path(__file__).with_name("contrastive_child.py")
N_ITEMS = 24


@pytest.fixture(scope="module")
def mixed():
    if eval_file("conflict_dev.jsonl") is None:
        pytest.skip("../shared/eval is not present")
    return run_child(CHILD, "mixed", str(N_ITEMS), env={"DECLAB_PLUGINS": "cad,lqcd,m3id"})


@pytest.fixture(scope="module")
def preempted():
    if eval_file("conflict_dev.jsonl") is None:
        pytest.skip("../shared/eval is not present")
    return run_child(CHILD, "preempt", str(N_ITEMS), env={"DECLAB_PLUGINS": "cad,lqcd"})


def test_plain_requests_in_the_batch_are_unaffected(mixed):
    alone = [o["token_ids"] for o in mixed["plain_alone"]]
    batched = [o["token_ids"] for o in mixed["plain_mixed"]]
    assert batched == alone


def test_contrast_changes_some_answers(mixed):
    plain = [o["text"] for o in mixed["plain_alone"][:N_ITEMS]]
    cad = [mixed["contrastive"][f"cad{i}"]["text"] for i in range(N_ITEMS)]
    lqcd = [mixed["contrastive"][f"lqcd{i}"]["text"] for i in range(N_ITEMS)]
    plain_leading = [o["text"] for o in mixed["plain_alone"][N_ITEMS:]]
    assert cad != plain or lqcd != plain_leading


def test_result_does_not_depend_on_the_batch(mixed):
    assert mixed["singles"]
    for name, single in mixed["singles"].items():
        assert single["token_ids"] == mixed["contrastive"][name]["token_ids"], name


def test_companions_are_freed_with_their_requests(mixed):
    for state in (mixed["after_mixed"], mixed["end"]):
        assert state["requests_left"] == 0 and state["running"] == 0 and state["pairs_left"] == 0
        assert state["free_blocks"] == mixed["start"]["free_blocks"]


def test_seeded_sampling_is_reproducible_whatever_the_batch(mixed):
    same_seed_alone, same_seed_in_batch, *other_seeds = mixed["seeded"]
    assert same_seed_alone == same_seed_in_batch
    assert len(same_seed_alone) > 0 and any(o != same_seed_alone for o in other_seeds)


def test_preemption_keeps_outputs_and_frees_blocks(mixed, preempted):
    assert preempted["num_preemptions_seen"] and preempted["num_preemptions_seen"] > 0
    for name, out in preempted["contrastive"].items():
        assert out["token_ids"] == mixed["contrastive"][name]["token_ids"], name
    end = preempted["end"]
    assert end["requests_left"] == 0 and end["pairs_left"] == 0
    assert end["free_blocks"] == preempted["start"]["free_blocks"]


def test_bad_input_offline_is_a_validation_error_and_the_engine_keeps_serving(mixed):
    errors = mixed["errors"]
    assert all(e and e.split(":")[0] in ("ValueError", "VLLMValidationError", "CompanionPromptError")
               for e in errors.values()), errors
    assert "declab.contrast_prompt" in errors["too_long"]
    assert "repetition_penalty" in errors["penalty"]
    assert "declab.contrast_prompt" in errors["missing"]
    assert mixed["end"]["requests_left"] == 0  # later requests of the same engine ran (seeded runs come after)
