"""Pure cores of the attention-backend plugins against naive references: GEAR's quantizer, bit packing, outliers and
low-rank correction, the page layout; TidalDecode's / StreamingLLM's token selection; the seam's sparse attention
and its block buffer; start-up checks of the settings. No engine."""

from __future__ import annotations

import itertools

import pytest
import torch

from declab.plugins.gear.codec import (
    GearCodec,
    GearLayout,
    check_settings,
    dequantize,
    low_rank,
    outlier_positions,
    pack_bits,
    quantize,
    unpack_bits,
)
from declab.plugins.tidaldecode.selectors import (
    StreamingSelector,
    TidalDecodeSelector,
    attention_probs,
    check_streaming,
    check_tidaldecode,
    recall,
    top_positions,
)

FACTS = {"num_layers": 8, "head_size": 64, "num_kv_heads": 4, "block_size": 32}


def structured_block(heads=4, n=32, d=64, seed=0) -> torch.Tensor:
    """Keys-like data: a low-rank part shared across tokens, noise, and one outlier channel."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(heads, n, 4, generator=gen) @ torch.randn(heads, 4, d, generator=gen)
    x += 0.3 * torch.randn(heads, n, d, generator=gen)
    x[..., 5] += 8
    return x


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_unpack_matches_a_naive_bit_layout(bits):
    codes = torch.randint(0, 1 << bits, (3, 64), dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.shape == (3, 64 * bits // 8)
    per = 8 // bits
    for row, byte in itertools.product(range(3), range(packed.shape[1])):
        expected = sum(int(codes[row, byte * per + j]) << (bits * j) for j in range(per))
        assert int(packed[row, byte]) == expected
    assert torch.equal(unpack_bits(packed, bits), codes)


def test_quantize_matches_a_per_vector_loop():
    x = torch.randn(5, 64)
    codes, scale, zero = quantize(x, 4)
    for i in range(5):
        lo = torch.tensor(float(x[i].min())).half()
        step = ((x[i].max() - lo.float()) / 15).half()
        expected = [min(15, max(0, round(float((v - lo.float()) / step.float())))) for v in x[i]]
        assert codes[i].tolist() == expected
        assert scale[i, 0] == step and zero[i, 0] == lo
    err = (dequantize(codes, scale, zero) - x).abs()
    assert bool((err <= scale.float() / 2 + 1e-6).all())


def test_outliers_are_the_extremes_of_each_vector():
    x = torch.randn(6, 64)
    got = outlier_positions(x, 3)
    for i in range(6):
        order = sorted(range(64), key=lambda j: float(x[i, j]))
        assert set(got[i].tolist()) == {order[-1], order[-2], order[0]}


def test_low_rank_is_the_truncated_svd_and_exact_at_full_rank():
    r = torch.randn(2, 32, 64, dtype=torch.float64)
    a, b = low_rank(r, 3)
    u, s, vh = torch.linalg.svd(r[0])
    assert torch.allclose(a[0] @ b[0], (u[:, :3] * s[:3]) @ vh[:3], atol=1e-10)
    a, b = low_rank(r, 32)
    assert torch.equal(a @ b, r)


def test_layout_bytes_per_cell():
    plain = GearLayout(64, 32, 4, 0, 0)
    assert plain.cell_bytes == 2 * (32 + 2 + 2)  # codes + fp16 scale + fp16 minimum, for keys and values
    gear = GearLayout(64, 32, 4, 4, 2)
    assert gear.cell_bytes == 2 * (32 + 4 + 2 * 3 + 4 * 2 + (4 * 64 // 32) * 2)
    with pytest.raises(ValueError, match="rank"):
        GearLayout(64, 32, 4, 33, 0)


def test_plain_codec_is_per_token_quantization():
    x = structured_block()
    codec = GearCodec(GearLayout(64, 32, 4, 0, 0))
    keys, values = codec.decode(codec.encode(x, 2 * x)[None])
    assert torch.equal(keys[0], dequantize(*quantize(x, 4)))
    assert torch.equal(values[0], dequantize(*quantize(2 * x, 4)))


def test_gear_corrections_shrink_the_error_and_full_rank_is_exact_to_an_ulp():
    x = structured_block()
    errors = {}
    for rank, outliers in [(0, 0), (0, 2), (4, 0), (4, 2)]:
        codec = GearCodec(GearLayout(64, 32, 4, rank, outliers))
        errors[rank, outliers] = float(((codec.decode(codec.encode(x, x)[None])[0][0] - x) ** 2).mean())
    assert errors[4, 2] < errors[0, 2] < errors[0, 0]
    assert errors[4, 2] < errors[4, 0] < errors[0, 0]
    codec = GearCodec(GearLayout(64, 32, 4, 32, 2))
    keys = codec.decode(codec.encode(x, x)[None])[0][0]
    ulp = torch.finfo(torch.float32).eps * x.abs().clamp_min(x.abs().max() / 64)
    assert bool(((keys - x).abs() <= ulp).all())


def outlier_channel_keys(seed: int = 0) -> torch.Tensor:
    """A block of keys ``[2 heads, 32 tokens, 64]`` whose channels have very different scales (a few outlier
    channels, as LLM keys have): per-token ranges are stretched by the outlier channels."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.ones(64)
    scale[[3, 17, 40]] = torch.tensor([12.0, -9.0, 15.0])
    return torch.randn(2, 32, 64, generator=g) * scale + torch.randn(64, generator=g) * 2


