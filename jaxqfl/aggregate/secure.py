"""Secure aggregation, simulated faithfully: SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020).

The server learns the sum of the surviving clients' integer codes and nothing
else. One round, for the cohort's M clients (all inside the round program):

1. AdvertiseKeys (the aggregator's pre-pass): client i draws a key-agreement
   secret ``sk_i`` and a self-mask seed ``b_i`` (fresh each round, from its key
   ``fold_in(client key, AGGREGATE)``) and publishes ``pk_i = 2^sk_i`` and a
   random position tag. The cohort's table ``[C, 3]`` is a ``pmax`` over devices.
2. The graph: members sorted by tag; client at position a is the neighbour of
   the clients at ``a +- 1 .. a +- k/2`` (mod M): a random k-regular (Harary)
   graph for SecAgg+; all M - 1 others for SecAgg. SecAgg+'s k is the smallest even
   k >= 2 ceil(log2 M) whose round fails (some member with fewer than t surviving
   holders) with probability <= 1e-6 at the declared dropout rate (:func:`choose_neighbours`).
3. ShareKeys: i shares ``sk_i`` and ``b_i`` t-of-k among its neighbours (Shamir
   over GF(32749), ``jaxqfl.aggregate.shamir``; holder at position a gets x = a + 1).
4. MaskedInput: i quantizes its update on the cohort's shared scale
   (``integer.py``) to codes ``c_i``, weighs them by its integer weight w_i
   (the algorithm's: its example count or 1; ``max_weight``) and sends, mod 2^b,
   ``y_i = (w_i c_i, w_i) + PRG(b_i) + sum_{j ~ i} sign(i, j) PRG(s_ij)``
   (the weight is one more masked word, so the server learns only the sums),
   ``s_ij = KA(sk_i, pk_j)`` (``sign = +1`` if ``id_i < id_j`` else -1, so
   pairs cancel). A client drops out AFTER masking with probability ``dropout``
   (drawn from its key; the server recomputes the same draw): it sends nothing.
5. Unmasking: for every member the server takes t shares from surviving holders
   and reconstructs ``b_c`` (c survived) or ``sk_c`` (c dropped), then
   ``sum_{surv} (w_i c_i, w_i) = sum y_i - sum_{c surv} PRG(b_c) - sum_{c dropped}
   sum_{j ~ c, j surv} sign(j, c) PRG(KA(sk_c, pk_j))``, and the aggregate is the
   survivors' weighted mean ``decode(sum w_i c_i) / sum w_i``. A member with fewer
   than t surviving holders fails the round: the aggregate is zero (the model
   does not move), server metric ``secagg_failed`` is 1 and the state counts
   ``secagg_failed_rounds`` (the CLI turns it into an error).

The engine's ``"sum"`` reduction adds the masked words as uint32, i.e. mod 2^32,
hence mod 2^b for any b <= 32. The codes come from an :class:`IntegerEncoder`:
a codec's (:func:`codec_encoder`: b is the smallest width holding the signed sum
of M weighted codes, ``2^b > 2 M w_max max|c|``) or distributed DP's noised codes
(``jaxqfl.aggregate.distributed_dp``: b given, wrap-around improbable; every
survivor weighs 1, ``max_weight=None``, which its sensitivity bound needs). A
weight above ``w_max`` would wrap: the round fails instead (server metric
``secagg_weight_overflow``), never a silently wrong sum. With
``min_survivors`` the round also fails when fewer clients survive (the clients
refuse to unmask).

Simulation shortcuts (documented, not hidden): the shares a holder stores are
recomputed on the server side from the sharing client's key (standing in for
the ciphertexts routed through the server); the group and field are 15 bits.
Bit accounting (per-client metric ``uplink_bits``) uses the
sizes of a real deployment with ``secret_bits``-bit keys and secrets: two public
keys, 2k encrypted shares, the b-bit masked codes (and weight) and the shared-scale
statistic (survivors), and k unmasking shares (survivors).

Cost: a client's mask is a scan over its k neighbours, each a P-word PRG draw,
so a round costs O(M k P) PRG words on the clients (O(M^2 P) for SecAgg) and
O(p M k P) on the server for the dropped clients' masks, plus O(M t^2)
field operations for the reconstructions; memory stays O(chunk x P).

References:
  Bonawitz et al. Practical Secure Aggregation for Privacy-Preserving Machine
  Learning. CCS 2017.
  Bell, Bonawitz, Gascon, Lepoint, Raykova. Secure Single-Server Aggregation
  with (Poly)Logarithmic Overhead. CCS 2020.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl import keys
from jaxqfl.aggregate import shamir
from jaxqfl.aggregate.base import Aggregator, CohortStatistics, no_state
from jaxqfl.aggregate.secagg_graph import choose_neighbours, neighbour_offsets, shamir_threshold

PROTOCOLS = ("secagg", "secagg+")
# sub-tags of fold_in(client key, AGGREGATE)
_SK, _SELF, _POLY_SK, _POLY_SELF, _DROP, _TAG = range(6)
_PAIR_BASE, _SELF_BASE = 0x5EC1, 0x5EC2  # PRG key domains of pair and self masks
_NOT_MEMBER = np.iinfo(np.int32).max


class SecureState(NamedTuple):
    failed_rounds: jax.Array  # () int32


def modulus_bits(cohort_size: int, max_abs_code: int) -> int:
    """The smallest b with ``2^b > 2 M max|c|`` (a signed sum of M codes fits mod 2^b)."""
    return max(1, math.ceil(math.log2(2 * cohort_size * max_abs_code + 1)))


def _secret_material(ckey, t):
    """A client's round secrets and sharing polynomials, from ``fold_in(client key, AGGREGATE)``."""
    akey = keys.purpose_key(ckey, keys.AGGREGATE)
    sk = shamir.random_elements(jax.random.fold_in(akey, _SK), (shamir.LIMBS,), low=1)
    seed = shamir.random_elements(jax.random.fold_in(akey, _SELF), (shamir.LIMBS,))
    poly_sk = shamir.random_elements(jax.random.fold_in(akey, _POLY_SK), (t - 1, shamir.LIMBS))
    poly_self = shamir.random_elements(jax.random.fold_in(akey, _POLY_SELF), (t - 1, shamir.LIMBS))
    return sk, seed, poly_sk, poly_self


