"""jaxqfl.threefry_cpu: the flat CPU lowering of Threefry-2x32 hashes exactly as the paper's algorithm and as JAX.

Three independent checks:

* a NumPy Threefry-2x32 written from Salmon et al. (2011) reproduces Random123's
  known-answer vectors, and the lowering installed by ``jaxqfl.keys`` equals it
  for broadcast and batched operands of many shapes;
* in a fresh interpreter, JAX's draws (uniform, normal, bits, split, fold_in,
  under ``vmap``) are bit-identical before and after :func:`install`, and the
  lowered program does hash along one flat axis after it, its loop carrying each
  counter pair as one 64-bit word.
"""
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxqfl.keys  # noqa: F401  (installs the lowering)
from cli_subprocess import ROOT
from jax.extend.random import threefry2x32_p

M32 = 0xFFFFFFFF


def threefry2x32_reference(k0, k1, x0, x1):
    """Threefry-2x32, 20 rounds, on Python integers (Salmon et al. 2011, Random123's threefry.h)."""
    rotations = (13, 15, 26, 6, 17, 29, 16, 24)
    ks = (k0, k1, k0 ^ k1 ^ 0x1BD11BDA)
    x0, x1 = (x0 + ks[0]) & M32, (x1 + ks[1]) & M32
    for rnd in range(20):
        r = rotations[rnd % 8]
        x0 = (x0 + x1) & M32
        x1 = (((x1 << r) | (x1 >> (32 - r))) & M32) ^ x0
        if rnd % 4 == 3:
            s = rnd // 4 + 1
            x0 = (x0 + ks[s % 3]) & M32
            x1 = (x1 + ks[(s + 1) % 3] + s) & M32
    return x0, x1


@pytest.mark.parametrize("key, counter, expected", [
    ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
    ((M32, M32), (M32, M32), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
])
def test_reference_reproduces_random123_known_answers(key, counter, expected):
    assert threefry2x32_reference(*key, *counter) == expected


def _reference(k0, k1, x0, x1):
    shape = np.broadcast_shapes(*(np.shape(a) for a in (k0, k1, x0, x1)))
    ops = [np.broadcast_to(np.asarray(a, np.uint32), shape).reshape(-1) for a in (k0, k1, x0, x1)]
    out = np.array([threefry2x32_reference(*map(int, t)) for t in zip(*ops)], np.uint32).reshape(shape + (2,))
    return out[..., 0], out[..., 1]


@pytest.mark.parametrize("shapes", [
    ((), (), (), ()),
    ((), (), (7,), (7,)),
    ((3, 1), (3, 1), (1, 10), (1, 10)),  # per-row keys, per-column counters: the vmapped draw's broadcast
    ((2, 5, 1), (2, 5, 1), (2, 5, 3), (2, 5, 3)),
    ((2, 1), (2, 1), (1, 130), (1, 130)),  # an innermost axis past FLAT_MAX_INNER: hashed in place
    ((0,), (0,), (0,), (0,)),
])
def test_installed_lowering_equals_the_reference(shapes):
    rng = np.random.default_rng(len(shapes[2]))
    ops = [rng.integers(0, 2**32, size=s, dtype=np.uint64).astype(np.uint32) for s in shapes]
    y0, y1 = jax.jit(lambda *a: threefry2x32_p.bind(*a))(*ops)
    r0, r1 = _reference(*ops)
    np.testing.assert_array_equal(np.asarray(y0), r0)
    np.testing.assert_array_equal(np.asarray(y1), r1)


def test_batched_hash_equals_the_reference():
    """Under vmap (the engine's clients x steps), operands arrive with batch dimensions of their own."""
    rng = np.random.default_rng(1)
    k = rng.integers(0, 2**32, size=(6, 2), dtype=np.uint64).astype(np.uint32)
    x = rng.integers(0, 2**32, size=(6, 2, 10), dtype=np.uint64).astype(np.uint32)
    y0, y1 = jax.jit(jax.vmap(lambda k, x: threefry2x32_p.bind(k[0], k[1], x[0], x[1])))(k, x)
    r0, r1 = _reference(k[:, 0, None], k[:, 1, None], x[:, 0], x[:, 1])
    np.testing.assert_array_equal(np.asarray(y0), r0)
    np.testing.assert_array_equal(np.asarray(y1), r1)


_DRAWS = """
import hashlib, jax, jax.numpy as jnp

def draws():
    k = jax.random.key(7)
    ks = jax.random.split(k, 12).reshape(3, 4)
    f = jax.jit(lambda k, ks: [
        jax.random.uniform(k, (60, 10)),
        jax.random.normal(jax.random.fold_in(k, 3), (5, 3)),
        jax.random.bits(k, (17,), jnp.uint32),
        jax.random.key_data(jax.random.split(k, 5)),
        jax.vmap(jax.vmap(lambda kk: jax.random.uniform(kk, (10,))))(ks),
        jax.random.key_data(jax.vmap(lambda kk, i: jax.random.fold_in(kk, i))(ks[0], jnp.arange(4))),
        jax.random.truncated_normal(k, -2.0, 2.0, (7, 9)),
    ])
    return hashlib.sha256(b"".join(bytes(memoryview(jax.numpy.asarray(a))) for a in f(k, ks))).hexdigest()

def flat_words_in_program():  # the counters flattened to one axis, carried through the loop as one 64-bit word each
    text = jax.jit(lambda k: jax.random.uniform(k, (60, 10))).lower(jax.random.key(0)).as_text()
    return "600xui32" in text and "600xui64" in text

before = draws(), flat_words_in_program()
from jaxqfl import threefry_cpu
threefry_cpu.install()
after = draws(), flat_words_in_program()
print(before[0] == after[0], before[1], after[1])
"""


def test_jax_draws_are_bit_identical_with_the_flat_lowering():
    out = subprocess.run([sys.executable, "-c", _DRAWS], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "True"], out.stdout
