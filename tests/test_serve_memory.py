"""``declab serve``'s KV-cache sizing (``integrations/serve_memory.py``): the pure decision and the command line.

The real start with no memory flags is in ``test_serve_defaults.py``."""

from __future__ import annotations

import pytest

from declab.integrations import serve_memory
from declab.integrations.cli import serve_command
from declab.integrations.models import BUNDLED_MODEL
from declab.integrations.serve_memory import ModelShape, human_int, model_shape, plan_kv_cache, serve_settings

GiB, MiB = 1 << 30, 1 << 20
DECODER_29M = ModelShape(layers=8, kv_heads=4, head_dim=64, dtype_bytes=4, max_model_len=2048)


def test_decoder_29m_costs_16_kib_per_token_in_float32():
    assert model_shape(str(BUNDLED_MODEL), {"dtype": "float32"}) == DECODER_29M
    assert DECODER_29M.bytes_per_token() == 2 * 8 * 4 * 64 * 4 == 16 * 1024
    assert model_shape(str(BUNDLED_MODEL), {}).dtype_bytes == 2  # "auto": the config's float16


def test_kv_cache_is_sized_for_the_sequences_vllm_may_admit():
    plan = plan_kv_cache(DECODER_29M, max_num_seqs=128, max_model_len=2048, available_bytes=20 * GiB)
    assert plan.bytes == 128 * 2048 * 16 * 1024 == 4 * GiB and not plan.capped
    assert plan.tokens == 128 * 2048
    assert "4096 MiB" in plan.describe() and "128 sequences x 2048 tokens" in plan.describe()


def test_other_processes_holding_most_memory_cap_the_cache_instead_of_refusing_to_start():
    """vLLM's default asks for 92 % of *total* memory and refuses to start when less is available; the plan takes at
    most half of what is *available* (vLLM checks only that an explicit size fits in available memory)."""
    plan = plan_kv_cache(DECODER_29M, max_num_seqs=128, max_model_len=2048, available_bytes=3 * GiB)
    assert plan.capped and plan.bytes == 1536 * MiB <= 3 * GiB
    assert "capped at 50% of the 3.0 GiB available" in plan.describe()


def test_the_cache_always_holds_one_full_length_sequence():
    plan = plan_kv_cache(DECODER_29M, max_num_seqs=128, max_model_len=2048, available_bytes=10 * MiB)
    assert plan.bytes == 2048 * 16 * 1024 == 32 * MiB  # vLLM refuses to start below one max_model_len sequence


def test_workers_share_the_cap_and_split_the_kv_heads():
    plan = plan_kv_cache(DECODER_29M, max_num_seqs=256, max_model_len=2048, available_bytes=4 * GiB,
                         tensor_parallel=2, data_parallel=2)
    assert plan.bytes_per_token == 8 * 1024  # 2 of the 4 KV heads per worker
    assert plan.workers == 4 and plan.bytes == GiB // 2  # 50% of 4 GiB over 4 workers


def test_sizes_are_rounded_up_to_whole_mib():
    plan = plan_kv_cache(DECODER_29M, max_num_seqs=3, max_model_len=1000, available_bytes=20 * GiB)
    assert plan.bytes % MiB == 0 and plan.bytes >= 3 * 1000 * 16 * 1024


@pytest.mark.parametrize("args,env,chosen", [
    (["--kv-cache-memory-bytes", "1G"], {}, "--kv-cache-memory-bytes"),
    (["--gpu_memory_utilization=0.5"], {}, "--gpu-memory-utilization"),
    ([], {"VLLM_CPU_KVCACHE_SPACE": "2"}, "VLLM_CPU_KVCACHE_SPACE"),
])
def test_the_users_memory_choice_wins(args, env, chosen, monkeypatch):
    for key in ("VLLM_CPU_KVCACHE_SPACE", *env):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    serve = serve_command(None, "", args)
    assert "--kv-cache-memory-bytes" not in serve.cmd[:6]
    assert serve.notes == [f"KV cache: sized by vLLM from your {chosen}"]


def test_a_config_file_counts_like_the_command_line(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("gpu-memory-utilization: 0.4\nmax-num-seqs: 8\n")
    assert serve_settings(["--config", str(cfg)]) == {"gpu_memory_utilization": 0.4, "max_num_seqs": 8}
    assert serve_settings(["--config", str(cfg), "--max-num-seqs", "4"])["max_num_seqs"] == "4"
    assert serve_memory.user_chose_kv_memory(serve_settings(["--config", str(cfg)]), {}) == "--gpu-memory-utilization"


def test_declab_serve_without_memory_flags_passes_the_planned_size(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setattr(serve_memory, "available_memory", lambda: 3 * GiB)
    serve = serve_command(None, "", ["--max-num-seqs", "4"])
    flag = serve.cmd.index("--kv-cache-memory-bytes")
    assert int(serve.cmd[flag + 1]) == 4 * 2048 * 16 * 1024  # float32, --max-model-len 2048 (the CPU defaults)
    assert serve.notes[0].startswith("KV cache 128 MiB per worker")


def test_a_gpu_build_keeps_vllms_sizing(monkeypatch):
    monkeypatch.setattr(serve_memory, "runs_on_cpu", lambda: False)
    assert "--kv-cache-memory-bytes" not in serve_command(None, "", []).cmd


def test_human_readable_integers_read_like_vllms():
    assert [human_int(x) for x in ("2048", "2k", "2K", "1g", "1G", "25.6k")] == \
        [2048, 2000, 2048, 10**9, 1 << 30, 25600]