def _dropped(ckey, dropout):
    u = jax.random.uniform(jax.random.fold_in(keys.purpose_key(ckey, keys.AGGREGATE), _DROP))
    return u < dropout


def _prg(base, limbs, like, modmask):
    """A pytree of uint32 words mod 2^b shaped like ``like``; leaf l drawn from fold_in(seed key, l)."""
    key = shamir.seed_key(jax.random.key(base), limbs)
    leaves, treedef = jax.tree.flatten(like)
    words = [jax.random.bits(jax.random.fold_in(key, i), leaf.shape, jnp.uint32) & modmask
             for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, words)


def _signed_add(acc, words, positive):
    """``acc + words`` if positive else ``acc - words`` (uint32, wrapping), leaf by leaf."""
    return jax.tree.map(lambda a, w: a + jnp.where(positive, w, jnp.uint32(0) - w), acc, words)


def _member_order(table, cohort_size):
    """[M] member ids sorted by (tag, id); non-members (tag < 0) last."""
    tag = jnp.where(table[:, 2] >= 0, table[:, 2], _NOT_MEMBER)
    return jnp.lexsort((jnp.arange(table.shape[0]), tag))[:cohort_size].astype(jnp.int32)


def to_signed(words, bits):
    """Words mod 2^b (uint32) -> the signed int32 in ``[-2^(b-1), 2^(b-1))``."""
    words = words & jnp.uint32((1 << bits) - 1)
    if bits < 32:
        words = jnp.where(words >= jnp.uint32(1 << (bits - 1)), words - jnp.uint32(1 << bits), words)
    return jax.lax.bitcast_convert_type(words, jnp.int32)


class IntegerEncoder(NamedTuple):
    """How a secure sum turns a client's update into integer codes, and a sum of codes back into floats.

    Attributes:
      statistics: ``statistics(update, info) -> pytree``, the client's public statistic;
        the cohort's elementwise maximum (``shared``) is known to every client and the server.
      encode: ``encode(update, shared, info) -> (codes, metrics)``, an int32 pytree of codes
        (summed mod 2^b) and a dict of per-client float32 metrics.
      decode_sum: ``decode_sum(code_sum, shared, survivors) -> pytree``, the float32 sum of the
        survivors' updates from the signed sum of their codes (int32, in ``[-2^(b-1), 2^(b-1))``).
      modulus_bits: b.
    """

    statistics: Callable
    encode: Callable
    decode_sum: Callable
    modulus_bits: int


