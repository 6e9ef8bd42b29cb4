"""Threefry-2x32 on XLA:CPU, hashed along one flat axis: the same bits, a fraction of the compile time.

Every draw in jaxqfl (``jaxqfl.keys``) is JAX's Threefry-2x32 (Salmon, Moraes, Dror
and Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a 64-bit
counter ``(x0, x1)`` hashed under a 64-bit key ``(k0, k1)`` in 20 rounds,
five groups of four::

    ks = (k0, k1, k0 ^ k1 ^ 0x1BD11BDA)
    x0 += ks[0];  x1 += ks[1]
    for g in 1..5:
        for r in R[(g - 1) % 2]:       # R = ((13, 15, 26, 6), (17, 29, 16, 24))
            x0 += x1;  x1 = rotl32(x1, r) ^ x0
        x0 += ks[g % 3];  x1 += ks[(g + 1) % 3] + g

All arithmetic is on uint32, modulo 2^32: the hash is exact and elementwise
over (key, counter) pairs.

**Why a lowering of our own.** On CPU, JAX lowers the hash primitive
(``jax.extend.random.threefry2x32_p``) as a five-step loop over arrays of the
draw's own shape. Under ``vmap`` that is the batch's shape: a local step's
batch rows in the default run are drawn as ``u32[50, 20, 10]`` (50 clients a
device x 20 steps x 10 rows), the logistic model's kernel as ``u32[60, 10]``.
XLA:CPU emits a loop nest whose innermost trip count is the constant 10, which
LLVM unrolls and vectorises with remainders into ~0.75 MB of optimised IR per
kernel, where the whole rest of the round block is ~1.4 MB. When a draw's
innermost axis is short (at most ``FLAT_MAX_INNER``), this lowering
broadcasts the counters to the output's shape, flattens them to one axis and
runs the same five-step loop along it; the keys stay at their own (batch)
shape and are broadcast at each key injection. Longer innermost axes compile
well as they are and are hashed in place (flattening them would cost an index
division per element at run time). Being elementwise, the hash gives
identical bits for any shape it is applied to; only the loop nest XLA
compiles differs.

**One kernel per step.** The loop carries the counter pair as one 64-bit word
``x0 << 32 | x1`` (unpacked and packed again in each step, in 64-bit mode
inside this lowering only) and one uint32 step counter. Carried as two arrays,
XLA:CPU fused each step into two kernels, x0's and x1's, each recomputing the
other's half of the four rounds; and a ``fori_loop`` carries two counters,
each a small kernel of its own. XLA:CPU's compile cost is mostly per kernel
(a few milliseconds each, however small), so the round block of the default
run compiles in 13% less CPU time (1.82 -> 1.58 CPU s, medians of 5) and the
draws run as fast or faster. The arithmetic is the same, so are the bits.

**Effect of the flat axis** (2-core Intel Xeon, JAX 0.10.2): a ``u32[50, 20, 10]`` draw compiles
in 0.19 s instead of 0.75 s and runs as fast (0.26 against 0.35 ms); the
default ``jaxqfl run``'s round block compiles in 1.4 CPU seconds instead of
2.7; results are byte-identical (``tests/test_threefry_cpu.py``). The whole-run
numbers are in ``benchmarks/results/startup.md``.

**Scope.** :func:`install` registers this lowering for the ``cpu`` platform
only, once per process; ``jaxqfl.keys`` calls it on import, so every program
jaxqfl builds uses it. The registration is JAX's own public mechanism
(``jax.interpreters.mlir.register_lowering``) and is process-wide: a caller's
own CPU draws after ``import jaxqfl.keys`` compile this way too, with the same
bits. GPU and TPU lowerings are untouched.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

_KEY_PARITY = np.uint32(0x1BD11BDA)  # Threefish's key-schedule constant C240
_ROTATIONS = (np.array([13, 15, 26, 6], np.uint32), np.array([17, 29, 16, 24], np.uint32))
FLAT_MAX_INNER = 128  # a draw is hashed along one flat axis when its innermost axis is at most this long
_installed = False


def threefry2x32_flat(k0, k1, x0, x1):
    """The 20-round hash of the module docstring, for uint32 operands broadcast to one shape.

    A rolled five-step loop, as JAX's CPU lowering, along one flat axis when the
    innermost axis is at most ``FLAT_MAX_INNER`` long (else in place); returns
    ``(y0, y1)`` in the broadcast shape.
    """
    shape = np.broadcast_shapes(np.shape(k0), np.shape(k1), np.shape(x0), np.shape(x1))
    n = int(np.prod(shape, dtype=np.int64))
    keys_shape = np.broadcast_shapes(np.shape(k0), np.shape(k1))
    key_shape = (1,) * (len(shape) - len(keys_shape)) + keys_shape  # same rank as the output
    k0 = jnp.broadcast_to(k0, key_shape)
    k1 = jnp.broadcast_to(k1, key_shape)
    ks = (k0, k1, k0 ^ k1 ^ _KEY_PARITY)  # at the keys' own shape: broadcast inside each step

    # Short innermost axes are what XLA:CPU compiles badly; past FLAT_MAX_INNER, the keys' broadcast
    # along a flat axis (an index division per element) costs more at run time than it saves.
    work = (n,) if len(shape) >= 2 and shape[-1] <= FLAT_MAX_INNER else shape

    def flat(a):
        return jnp.broadcast_to(a, shape).reshape(work)

    def rotl(v, r):
        return (v << r) | (v >> (np.uint32(32) - r))

    def pack(hi, lo):  # the pair as one 64-bit word: one loop-carried array, so one kernel per step
        return (hi.astype(jnp.uint64) << np.uint64(32)) | lo.astype(jnp.uint64)

    def unpack(x):
        return (x >> np.uint64(32)).astype(jnp.uint32), x.astype(jnp.uint32)

    def group(carry):  # rounds 4g+1 .. 4g+4, then the key injection g + 1
        g, x, ka, kb, kc, rot, rot_next = carry
        x0, x1 = unpack(x)
        for j in range(4):
            x0 = x0 + x1
            x1 = rotl(x1, rot[j]) ^ x0
        g = g + np.uint32(1)
        x0 = x0 + flat(ka)
        x1 = x1 + flat(kb) + g
        return g, pack(x0, x1), kb, kc, ka, rot_next, rot

    with _x64():  # uint64 words inside this lowering only; operands and results stay uint32
        carry = (np.uint32(0), pack(flat(x0) + flat(ks[0]), flat(x1) + flat(ks[1])), ks[1], ks[2], ks[0],
                 jnp.asarray(_ROTATIONS[0]), jnp.asarray(_ROTATIONS[1]))
        # one uint32 counter (a fori_loop would carry two): each loop-carried scalar is a kernel of its own
        y0, y1 = unpack(jax.lax.while_loop(lambda c: c[0] < np.uint32(5), group, carry)[1])
    return y0.reshape(shape), y1.reshape(shape)


def _x64():
    """A context with 64-bit types on (``jax.enable_x64``; thread-local, so other threads keep their mode)."""
    return jax.enable_x64(True)


def install() -> None:
    """Register :func:`threefry2x32_flat` as the CPU lowering of Threefry-2x32 (once per process)."""
    global _installed
    if not _installed:
        mlir.register_lowering(threefry2x32_p, mlir.lower_fun(threefry2x32_flat, multiple_results=True),
                               platform="cpu")
        _installed = True
