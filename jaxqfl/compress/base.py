"""The codec interface and the plumbing every codec shares.

A *codec* compresses a model update (a pytree of float arrays shaped like the
params) for the wire, client -> server (uplink) or server -> client
(downlink). Like an optax ``GradientTransformation`` it is a NamedTuple of pure
functions built by a factory whose arguments are its hyper-parameters::

    codec = qsgd(levels=16, bucket_size=512)
    state = codec.init(params)                         # one client's persistent state
    message, state = codec.encode(delta, state, key)   # client side
    delta_hat = codec.decode(message)                  # server side
    nbits = codec.bits(message)                        # int32 scalar, exact wire cost
    applied = codec.finalize(weighted_mean_of_delta_hats)

Contract (what the round engine may rely on):

* Every function is pure ``jnp`` and works under ``jit`` and ``vmap``: the
  engine vmaps ``encode``/``decode``/``bits`` over the cohort with per-client
  keys and per-client states. The key is a traced argument.
* ``init(params)`` returns the state of ONE client (``()`` when stateless).
  The engine stores ``num_clients`` of them stacked on a leading axis
  (``jaxqfl.engine.state``), gathers the cohort's, vmaps, scatters back.
* A message is a pytree of arrays with static shapes. Codes are stored in the
  narrowest convenient container (``int8``/``uint8``/``uint16``/``bool``);
  ``bits`` counts them at their true width, not the container's.
* ``bits`` depends only on the message's (static) shapes, so it is a
  compile-time constant; call it per message (inside the vmap), not on a
  batch of messages. :func:`bits_per_message` returns the same number as a
  Python ``int`` without running anything.
* ``decode`` returns float32 arrays shaped like the encoded delta
  (``identity`` returns the message itself, in its own dtype).
* Randomness comes only from ``key``: a codec makes one stochastic-rounding
  draw per message for all tensors together (:func:`round_stochastic_all`),
  so its compile time does not grow with the number of tensors.
  Deterministic codecs (``sign``, ``topk``) ignore the key (``None`` is fine).
* Bit totals over many clients and rounds overflow int32 quickly: sum the
  per-message counts in int64 on the host.
* ``finalize`` maps the (weighted) mean of the decoded client updates to what
  the server applies. Identity except for :func:`~jaxqfl.compress.sign`
  (majority vote).
* ``integer_sum`` is ``None`` unless the codec can be aggregated in the
  integer domain (codes summed, one shared scale); see
  :mod:`jaxqfl.compress.integer_sum`.

Wrappers (``error_feedback``, ``hadamard``) take an inner codec and return a
codec; :func:`~jaxqfl.compress.chain` nests them.
"""
from __future__ import annotations

import math
import numbers
import threading
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl import keys
from jaxqfl.quant.rounding import round_stochastic

PyTree = Any
INT32_MAX = 2**31 - 1
FLOAT_BITS = 32  # every scale, norm and kept value travels as a float32
SEED_BITS = 32  # a message seed (randk indices, Hadamard signs) is a uint32
_COUNTING = threading.local()


def _identity(x):
    return x


class Codec(NamedTuple):
    """An update codec: a NamedTuple of pure functions (see module docstring).

    Attributes:
      init: ``init(params) -> state`` for one client (``()`` if stateless).
      encode: ``encode(delta, state, key) -> (message, new_state)``.
      decode: ``decode(message) -> delta`` (float32, shaped like the input).
      bits: ``bits(message) -> int32`` scalar, the exact wire cost.
      finalize: ``finalize(mean_of_decoded) -> delta`` the server applies.
      integer_sum: an :class:`~jaxqfl.compress.integer_sum.IntegerSum` when the
        codec can be summed in the integer domain with a shared scale, else
        ``None``.
    """

    init: Callable
    encode: Callable
    decode: Callable
    bits: Callable
    finalize: Callable = _identity
    integer_sum: Optional[Any] = None


CodecWrapper = Callable[[Codec], Codec]
"""A function ``Codec -> Codec`` (``error_feedback``, ``hadamard``): what :func:`chain` nests."""


def no_state(params) -> tuple:
    """``init`` of a stateless codec."""
    del params
    return ()


def to_bits_scalar(count: int):
    """A static bit count as the int32 scalar ``bits`` returns; refuses to overflow.

    Inside :func:`count_bits` it returns the Python int itself, so wrappers can
    add their own bits to an inner codec's count without int32 arithmetic.

    A codec with a traced parameter (``uniform(bits, max_bits=...)``,
    ``qsgd(levels, max_levels=...)``, a ``bucket_size`` with ``min_bucket_size=...``,
    ``topk(fraction, choices=...)``, ``randk(fraction, choices=...)``) counts its
    bits as a traced int32: that
    count passes through as it is (the codec checked its static bound, see
    :func:`width_bits` and :func:`bounded_total`), :func:`count_bits` refuses
    it and :func:`inner_bits` passes it to a wrapper.
    """
    if isinstance(count, jax.Array):
        return count.astype(jnp.int32)
    count = int(count)
    if getattr(_COUNTING, "depth", 0) > 0:
        return count
    if count > INT32_MAX:
        raise OverflowError(
            f"a message of {count} bits does not fit the int32 that Codec.bits returns; "
            "use jaxqfl.compress.bits_per_message(codec, params), a Python int"
        )
    return jnp.asarray(count, dtype=jnp.int32)


