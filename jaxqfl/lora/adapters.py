"""Low-rank adapters on any model, over a frozen base held once (LoRA, Hu et al. 2021).

``adapt(model, base, rank=r, alpha=a, targets=REGEX)`` turns a float
``Model`` and its pretrained ``base`` params into a model whose trainable
params are only the adapters: every kernel ``W`` whose '/'-joined path
matches ``targets`` and that meets its layer input in a matmul
(``dot_general``) gets two factors,

    A: [d_in, r] ~ N(0, 1/d_in)      B: [r, d_out] = 0       (so the adapted model starts as the base)
    y = x W + (alpha / r) (x A) B

with ``d_in`` the size of ``W``'s contracting dimensions at its matmul and
``d_out`` of the others (a ``DenseGeneral`` attention kernel [d, heads, head_dim]
has d_out = heads x head_dim). The low-rank term is computed as ``(x A) B``,
never as a dense ``A B``: a client's memory holds its adapters and their
activations, not a copy of ``W``. The adapters' params mirror the kernels'
paths: ``'<kernel path>/a'`` and ``'<kernel path>/b'``; FL algorithms,
codecs, aggregators (clipping norms, DP noise, bit counts) and sweeps see
only them.

The base is the model's frozen part (``Model.frozen``): stored in
``base_quant`` form (``jaxqfl.lora.base_quant``: float32, bf16, int8, int4 or
NF4 with double quantization, QLoRA, Dettmers et al. 2023) and dequantized
inside every forward. The engine hands it to its programs as an argument,
replicated once per device, and vmaps only the adapters (``Model.bind``), so a
round's peak memory is

    base_bytes + (float base temporaries, shared by the chunk) + chunk x (adapters + optimizer state + activations)

(``tests/test_lora.py`` checks that the compiled round's memory grows with
the chunk by the adapters' and activations' size, not the base's).

How: the float forward ``model.apply(base, x)`` is traced to a jaxpr and
re-evaluated by ``jaxqfl.models.intercept``'s interpreter, which adds the
low-rank term to the output of each matmul whose operand is an adapted
kernel (as QAT adds its quantizers), so any Flax Linen / NNX model or plain
function works. Stated limits: the kernel must reach its matmul unreshaped
(dtype casts allowed; Flax's fused LSTM kernels are concatenated, so they are
refused), a kernel used by a convolution or inside ``while_loop`` / ``cond``
is refused at ``init`` naming it, and models with BatchNorm statistics are
refused.
"""
from __future__ import annotations

import math
import numbers
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxqfl.lora import base_quant
from jaxqfl.models.core import Model
from jaxqfl.models.intercept import _Interpreter, _traced
from jaxqfl.quant.policy import param_paths

A_NAME, B_NAME = "a", "b"
DEFAULT_TARGETS = r"(^|/)kernel$"


def _check(rank, alpha, targets, base_quant_fmt):
    """``(rank, alpha)`` as Python numbers (NumPy scalars taken), and the compiled ``targets``; refusals by name."""
    if not isinstance(rank, numbers.Integral) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"lora.adapt: rank must be a positive integer, got {rank!r}")
    if (not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not math.isfinite(alpha)
            or alpha <= 0):
        raise ValueError(f"lora.adapt: alpha must be a positive number, got {alpha!r}")
    try:
        pattern = re.compile(targets)
    except (re.error, TypeError) as e:
        raise ValueError(f"lora.adapt: targets must be a regular expression on parameter paths, got {targets!r} "
                         f"({e})") from None
    if base_quant_fmt not in base_quant.FORMATS:
        raise ValueError(f"lora.adapt: base_quant must be one of {base_quant.FORMATS}, got {base_quant_fmt!r}")
    return int(rank), float(alpha), pattern


def _delta(x, a, b, x_contract, k_contract, k_shape, kernel_is_lhs: bool):
    """``(x A) B`` laid out like ``dot_general``'s output for the kernel's side (module docstring)."""
    k_free = [d for d in range(len(k_shape)) if d not in k_contract]
    a_r = a.reshape(tuple(k_shape[d] for d in k_contract) + (a.shape[-1],))
    b_r = b.reshape((b.shape[0],) + tuple(k_shape[d] for d in k_free))
    t = lax.dot_general(x, a_r.astype(x.dtype) if x.dtype != a_r.dtype else a_r,
                        ((tuple(x_contract), tuple(range(len(k_contract)))), ((), ())))
    d = jnp.tensordot(t, b_r.astype(t.dtype), axes=([t.ndim - 1], [0]))  # (x free..., kernel free...)
    if kernel_is_lhs:  # dot_general puts the lhs's free dims first
        n_x = t.ndim - 1
        d = jnp.moveaxis(d, tuple(range(n_x, d.ndim)), tuple(range(len(k_free))))
    return d


