"""The draft training script's distillation on the teacher's own greedy continuations, against naive references:
the continuation is what ``declab bench draft-agreement`` generates (one KV-cached step per token), and the student's
logits are those of its full forward pass at the positions that predict it."""

import pytest
import torch

pytestmark = pytest.mark.core


def _tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def test_teacher_continuations_are_the_agreement_bench_greedy_continuations_with_their_logits():
    from declab.integrations.sdk.agreement import greedy_continuation
    from declab.integrations.draft_training import teacher_continuations

    teacher = _tiny_llama(0)
    teacher.config.eos_token_id = None  # the bench stops at end-of-text; training continues past it
    prefixes = torch.randint(0, 64, (3, 11), generator=torch.Generator().manual_seed(1))
    tokens, logits = teacher_continuations(teacher, prefixes, 7)
    assert tokens.shape == (3, 7) and logits.shape == (3, 7, 64)
    for row in range(3):
        assert tokens[row].tolist() == greedy_continuation(teacher, prefixes[row].tolist(), 7)
        full = teacher(input_ids=torch.cat([prefixes[row], tokens[row, :-1]])[None]).logits[0, 10:]
        torch.testing.assert_close(logits[row], full, rtol=1e-4, atol=1e-4)
        assert torch.equal(logits[row].argmax(-1), tokens[row])


def test_continuation_batch_gives_the_student_logits_at_the_continuation_positions():
    from declab.integrations.draft_training import continuation_batch, held_out_continuation_agreement, prefix_lengths

    teacher, student = _tiny_llama(0), _tiny_llama(1)
    prefixes = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        s_logits, t_logits, tokens = continuation_batch(teacher, student, prefixes, 5)
        full = student(input_ids=torch.cat([prefixes, tokens[:, :-1]], 1)).logits
    assert s_logits.shape == t_logits.shape == (2, 5, 64)
    torch.testing.assert_close(s_logits, full[:, 8:], rtol=1e-4, atol=1e-4)  # position 8 predicts token 0
    agreeing = int((s_logits.argmax(-1) == tokens).sum())  # the held-out metric scores the same positions
    assert held_out_continuation_agreement(student, list(prefixes), list(tokens)) == {
        "top1_agreement_with_target": round(agreeing / 10, 4), "positions": 10}
    assert prefix_lengths(2048, 64, 8)[0] == 128 and prefix_lengths(2048, 64, 8)[-1] == 2048 - 64


def test_a_continuation_longer_than_the_window_allows_is_refused_before_any_work():
    from declab.integrations.draft_training import main

    with pytest.raises(SystemExit, match=r"--continuations must be in \[0, --window - 128\] = \[0, 384\], got 500"):
        main(["--window", "512", "--continuations", "500"])