def count_bits(bits_fn: Callable, message) -> int:
    """``bits_fn(message)`` as a Python int (static), for wrappers and host-side accounting."""
    _COUNTING.depth = getattr(_COUNTING, "depth", 0) + 1
    try:
        count = bits_fn(message)
    finally:
        _COUNTING.depth -= 1
    try:
        return int(count)
    except jax.errors.ConcretizationTypeError as err:  # a data-dependent count
        raise TypeError("this codec's bit count depends on the data or on a traced parameter; it has no "
                        "static count") from err


def inner_bits(bits_fn: Callable, message):
    """A wrapper's view of its inner codec's count: a Python int when static, else a traced int32.

    A static count comes from :func:`count_bits` (so the wrapper adds its own bits without
    int32 arithmetic); a count that follows a traced parameter (``qsgd(levels,
    max_levels=...)``, ``topk(fraction, choices=...)``) is ``bits_fn(message)`` itself, whose
    static bound the inner codec checked against int32 overflow (a wrapper's few extra bits
    on top of that bound are not checked).
    """
    _COUNTING.depth = getattr(_COUNTING, "depth", 0) + 1
    try:
        count = bits_fn(message)
    finally:
        _COUNTING.depth -= 1
    if isinstance(count, jax.Array):
        return bits_fn(message)  # outside the counting mode: the inner codec checks its bound
    return int(count)


def width_bits(per_element, elements: int, static_bits: int, max_per_element: int):
    """``per_element * elements + static_bits``: a Python int, or an int32 for a traced ``per_element``.

    For a traced width, refuses at trace time a message whose bound ``max_per_element *
    elements + static_bits`` would overflow the int32 (the static codec's check, made on
    the largest value the traced parameter may take).
    """
    if isinstance(per_element, int):
        return per_element * elements + static_bits
    to_bits_scalar(max_per_element * elements + static_bits)  # raises OverflowError when the bound does not fit
    return jnp.asarray(per_element, jnp.int32) * elements + static_bits


def bounded_total(counts: Sequence, bounds: Sequence):
    """``sum(counts)`` as :func:`to_bits_scalar` returns it, where some counts may be traced int32.

    ``bounds`` are static upper bounds of the counts (the counts at the traced parameter's
    largest value): a traced sum is refused at trace time when ``sum(bounds)`` would overflow
    the int32 (every partial sum is below it), the static codec's check made on the bound.
    """
    total = sum(counts)
    if isinstance(total, jax.Array):
        to_bits_scalar(sum(bounds))  # raises OverflowError when the bound does not fit
    return to_bits_scalar(total)


def bounded_parameter(name: str, value, max_name: str, maximum, *, high: int):
    """``(value, its static bound)`` of a codec parameter that may be traced.

    Without ``maximum``: ``value`` checked as an int in ``[1, high]``, and itself. With it:
    ``maximum`` checked, and ``value`` as an int32 array when traced (a Python int is
    checked against ``maximum``). A traced value cannot be checked here; whoever feeds it
    (``jaxqfl.compress.families``) checks the values on the host, before anything compiles.
    """
    if maximum is None:
        value = check_positive_int(name, value, low=1, high=high)
        return value, value
    maximum = check_positive_int(max_name, maximum, low=1, high=high)
    if isinstance(value, (jax.Array, np.ndarray, np.generic)) and not isinstance(value, np.integer):
        return jnp.asarray(value).astype(jnp.int32), maximum
    return check_positive_int(name, value, low=1, high=maximum), maximum


def numel(array) -> int:
    """Element count from a static shape (works on arrays and ShapeDtypeStructs)."""
    return int(math.prod(array.shape))


def index_bits(n: int) -> int:
    """Bits of a fixed-width index into ``n`` positions: ``ceil(log2 n)`` (0 when n == 1)."""
    return max(0, math.ceil(math.log2(n))) if n > 1 else 0


def draw_seed(key: jax.Array) -> jax.Array:
    """A 32-bit seed (uint32 scalar) to put in a message so the decoder can regenerate draws."""
    return jax.random.bits(key, (), jnp.uint32)


def key_from_seed(seed: jax.Array) -> jax.Array:
    """The key both sides derive from a message's 32-bit seed: ``jaxqfl.keys.seed_key(seed)``."""
    return keys.seed_key(seed)