class _AdaptingInterpreter(_Interpreter):
    """Adds ``scale (x A) B`` to the output of every matmul whose operand is an adapted kernel."""

    def __init__(self, adapters: dict, shapes: dict, scale: float, rank_mask=None):
        super().__init__(binding=None, state={}, key=None, initialising=False)
        self.adapters, self.shapes, self.scale = adapters, shapes, scale
        self.met: dict[str, tuple] = {}  # path -> contracting dims of the kernel at its matmul
        self.refused: dict[str, str] = {}

    def quantize_input(self, layers, x):  # no quantizers here: only the low-rank term
        return x

    def after_op(self, eqn, invals, in_origins, out):
        for side in (0, 1):
            path = in_origins[side]
            if isinstance(path, tuple):  # kernels concatenated into one matmul (Flax's fused LSTM cell)
                for p in path:
                    if p in self.shapes:
                        self.refused[p] = f"is concatenated with {[q for q in path if q != p]} into one matmul"
                continue
            if not isinstance(path, str) or path not in self.shapes:
                continue
            if eqn.primitive.name != "dot_general":
                self.refused[path] = "is used by a convolution (LoRA adapts matmul kernels)"
                continue
            if tuple(invals[side].shape) != self.shapes[path]:
                self.refused[path] = (f"reaches its matmul reshaped to {tuple(invals[side].shape)} "
                                      f"(stored {self.shapes[path]}): adapt it unfused")
                continue
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            if lb or rb:
                self.refused[path] = "meets a batched matmul (dot_general batch dimensions)"
                continue
            k_contract, x_contract = (lc, rc) if side == 0 else (rc, lc)
            self.met.setdefault(path, tuple(k_contract))
            if path not in self.adapters:  # discovery (init): record the layout only
                continue
            ab = self.adapters[path]
            d = _delta(invals[1 - side], ab[A_NAME], ab[B_NAME], x_contract, k_contract, self.shapes[path],
                       side == 0)
            out = out + (self.scale * d).astype(out.dtype)
        return out


def _nested(flat: dict) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def adapter_paths(adapters) -> dict:
    """``{kernel path: {'a': A, 'b': B}}`` of an adapters pytree (the inverse of its nesting)."""
    flat = param_paths(adapters)
    out: dict = {}
    for path, leaf in flat.items():
        kernel, _, name = path.rpartition("/")
        out.setdefault(kernel, {})[name] = leaf
    return out


def full_rank_kernels(adapters) -> dict:
    """``{kernel path: (d_in, d_out)}`` of the adapted kernels whose rank is at least ``min(d_in, d_out)``.

    There ``A B`` (rank <= min(d_in, d_out)) can already be any update of the kernel, so the adapter
    is no longer low-rank: it trains nothing full fine-tuning of that kernel would not, with
    ``r (d_in + d_out)`` parameters where the kernel has ``d_in d_out`` (Hu et al. 2021 take
    ``r << min(d_in, d_out)``). Works on arrays or shapes (``jax.eval_shape`` of ``init``).
    """
    out = {}
    for path, ab in adapter_paths(adapters).items():
        (d_in, rank), (_, d_out) = tuple(ab[A_NAME].shape), tuple(ab[B_NAME].shape)
        if rank >= min(d_in, d_out):
            out[path] = (d_in, d_out)
    return out