def test_per_channel_keys_shrink_the_key_error_and_keep_values_and_full_rank_exact():
    x = outlier_channel_keys()
    err = {}
    for channel in (False, True):
        for rank, outliers in ((0, 0), (4, 2)):
            codec = GearCodec(GearLayout(64, 32, 4, rank, outliers, channel_keys=channel))
            keys, values = codec.decode(codec.encode(x, x)[None])
            err[channel, rank] = float(((keys[0] - x) ** 2).mean())
            assert torch.equal(values[0], GearCodec(GearLayout(64, 32, 4, rank, outliers)).decode(
                GearCodec(GearLayout(64, 32, 4, rank, outliers)).encode(x, x)[None])[1][0])
    assert err[True, 0] < 0.5 * err[False, 0] and err[True, 4] < err[False, 4] and err[True, 4] < err[True, 0]
    # Per-channel plain keys are the transpose's per-vector quantization.
    codec = GearCodec(GearLayout(64, 32, 4, 0, 0, channel_keys=True))
    keys = codec.decode(codec.encode(x, x)[None])[0][0]
    assert torch.equal(keys, dequantize(*quantize(x.transpose(-1, -2), 4)).transpose(-1, -2))
    codec = GearCodec(GearLayout(64, 32, 4, 32, 2, channel_keys=True))
    keys = codec.decode(codec.encode(x, x)[None])[0][0]
    ulp = torch.finfo(torch.float32).eps * x.abs().clamp_min(x.abs().max() / 64)
    assert bool(((keys - x).abs() <= ulp).all())
    # Each key cell holds two per-channel scales and minima (64 channels over 32 tokens) instead of one.
    assert GearLayout(64, 32, 4, 4, 2, channel_keys=True).cell_bytes == GearLayout(64, 32, 4, 4, 2).cell_bytes + 4


def test_settings_checks_name_the_setting():
    with pytest.raises(ValueError, match=r"declab\.gear\.rank must be <= 32"):
        check_settings({"bits": 4, "rank": 64, "outlier_ratio": 0.0}, FACTS)
    check_settings({"bits": 4, "rank": 32, "outlier_ratio": 0.0}, FACTS)
    with pytest.raises(ValueError, match=r"tidaldecode\.selection_layers: the model has layers 0\.\.7"):
        check_tidaldecode({"budget": 8, "selection_layers": "1,8"}, FACTS)
    with pytest.raises(ValueError, match=r"tidaldecode\.selection_layers must name increasing"):
        check_tidaldecode({"budget": 8, "selection_layers": "4,1"}, FACTS)
    with pytest.raises(ValueError, match=r"tidaldecode\.selection_layers must be comma-separated"):
        check_tidaldecode({"budget": 8, "selection_layers": "a"}, FACTS)
    with pytest.raises(ValueError, match=r"streamingllm\.sinks must be < budget"):
        check_streaming({"budget": 4, "sinks": 4}, FACTS)


def test_top_positions_keep_the_best_and_the_current_token():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.05, 0.0], [0.4, 0.1, 0.2, 0.3, 0.0]])
    assert top_positions(scores, 2).tolist() == [[1, 4], [0, 4]]
    assert top_positions(scores, 3).tolist() == [[1, 2, 4], [0, 3, 4]]
    assert recall(torch.tensor([[1, 4]]), torch.tensor([[1, 2]])) == 0.5


