"""The frozen base in low precision (jaxqfl.lora.base_quant) against NumPy references of QLoRA's storage.

References written from the definitions (Dettmers et al. 2023, sec. 3): blocks of
64 values scaled by their absmax, NF4 codes the nearest of the 16 NormalFloat4
values, int8 / int4 symmetric rounding, two 4-bit codes per byte, and double
quantization of the scales (mean subtracted, int8 absmax per 256 scales).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxqfl.lora import base_quant as bq
from jaxqfl.quant.nonuniform import nf4_table


def _reference(w, fmt, block=64):
    """Dequantized values of block-wise absmax quantization, float scales (NumPy)."""
    flat = w.astype(np.float64).reshape(-1)
    n = -(-flat.size // block) * block
    blocks = np.pad(flat, (0, n - flat.size)).reshape(-1, block)
    c = np.abs(blocks).max(1)
    c[c == 0] = 1.0
    unit = blocks / c[:, None]
    if fmt == "nf4":
        table = nf4_table().astype(np.float64)
        q = table[np.argmin(np.abs(unit[..., None] - table), axis=-1)]
    else:
        levels = {"int8": 127, "int4": 7}[fmt]
        q = np.clip(np.round(unit * levels), -levels, levels) / levels
    return (q * c[:, None]).reshape(-1)[:flat.size].reshape(w.shape), c


@pytest.fixture(scope="module")
def params():
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 1, (130, 70)).astype(np.float32)  # 9,100 values: 143 blocks, the last one padded
    kernel[:64] = 0.0  # whole zero blocks (scale 1)
    return {"layer": {"kernel": kernel, "bias": rng.normal(0, 1, (70,)).astype(np.float32)}}


@pytest.mark.parametrize("fmt", ["nf4", "int8", "int4"])
def test_dequantized_values_equal_the_block_absmax_reference(params, fmt):
    got = bq.dequantize_base(bq.quantize_base(params, fmt, double_quant=False))
    want, _ = _reference(params["layer"]["kernel"], fmt)
    np.testing.assert_allclose(got["layer"]["kernel"], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["layer"]["bias"], params["layer"]["bias"])  # vectors stay float32


def test_double_quantized_scales_equal_the_reference_and_cost_what_qlora_says(params):
    w = params["layer"]["kernel"]
    _, c = _reference(w, "nf4")
    centred = c - c.mean()
    blocks = np.pad(centred, (0, -(-c.size // 256) * 256 - c.size)).reshape(-1, 256)
    c2 = np.abs(blocks).max(1)
    c_hat = (np.round(blocks / c2[:, None] * 127) * c2[:, None] / 127).reshape(-1)[:c.size] + c.mean()
    stored = bq.quantize_base(params, "nf4")
    got = np.asarray(bq.dequantize_base(stored)["layer"]["kernel"]).reshape(-1)
    flat = np.pad(w.reshape(-1).astype(np.float64), (0, c.size * 64 - w.size)).reshape(-1, 64)
    table = nf4_table().astype(np.float64)
    codes = np.argmin(np.abs((flat / c[:, None])[..., None] - table), axis=-1)  # codes from the exact scales
    np.testing.assert_allclose(got, (table[codes] * c_hat[:, None]).reshape(-1)[:w.size], rtol=1e-5, atol=1e-6)
    blocks_w = c.size
    # nf4: 2 codes a byte; double quantization: an int8 per scale, a float32 per 256 scales, a float32 mean
    assert bq.base_bytes(stored) == blocks_w * 32 + blocks_w + 4 * (-(-blocks_w // 256)) + 4 + 4 * 70
    assert bq.base_bytes(bq.quantize_base(params, "nf4", double_quant=False)) == blocks_w * 32 + 4 * blocks_w + 4 * 70
    assert bq.base_bytes(bq.quantize_base(params, "int8", double_quant=False)) == blocks_w * 64 + 4 * blocks_w + 280
    assert bq.base_bytes(bq.quantize_base(params, "bf16")) == 2 * (w.size + 70)
    assert bq.num_base_params(stored) == w.size + 70


def test_dequantization_traces_under_jit_and_vmap_and_bad_formats_are_refused(params):
    stored = bq.quantize_base(params, "int4")
    assert all(isinstance(a, jax.Array) for a in jax.tree.leaves(stored))  # a jit argument: arrays only
    eager = bq.dequantize_base(stored)["layer"]["kernel"]
    xs = jnp.ones((3, 130))
    out = jax.jit(jax.vmap(lambda x, s: x @ bq.dequantize_base(s)["layer"]["kernel"], in_axes=(0, None)))(xs, stored)
    np.testing.assert_allclose(out, np.ones((3, 130)) @ np.asarray(eager), rtol=1e-5)
    with pytest.raises(ValueError, match="fp3"):
        bq.quantize_base(params, "fp3")
    with pytest.raises(ValueError, match="block"):
        bq.quantize_base(params, "nf4", block=63)


def test_a_stored_base_round_trips_through_a_file(params, tmp_path):
    for fmt in ("nf4", "int8", "bf16"):
        stored = bq.quantize_base(params, fmt)
        bq.save(tmp_path / f"{fmt}.msgpack", stored)
        back = bq.load(tmp_path / f"{fmt}.msgpack")
        assert bq.base_bytes(back) == bq.base_bytes(stored)
        for a, b in zip(jax.tree.leaves(bq.dequantize_base(back)), jax.tree.leaves(bq.dequantize_base(stored))):
            np.testing.assert_array_equal(a, b)