def codec_encoder(codec, cohort_size: int, max_weight: int = 1) -> IntegerEncoder:
    """The encoder of an integer-summable codec: codes on the cohort's shared scale (``integer.py``).

    b is the smallest width holding the signed sum of M codes weighted up to ``max_weight``,
    ``2^b > 2 M w_max max|c|``.
    """
    isum = getattr(codec, "integer_sum", None)
    if isum is None:
        raise ValueError("secure aggregation needs an uplink codec whose codes can be summed as integers "
                         "(uniform, qsgd or terngrad, with a static bucket size, without error feedback or a Hadamard "
                         "rotation)")
    finite = lambda shared: jax.tree.map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), shared)

    def statistics(update, info):
        del info
        return isum.scale_stats(update)

    def encode(update, shared, info):
        return isum.quantize(update, finite(shared), keys.purpose_key(info.key, keys.UPLINK)), {}

    def decode_sum(code_sum, shared, survivors):
        return isum.dequantize_sum(code_sum, finite(shared), survivors)

    return IntegerEncoder(statistics, encode, decode_sum, modulus_bits(cohort_size * max_weight, isum.max_abs_code))


def secure_sum(codec, *, cohort_size: int, max_weight: int = 1, **kw) -> Aggregator:
    """The survivors' weighted mean, summed under secure aggregation on ``codec``'s integer grid.

    ``secure_sum(codec, num_clients=C, cohort_size=M, max_weight=w, ...)`` is
    ``secure_encoded_sum(codec_encoder(codec, M, w), num_clients=C, cohort_size=M, max_weight=w, ...)``
    (the arguments below). Pass the largest weight the algorithm gives: 1 for uniform
    weighting, the largest client's example count for example weighting.
    """
    _check_max_weight(max_weight)
    return secure_encoded_sum(codec_encoder(codec, cohort_size, max_weight), cohort_size=cohort_size,
                              max_weight=max_weight, **kw)


def _check_max_weight(max_weight):
    if max_weight is not None and (not isinstance(max_weight, (int, np.integer)) or isinstance(max_weight, bool)
                                   or max_weight < 1):
        raise ValueError(f"max_weight must be a positive integer (the largest client weight) or None (every "
                         f"survivor weighs 1), got {max_weight!r}")