def adapt(model: Model, base, *, rank: int, alpha: float | None = None, targets: str = DEFAULT_TARGETS,
          base_quant_format: str = "none") -> Model:
    """The LoRA model of ``model`` on the frozen ``base`` params (module docstring).

    ``alpha`` defaults to ``rank`` (scale 1). ``init(key, sample_x)`` returns the
    adapters only; ``apply(adapters, x, *, key=None)`` runs base + adapters.
    """
    rank, alpha, pattern = _check(rank, rank if alpha is None else alpha, targets, base_quant_format)
    if not isinstance(model, Model):
        raise TypeError(f"lora.adapt takes a jaxqfl.models.Model, got {type(model).__name__}")
    if model.train_apply is not None:
        raise ValueError("lora.adapt: models with BatchNorm statistics are not supported (their statistics "
                         "would be a second trainable state beside the adapters)")
    if model.bind is not None:
        raise ValueError("lora.adapt: the model already has a frozen part (is it adapted already?)")
    if not isinstance(base, dict):
        raise TypeError(f"lora.adapt: base must be the model's params as a nested dict, got {type(base).__name__}")
    base = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
                        else jnp.asarray(a), base)
    leaves = param_paths(base)
    shapes = {p: tuple(a.shape) for p, a in leaves.items() if a.ndim >= 2 and pattern.search(p)}
    if not shapes:
        kernels = sorted(p for p, a in leaves.items() if a.ndim >= 2)
        raise ValueError(f"lora.adapt: targets {targets!r} match no parameter of 2 or more dimensions; "
                         f"the model's are {kernels}")
    scale = float(alpha) / rank
    frozen = base_quant.quantize_base(base, base_quant_format)

    def forward(base_float, adapters_flat, x, key, interp_shapes):
        closed, paths, out_tree = _traced(lambda p, x: model.apply(p, x, key=key), base_float, x)
        interp = _AdaptingInterpreter(adapters_flat, interp_shapes, scale)
        outs = interp.run(closed.jaxpr, closed.consts,
                          [*jax.tree_util.tree_leaves(base_float), *jax.tree_util.tree_leaves(x)],
                          [*paths, *([None] * len(jax.tree_util.tree_leaves(x)))])
        return jax.tree_util.tree_unflatten(out_tree, outs), interp

    def discover(sample_x) -> dict:
        """``{kernel path: its contracting dims at its matmul}`` of the targets, refusing what LoRA cannot adapt."""
        _, interp = forward(base_quant.dequantize_base(frozen), {}, sample_x, None, shapes)
        problems = dict(interp.refused)
        problems.update({p: "never meets an input in a matmul (outside while/cond bodies)"
                         for p in shapes if p not in interp.met and p not in problems})
        if problems:
            listing = "; ".join(f"{p} {why}" for p, why in sorted(problems.items()))
            raise ValueError(f"lora.adapt: targets {targets!r} match kernels LoRA cannot adapt: {listing}. "
                             "Narrow targets to exclude them")
        return dict(sorted(interp.met.items()))

    def init(key, sample_x):
        flat = {}
        for path, k_contract in discover(sample_x).items():
            d_in = math.prod(shapes[path][d] for d in k_contract)
            d_out = math.prod(shapes[path]) // d_in
            k = jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)
            flat[f"{path}/{A_NAME}"] = jax.random.normal(k, (d_in, rank), jnp.float32) / math.sqrt(d_in)
            flat[f"{path}/{B_NAME}"] = jnp.zeros((rank, d_out), jnp.float32)
        return _nested(flat)

    def merge(adapters, sample_x) -> dict:
        """The float params ``W + (alpha/r) A B`` (each product laid out as its kernel) of base and ``adapters``."""
        merged = param_paths(base_quant.dequantize_base(frozen))
        by_kernel = adapter_paths(adapters)
        for path, k_contract in discover(sample_x).items():
            k_shape = shapes[path]
            k_free = [d for d in range(len(k_shape)) if d not in k_contract]
            ab = by_kernel[path]
            product = (jnp.asarray(ab[A_NAME]) @ jnp.asarray(ab[B_NAME])).reshape(
                tuple(k_shape[d] for d in (*k_contract, *k_free)))
            merged[path] = merged[path] + scale * jnp.transpose(product, np.argsort([*k_contract, *k_free]))
        return _nested(merged)

    def bind(frozen_values) -> Model:
        def apply(adapters, x, *, key=None):
            base_float = jax.tree.map(lax.stop_gradient, base_quant.dequantize_base(frozen_values))
            return forward(base_float, adapter_paths(adapters), x, key, shapes)[0]

        return Model(init=init, apply=apply)

    return Model(init=init, apply=bind(frozen).apply, frozen=frozen, bind=_Binder(bind, merge))


class _Binder:
    """``Model.bind`` of an adapted model: ``bind(frozen) -> Model``, and ``merge`` (:func:`merge`)."""

    def __init__(self, bind, merge):
        self._bind, self.merge = bind, merge

    def __call__(self, frozen):
        return self._bind(frozen)


def merge(adapted: Model, adapters, sample_x) -> dict:
    """Base and ``adapters`` of the ``adapt``-ed model as one float params dict of the original model.

    ``W' = W + (alpha / r) A B`` for every adapted kernel (the base dequantized first):
    the original model's ``apply(W', x)`` equals ``adapted.apply(adapters, x)``, so the
    result serves (or is quantized again for serving) with no LoRA code.
    """
    if not isinstance(getattr(adapted, "bind", None), _Binder):
        raise ValueError("lora.merge takes a model made by lora.adapt")
    return adapted.bind.merge(adapters, sample_x)