def split_flat(flat: jax.Array, shapes: Sequence[tuple]) -> list:
    """Cut a 1-D array into consecutive pieces reshaped to ``shapes``."""
    pieces, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        pieces.append(flat[start:start + size].reshape(shape))
        start += size
    return pieces


def concat_flat(arrays: Sequence[jax.Array]) -> jax.Array:
    """All arrays flattened and concatenated (no copy for a single array)."""
    flats = [a.reshape(-1) for a in arrays]
    return flats[0] if len(flats) == 1 else jnp.concatenate(flats)


def round_stochastic_all(positions: Sequence[jax.Array], key: jax.Array) -> list:
    """:func:`~jaxqfl.quant.rounding.round_stochastic` of several arrays with ONE draw.

    The arrays are concatenated, rounded with one call (one uniform per
    element, all from ``key``) and cut back. One random call per message,
    instead of one per tensor, keeps a codec's compile time flat in the number
    of tensors (each threefry call site is compiled on its own).
    """
    if not positions:
        return []
    rounded = round_stochastic(concat_flat(positions), key)
    return split_flat(rounded, [p.shape for p in positions])


def leafwise(
    encode_leaf: Callable,
    decode_leaf: Callable[[Any], jax.Array],
    leaf_bits: Callable[[Any], int],
    message_type: type,
    *,
    prepare_leaf: Optional[Callable] = None,
    finalize: Callable = _identity,
    init: Callable = no_state,
    integer_sum: Any = None,
    leaf_bound: Optional[Callable[[Any], int]] = None,
) -> Codec:
    """A stateless codec that encodes every leaf of the update on its own.

    Two forms:

    * deterministic: ``encode_leaf(x) -> leaf message``;
    * stochastic rounding: ``prepare_leaf(x) -> (position, aux)`` gives the
      real-valued grid position to round (any shape) and whatever the leaf
      needs afterwards; every leaf's position is rounded with one draw
      (:func:`round_stochastic_all`), then ``encode_leaf(rounded, aux) -> leaf
      message``.

    Args:
      decode_leaf: ``leaf message -> float32 array shaped like x``.
      leaf_bits: ``leaf message -> int``, from static shapes only (a traced
        int32 for a codec with a traced parameter).
      leaf_bound: ``leaf message -> int``, a static upper bound of a traced
        ``leaf_bits``; their sum is checked against int32 overflow
        (:func:`bounded_total`).
      message_type: the class of a leaf message; it marks where the per-leaf
        messages sit in the message pytree (same tree structure as the delta).
    """

    def is_leaf_message(node) -> bool:
        return isinstance(node, message_type)

    def encode(delta, state, key):
        leaves, treedef = jax.tree.flatten(delta)
        leaves = [jnp.asarray(x) for x in leaves]
        if prepare_leaf is None:
            messages = [encode_leaf(x) for x in leaves]
        else:
            prepared = [prepare_leaf(x) for x in leaves]
            rounded = round_stochastic_all([position for position, _ in prepared], key)
            messages = [encode_leaf(r, aux) for r, (_, aux) in zip(rounded, prepared)]
        return jax.tree.unflatten(treedef, messages), state

    def decode(message):
        return jax.tree.map(decode_leaf, message, is_leaf=is_leaf_message)

    def bits(message):
        leaves = jax.tree.leaves(message, is_leaf=is_leaf_message)
        if leaf_bound is None:
            return to_bits_scalar(sum(leaf_bits(m) for m in leaves))
        return bounded_total([leaf_bits(m) for m in leaves], [leaf_bound(m) for m in leaves])

    return Codec(init=init, encode=encode, decode=decode, bits=bits, finalize=finalize,
                 integer_sum=integer_sum)


def bits_per_message(codec: Codec, params: PyTree) -> int:
    """The exact bits of one message for updates shaped like ``params``, as a Python int.

    Traces ``init`` and ``encode`` abstractly (nothing is computed) and
    evaluates the codec's static bit formula. Use it for host-side accounting,
    or when a count would overflow the int32 of ``Codec.bits`` (a model beyond
    ~67M float32 parameters sent uncompressed).
    """

    def encode_once(p, key):
        return codec.encode(p, codec.init(p), key)[0]

    message_shapes = jax.eval_shape(encode_once, params, jax.random.key(0))
    return count_bits(codec.bits, message_shapes)


def check_positive_int(name: str, value, *, low: int = 1, high: Optional[int] = None) -> int:
    """``value`` as an int in ``[low, high]``, else a ValueError naming it and the range."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok:
        ok = value >= low and (high is None or value <= high)
    if not ok:
        allowed = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def check_fraction(name: str, value) -> float:
    """``value`` as a float in ``(0, 1]``, else a ValueError."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        ok = math.isfinite(value) and 0.0 < value <= 1.0
    if not ok:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def check_bucket_size(value) -> Optional[int]:
    """A bucket size: ``None`` (one bucket per tensor) or an integer >= 1."""
    if value is None:
        return None
    return check_positive_int("bucket_size", value, low=1)