def secure_encoded_sum(
    encoder: IntegerEncoder,
    *,
    num_clients: int,
    cohort_size: int,
    protocol: str = "secagg+",
    neighbours: int | None = None,
    threshold: float = 0.5,
    dropout: float = 0.0,
    secret_bits: int = 256,
    failure_probability: float = 1e-6,
    min_survivors: int = 1,
    max_weight: int | None = 1,
) -> Aggregator:
    """The survivors' weighted mean of ``encoder``'s codes, summed under secure aggregation mod 2^b.

    Args:
      encoder: an :class:`IntegerEncoder` (:func:`codec_encoder` for a codec; distributed DP has its own).
      num_clients: C, the population size (the key table of the pre-pass is [C, 3]).
      cohort_size: M, the number of real clients per round (fixed-size sampling).
      protocol: ``"secagg"`` (all pairs) or ``"secagg+"`` (k-regular graph).
      neighbours: k for SecAgg+ (even), overriding the default :func:`choose_neighbours`
        ``(M, dropout, threshold, failure_probability)``.
      threshold: t as a fraction of k: ``t = floor(threshold k) + 1`` (0.5: a strict majority).
      dropout: probability that a client drops out after masking (it also sets SecAgg+'s default k).
      secret_bits: key / secret size of a real deployment, for the bit accounting only.
      failure_probability: the per-round failure bound the default k meets (:func:`choose_neighbours`).
      min_survivors: the round also fails (the clients refuse to unmask) when fewer clients survive.
      max_weight: the largest client weight: the algorithm's weights, rounded to integers in
        ``[0, max_weight]``, weigh the codes inside the masked words (the encoder's b must hold
        ``M max_weight`` codes); a larger weight fails the round. None: every survivor weighs 1
        whatever the algorithm's weights (differential privacy's fixed sensitivity).
    """
    _check_max_weight(max_weight)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not (isinstance(cohort_size, int) and cohort_size >= 2):
        raise ValueError(f"secure aggregation needs a cohort of at least 2 clients, got {cohort_size!r}")
    if cohort_size >= shamir.PRIME:
        raise ValueError(f"cohort_size must be below the field size {shamir.PRIME}, got {cohort_size}")
    if not (0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be a fraction in (0, 1], got {threshold!r}")
    if not (0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if not (isinstance(num_clients, int) and num_clients >= cohort_size):
        raise ValueError(f"num_clients must be an integer >= cohort_size={cohort_size}, got {num_clients!r}")
    M, C = cohort_size, num_clients
    if protocol == "secagg+" and neighbours is None:
        neighbours = choose_neighbours(M, dropout, threshold, failure_probability)
    offsets = neighbour_offsets(protocol, M, neighbours)
    k = len(offsets)
    t = shamir_threshold(k, threshold)
    if not (isinstance(min_survivors, int) and 1 <= min_survivors <= M):
        raise ValueError(f"min_survivors must be an integer in [1, cohort_size={M}], got {min_survivors!r}")
    bits = encoder.modulus_bits
    weighted = max_weight is not None
    if not 1 <= bits <= 32:
        weights = f" weighted up to {max_weight}" if weighted and max_weight > 1 else ""
        raise ValueError(f"the sum of {cohort_size} codes{weights} needs {bits} bits; secure aggregation sums 1 to "
                         f"32-bit words: use coarser codes, a smaller cohort or uniform weighting")
    modmask = jnp.uint32((1 << bits) - 1)
    offsets_j = jnp.asarray(offsets)

    def shared_scale(stats):
        return stats.maxes["scale"]

    def statistics(update, weight, client_state, state, info):
        """AdvertiseKeys: the client's row (pk limbs, tag) at its id in a [C, 3] table (-1 elsewhere)."""
        del weight, client_state, state
        sk, _, _, _ = _secret_material(info.key, t)
        tag = jax.random.randint(jax.random.fold_in(keys.purpose_key(info.key, keys.AGGREGATE), _TAG), (),
                                 0, 2 ** 30, jnp.int32)
        row = jnp.concatenate([shamir.public_key(sk), tag[None]])
        table = jnp.full((C, 3), -1, jnp.int32).at[info.client_id].set(row)
        return CohortStatistics(maxes={"scale": encoder.statistics(update, info), "table": table})

    def _table(stats):
        return stats.maxes["table"]

    def client(update, weight, client_state, state, stats, info):
        del state
        table = _table(stats)
        codes, encoder_metrics = encoder.encode(update, shared_scale(stats), info)
        codes = jax.tree.map(lambda c: c.astype(jnp.int32), codes)
        if weighted:  # w_i c_i and w_i, both masked
            w = jnp.round(weight).astype(jnp.int32)
            over = w > max_weight
            w = jnp.clip(w, 0, max_weight)
            codes = {"codes": jax.tree.map(lambda c: w * c, codes), "weight": w[None]}
        P = sum(c.size for c in jax.tree.leaves(codes))
        members = _member_order(table, M)
        pos = jnp.argmax(members == info.client_id)
        sk, seed, _, _ = _secret_material(info.key, t)

        def add_pair(mask, offset):
            j = members[(pos + offset) % M]
            prg = _prg(_PAIR_BASE, shamir.agree(sk, table[j, :2]), codes, modmask)
            return _signed_add(mask, prg, info.client_id < j), None

        mask, _ = jax.lax.scan(add_pair, _prg(_SELF_BASE, seed, codes, modmask), offsets_j)
        masked = jax.tree.map(lambda c, m: (jax.lax.bitcast_convert_type(c, jnp.uint32) + m) & modmask, codes, mask)
        sends = (~_dropped(info.key, dropout)) & (weight > 0)
        summand = {"masked": jax.tree.map(lambda m: jnp.where(sends, m, jnp.uint32(0)), masked),
                   "survivors": sends.astype(jnp.int32)}
        if weighted:  # a client whose weight does not fit refuses (in the clear): the round fails
            summand["overweight"] = (sends & over).astype(jnp.int32)
        stat_bits = 32 * sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shared_scale(stats)))
        protocol_bits = 2 * secret_bits + 2 * k * secret_bits
        sent_bits = bits * P + stat_bits + k * secret_bits
        uplink = jnp.int32(protocol_bits) + jnp.where(sends, jnp.int32(sent_bits), jnp.int32(0))
        metrics = {**encoder_metrics, "uplink_bits": uplink, "secagg_dropped": (~sends).astype(jnp.float32)}
        return summand, client_state, metrics

    def server(reduced, state, stats, cohort):
        table = _table(stats)
        members = _member_order(table, M)  # [M]
        ckeys = jax.vmap(lambda i: keys.client_key(cohort.key, i))(members)
        survived = ~jax.vmap(lambda ck: _dropped(ck, dropout))(ckeys)  # [M]
        holder_pos = (jnp.arange(M)[:, None] + offsets_j[None]) % M  # [M, k]
        alive = survived[holder_pos]
        enough = jnp.sum(alive, axis=1) >= t
        ok = jnp.all(enough)
        # t surviving holders per member (alive first, stable), evaluated at x = position + 1
        chosen = jnp.take_along_axis(holder_pos, jnp.argsort(~alive, axis=1, stable=True)[:, :t], axis=1)
        xs = chosen + 1

        def recover(args):
            ckey, member_survived, x = args
            sk, seed, poly_sk, poly_self = _secret_material(ckey, t)
            # an honest holder reveals the self-mask share of a survivor, the key share of a dropout
            secret = jnp.where(member_survived, seed, sk)
            poly = jnp.where(member_survived, poly_self, poly_sk)
            return shamir.reconstruct(shamir.evaluate_shares(secret, poly, x), x)

        recovered = jax.lax.map(recover, (ckeys, survived, xs))  # [M, LIMBS]
        total = reduced["masked"]
        zeros = jax.tree.map(jnp.zeros_like, total)

        def remove(total, c):
            def self_mask():
                return _prg(_SELF_BASE, recovered[c], total, modmask)

            def dropped_pairs():
                def one(acc, offset):
                    jpos = (c + offset) % M
                    j = members[jpos]

                    def add():  # what survivor j added for the pair (j, c)
                        prg = _prg(_PAIR_BASE, shamir.agree(recovered[c], table[j, :2]), total, modmask)
                        return _signed_add(acc, prg, j < members[c])

                    return jax.lax.cond(survived[jpos], add, lambda: acc), None

                return jax.lax.scan(one, zeros, offsets_j)[0]

            removal = jax.lax.cond(survived[c], self_mask, dropped_pairs)
            return jax.tree.map(jnp.subtract, total, removal), None

        total, _ = jax.lax.scan(remove, total, jnp.arange(M))
        survivors = reduced["survivors"]
        ok = ok & (survivors >= min_survivors)
        signed = jax.tree.map(lambda w: to_signed(w, bits), total)
        if weighted:
            code_sum, W = signed["codes"], signed["weight"][0]
            overweight = reduced["overweight"]
            ok = ok & (overweight == 0)
        else:
            code_sum, W = signed, survivors
        summed = encoder.decode_sum(code_sum, shared_scale(stats), W)
        mean = jax.tree.map(lambda s: jnp.where(ok, s / jnp.maximum(W, 1).astype(jnp.float32), 0.0), summed)
        failed = jnp.where(ok, 0, 1).astype(jnp.int32)
        new_state = SecureState(failed_rounds=state.failed_rounds + failed)
        metrics = {"secagg_failed": failed.astype(jnp.float32),
                   "secagg_failed_rounds": new_state.failed_rounds.astype(jnp.float32),
                   "secagg_survivors": survivors.astype(jnp.float32)}
        if weighted:
            metrics.update(secagg_weight_sum=W.astype(jnp.float32),
                           secagg_weight_overflow=overweight.astype(jnp.float32))
        return mean, new_state, metrics

    return Aggregator(
        init=lambda params: SecureState(failed_rounds=jnp.int32(0)),
        client_state_init=no_state, reduction="sum", client=client, server=server,
        statistics=statistics, encodes_uplink=True, whole_cohort=True,
    )
