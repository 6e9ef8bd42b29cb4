"""AdaRound (Nagel et al. 2020, "Up or down? Adaptive rounding for post-training quantization").

Per layer, with the weight grid ``s`` (per output channel) of the policy's symmetric
uniform weight quantizer and codes in ``[-Q, Q]``, each weight rounds down or up:

    W~ = s clip(floor(W / s) + h(V), -Q, Q),   h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)

with ``zeta = 1.1``, ``gamma = -0.1`` (rectified sigmoid). ``V`` minimises the layer's
output reconstruction error on calibration inputs plus a regulariser that drives
``h`` to 0 or 1,

    L(V) = mean (f(x, W) - f(fq_a(x), W~))^2 / E_nearest + lambda mean (1 - |2 h(V) - 1|^beta),

``beta`` annealed linearly from 20 to 2 after a warm-up (20% of the steps, no
regulariser), optimised with Adam (optax). The paper's loss is the same up to
normalisation: here the reconstruction error is divided by that of nearest
rounding (``E_nearest``, on all calibration rows) and the regulariser is a mean,
so one ``lambda`` (default 2) and learning rate (0.1) fit every layer whatever
its output scale and size; short schedules (a few hundred steps, not the
paper's 10k) then still end with ``h`` at 0 or 1. ``V`` starts where ``h(V)`` equals the
fractional part of ``W / s`` (so ``W~ = W`` before rounding). The result rounds
``h`` hard (``V >= 0`` -> up), so every weight moves to ``floor`` or ``ceil`` of its
grid position: at most one grid step from ``W``; the largest-magnitude weight of each
channel keeps its nearest code (``+-Q``), so the exported scale is unchanged.

Each layer's problem is one compiled ``lax.scan`` over optimisation steps, on
``batch_size`` rows drawn per step with replacement (``fold_in`` of ``key`` by the step); layers
have different shapes and run one after the other.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from jaxqfl.quant import graph as g
from jaxqfl.quant import rounding as rnd
from jaxqfl.quant.policy import bind
from jaxqfl.quant.qtensor import static_bits

ZETA, GAMMA = 1.1, -0.1


def _copy(tree):
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def rectified_sigmoid(v):
    return jnp.clip(jax.nn.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _grid(q, kernel):
    """Per-channel scale and code bound ``Q`` of a symmetric uniform weight quantizer."""
    if not (q.name.startswith("int") and "/sym/" in q.name):
        raise ValueError(f"adaround needs a symmetric uniform weight quantizer, got {q.name!r}")
    bits = static_bits(q, "adaround")
    qt = q.quantize(kernel, None)
    return qt.scale, 2 ** (bits - 1) - 1


def adaround_layer(op, kernel, x, weight_q, act_q=None, *, steps: int = 500, batch_size: int = 64,
                   learning_rate: float = 0.1, reg: float = 2.0, warmup: float = 0.2, key=None):
    """AdaRounded kernel of one layer (module docstring): on the grid, within one step of ``kernel``."""
    s, qmax = _grid(weight_q, kernel)
    x = jnp.asarray(x, jnp.float32)
    xq = x if act_q is None else act_q.fake_quant(x, None)
    key = jax.random.key(0) if key is None else key
    return _solve(op, steps, min(batch_size, x.shape[0]), learning_rate, reg, int(warmup * steps), qmax,
                  kernel, s, x, xq, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _solve(op, steps, b, learning_rate, reg, warm, qmax, kernel, s, x, xq_all, key):
    """One layer's AdaRound problem as one program: setup, ``lax.scan`` over Adam steps, hard rounding."""
    n = x.shape[0]
    w = kernel / s
    w_floor = jnp.floor(w)
    rest = jnp.clip(w - w_floor, 0.0, 1.0)
    v0 = -jnp.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)  # h(v0) = rest
    opt = optax.adam(learning_rate)
    nearest = jnp.clip(rnd.round_nearest(w), -qmax, qmax)
    # scale-free: the reconstruction error relative to that of nearest rounding on all rows
    nearest_err = jnp.mean((g.linear(op, x, kernel) - g.linear(op, xq_all, s * nearest)) ** 2)
    norm = 1.0 / jnp.maximum(nearest_err, jnp.finfo(jnp.float32).tiny)

    def soft_kernel(v):
        return s * jnp.clip(w_floor + rectified_sigmoid(v), -qmax, qmax)

    def loss(v, xb, xqb, beta, lam):
        rec = jnp.mean((g.linear(op, xb, kernel) - g.linear(op, xqb, soft_kernel(v))) ** 2) * norm
        h = rectified_sigmoid(v)
        return rec + lam * jnp.mean(1.0 - jnp.abs(2.0 * h - 1.0) ** beta)

    def step(carry, i):
        v, st = carry
        idx = jax.random.randint(jax.random.fold_in(key, i), (b,), 0, n)  # rows with replacement
        t = jnp.clip((i - warm) / max(steps - warm, 1), 0.0, 1.0)
        beta = 20.0 + (2.0 - 20.0) * t
        lam = jnp.where(i < warm, 0.0, reg)
        grad = jax.grad(loss)(v, x[idx], xq_all[idx], beta, lam)
        upd, st = opt.update(grad, st, v)
        return (optax.apply_updates(v, upd), st), None

    (v, _), _ = jax.lax.scan(step, (v0, opt.init(v0)), jnp.arange(steps))
    codes = jnp.clip(w_floor + (v >= 0).astype(w.dtype), -qmax, qmax)
    codes = jnp.where(jnp.abs(nearest) >= qmax, nearest, codes)  # keep each channel's +-Q: same exported scale
    return (codes * s).astype(kernel.dtype)


def adaround(params, policy, inputs: dict, graph, *, steps: int = 500, batch_size: int = 64,
             learning_rate: float = 0.1, reg: float = 2.0, key=None) -> dict:
    """Params with each layer in ``inputs`` AdaRounded (module docstring).

    Args:
      params: float parameters; policy: the quantization policy (gives weight grids and
        input quantizers); inputs: ``{layer path: float input [B, ...]}`` on calibration
        data; graph: the model's ``jaxqfl.quant.graph`` ops.
    Returns:
      a copy of ``params`` whose AdaRounded kernels lie on their quantization grid.
    """
    binding = bind(policy, params)
    out = _copy(params)
    key = jax.random.key(0) if key is None else key
    for i, (path, x) in enumerate(inputs.items()):
        op = g.layer_op(graph, path)
        qw = binding.weight(f"{path}/kernel")
        if qw is None:
            continue
        p = g.node(out, path)
        p["kernel"] = adaround_layer(op, p["kernel"], x, qw, binding.activation(path), steps=steps,
                                     batch_size=batch_size, learning_rate=learning_rate, reg=reg,
                                     key=jax.random.fold_in(key, i))
    return out