def test_attention_probs_match_a_per_head_softmax():
    q, k = torch.randn(8, 16), torch.randn(10, 4, 16)
    got = attention_probs(q, k, 0.25)
    for kv in range(4):
        expected = sum(torch.softmax(k[:, kv] @ q[h] * 0.25, 0) for h in (2 * kv, 2 * kv + 1))
        assert torch.allclose(got[kv], expected, atol=1e-6)


def test_tidaldecode_selects_in_selection_layers_and_reuses_the_choice_elsewhere():
    selector = TidalDecodeSelector(budget=3, selection_layers=(1, 3))
    q, k = torch.randn(8, 16), torch.randn(10, 4, 16)
    assert selector.positions(0, 0, q, k, 0.25) is None  # before the first selection layer: full attention
    assert selector.positions(1, 0, q, k, 0.25) is None  # selection layer: full attention, chooses
    chosen = selector.chosen[0]
    assert torch.equal(chosen, top_positions(attention_probs(q, k, 0.25), 3))
    assert torch.equal(selector.positions(2, 0, torch.randn(8, 16), k, 0.25), chosen)
    q3 = torch.randn(8, 16)
    assert selector.positions(3, 0, q3, k, 0.25) is None  # re-selection with layer 3's query
    assert torch.equal(selector.positions(4, 0, q, k, 0.25), top_positions(attention_probs(q3, k, 0.25), 3))


def test_streaming_keeps_sinks_and_the_recent_window():
    chosen = StreamingSelector(budget=5, sinks=2).positions(0, 0, torch.randn(8, 16), torch.randn(10, 4, 16), 1.0)
    assert chosen.tolist() == [[0, 1, 7, 8, 9]] * 4


def test_sparse_attention_matches_dense_attention_over_the_chosen_positions():
    from declab.integrations.sdk.attention import attend_positions

    q, k, v = torch.randn(8, 16), torch.randn(10, 4, 16), torch.randn(10, 4, 16)
    positions = torch.tensor([[0, 3, 9], [1, 2, 9], [5, 6, 9], [0, 8, 9]])
    got = attend_positions(q, k, v, positions, 0.25)
    for h in range(8):
        kv = h // 2
        sel = positions[kv]
        probs = torch.softmax(k[sel, kv] @ q[h] * 0.25, 0)
        assert torch.allclose(got[h], probs @ v[sel, kv], atol=1e-5)
    every = torch.arange(10).expand(4, 10)
    dense = torch.stack([torch.softmax(k[:, h // 2] @ q[h] * 0.25, 0) @ v[:, h // 2] for h in range(8)])
    assert torch.allclose(attend_positions(q, k, v, every, 0.25), dense, atol=1e-5)


def test_block_buffer_packs_full_blocks_and_keeps_the_tail():
    from declab.integrations.sdk.attention import BlockBuffer

    codec = GearCodec(GearLayout(16, 32, 8, 0, 0))
    cache = torch.zeros(4, 2, 32, codec.cell_bytes(), dtype=torch.uint8)
    keys, values = torch.randn(70, 2, 16), torch.randn(70, 2, 16)
    slots = torch.cat([torch.arange(64, 96), torch.arange(0, 32), torch.arange(32, 38)])  # blocks 2, 0, then 1
    buffer = BlockBuffer(capacity=8)
    buffer.write(codec, keys[:40], values[:40], cache, slots[:40])  # block 2 full, block 0 partly
    buffer.write(codec, keys[40:], values[40:], cache, slots[40:])
    assert set(buffer.blocks) == {1}
    for block, rows in ((2, slice(0, 32)), (0, slice(32, 64))):
        k, v = codec.decode(cache[block][None])
        expected_k = codec.decode(codec.encode(keys[rows].transpose(0, 1), values[rows].transpose(0, 1))[None])[0]
        assert torch.equal(k, expected_k)
    assert torch.equal(buffer.blocks[1][0][:, :6], keys[64:].transpose(0, 1))
    before = cache[2].clone()
    buffer.write(codec, keys[:1], values[:1], cache, torch.tensor([95]))  # a packed block's slot recomputed
    assert torch.equal(cache[2], before) and set(buffer.blocks) == {1}
