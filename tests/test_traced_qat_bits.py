"""QAT quantizer bit-widths as traced values: a bit family of tiers costs one pass, not T.

``uniform(bits, max_bits=m)`` with a traced ``bits`` equals the static ``uniform(bits)``
bit for bit (forward and STE gradient); ``quant.bit_family`` finds presets equal up to
those widths; ``models.switch(..., at=family_model(...))`` trains every tier through one
model and equals the ``lax.switch`` over the tiers' models.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, models, quant
from jaxqfl.models.cost import model_cost
from jaxqfl.models.switch import family_model, switch
from populations import classification_population

BITS = (2, 3, 4, 5, 8)
# (symmetric per-channel absmax weights, asymmetric min-max per-example inputs, a clipped-STE grid whose mask matters)
KINDS = {
    "sym_channel": dict(symmetric=True, axis=-1),
    "asym_example": dict(symmetric=False, axis=0),
    "sym_percentile_clipped": dict(symmetric=True, axis=None, scale_method="percentile", percentile=50.0),
}


def _x():
    x = jax.random.normal(jax.random.key(0), (6, 12), jnp.float32) * 3.0
    return x.at[1].set(jnp.abs(x[1])).at[2].set(0.0)  # a one-signed row and an all-zero row


def _loss(q, x):
    w = jnp.linspace(-1.0, 1.0, x.size).reshape(x.shape)
    return jnp.sum(jnp.sin(q.fake_quant(x)) * w)


def _outputs(q, x):
    """fake_quant, its STE gradient through a loss, and the integer codes."""
    return q.fake_quant(x), jax.grad(lambda x: _loss(q, x))(x), q.quantize(x)


def test_traced_bits_equal_the_static_quantizer_forward_and_gradient_under_jit():
    x = _x()
    # one program with every width traced (an int32[5] argument) against one with the static quantizers
    traced = jax.jit(lambda x, bs: {k: [_outputs(quant.uniform(bs[i], max_bits=8, **kw), x) for i in range(len(BITS))]
                                    for k, kw in KINDS.items()})(x, jnp.asarray(BITS, jnp.int32))
    static = jax.jit(lambda x: {k: [_outputs(quant.uniform(b, **kw), x) for b in BITS] for k, kw in KINDS.items()})(x)
    for k, kw in KINDS.items():
        for b, (y, g, qt), (y0, g0, qt0) in zip(BITS, traced[k], static[k]):
            np.testing.assert_array_equal(y, y0, err_msg=f"{k} bits={b}")
            np.testing.assert_array_equal(g, g0, err_msg=f"{k} bits={b}")
            # integer codes: the same values, stored in max_bits' dtype; the same scale (and zero point)
            assert qt.codes.dtype == qt0.codes.dtype == (jnp.int8 if kw["symmetric"] else jnp.uint8)
            for a, a0 in zip(qt, qt0):
                np.testing.assert_array_equal(a, a0, err_msg=f"{k} bits={b}")
        # the clipped STE's mask (|x| beyond (Q + 1/2) s) follows the traced grid: it cuts, and per width differently
        if k == "sym_percentile_clipped":
            cut = [int(np.sum(g == 0)) for _, g, _ in traced[k]]
            assert cut[0] > 0 and len(set(cut)) > 1, cut


def test_traced_bits_per_example_under_vmap_and_wider_codes():
    x = _x()[1:]  # 5 rows, one width each
    bits = jnp.asarray(BITS, jnp.int32)
    for kw in (dict(symmetric=True), dict(symmetric=False)):
        y, g, _ = jax.jit(jax.vmap(lambda r, b: _outputs(quant.uniform(b, max_bits=8, **kw), r)))(x, bits)
        y0, g0 = jax.jit(lambda x: [jnp.stack(v) for v in zip(*[_outputs(quant.uniform(b, **kw), x[i])[:2]
                                                            for i, b in enumerate(BITS)])])(x)
        np.testing.assert_array_equal(y, y0, err_msg=str(kw))
        np.testing.assert_array_equal(g, g0, err_msg=str(kw))
    q = jax.jit(lambda x, b: quant.uniform(b, max_bits=12, symmetric=False).quantize(x).codes)(x, jnp.int32(10))
    assert q.dtype == jnp.uint16
    np.testing.assert_array_equal(q, jax.jit(lambda x: quant.uniform(10, symmetric=False).quantize(x).codes)(x))


def test_traced_quantizer_fields_and_refusals():
    q = quant.uniform(jnp.int32(4), max_bits=8, axis=-1)
    assert q.bits == 8 and int(q.traced_bits) == 4 and q.name.startswith("int<=8/")
    s = quant.uniform(4, max_bits=8, axis=-1)  # a static width under a bound: an ordinary static quantizer
    assert s.bits == 4 and s.traced_bits is None and s.spec == quant.uniform(4, axis=-1).spec
    with pytest.raises(ValueError, match="traced bit-width"):
        quant.static_bits(q, "BOPs")
    with pytest.raises(ValueError, match="binary.*static only"):
        quant.uniform(1, max_bits=8)
    with pytest.raises(ValueError, match=r"bits=9 .*\[2, 8\]"):
        quant.uniform(9, max_bits=8)
    for m in (1, 17, 8.0):
        with pytest.raises(ValueError, match="max_bits"):
            quant.uniform(jnp.int32(4), max_bits=m)
    with pytest.raises(ValueError, match="integer scalar"):
        quant.uniform(jnp.array([4, 8]), max_bits=8)
    with pytest.raises(ValueError, match="integer scalar"):
        quant.uniform(jnp.float32(4), max_bits=8)
    with pytest.raises(ValueError, match="mean_abs"):
        quant.uniform(jnp.int32(4), max_bits=8, scale_method="mean_abs")


def test_bit_families_of_presets():
    fam = quant.bit_family(["full", "w4a8", "full"])
    assert fam is not None and fam.names == ("full", "w4a8", "full")
    assert fam.widths == (((8, 8),), ((4, 8),), ((8, 8),))  # per member, per rule: (weight bits, input bits)
    for other in (["full", "none"], ["none", "none"], ["w4a8", "lsq4"], ["full", "w8"], ["full", "mixed"],
                  ["full", "binary"], ["w4a8", "fp8"], ["w4a8", "half"], ["full", "nf4"]):
        assert quant.bit_family(other) is None, other
    assert quant.bit_family(["mixed", "mixed"]) is not None  # trivially (one member)
    # a static member: that preset's own quantizers; a traced one: the kernel's width traced, the inputs' static
    w4 = fam.policy(1).rules[0]
    assert (w4.weights.name, w4.weights.traced_bits, w4.activations.name) == (
        quant.preset("w4a8").rules[0].weights.name, None, quant.preset("w4a8").rules[0].activations.name)
    t = fam.policy(jnp.int32(1)).rules[0]
    assert t.weights.bits == 8 and int(t.weights.traced_bits) == 4 and t.activations.traced_bits is None
    with pytest.raises(ValueError, match="out of range"):
        fam.policy(3)
    # custom policies join when they differ only in widths; another rounding or axis does not
    pol = lambda b, **kw: quant.Policy((quant.Rule("kernel", quant.uniform(b, axis=-1, **kw), None),), f"w{b}")
    assert quant.bit_family([pol(2), pol(3), pol(16)]).widths == (((2, None),), ((3, None),), ((16, None),))
    assert quant.bit_family([pol(2), pol(3, rounding="stochastic")]) is None
    assert quant.bit_family([pol(2), pol(3, ste="identity")]) is None
    assert family_model(_model, ["full", "w4a8"]) is not None
    assert family_model(_model, ["full", "full"]) is None and family_model(_model, ["full", "none"]) is None


def _model(policy):
    return models.mlp(hidden=(6,), num_outputs=3, policy=policy)


def test_cost_and_export_refuse_a_traced_width():
    fam = quant.bit_family(["full", "w4a8"])
    m = _model(None)
    with pytest.raises(ValueError, match="model_cost.*traced bit-width"):
        model_cost(m, fam.policy(jnp.int32(1)), jnp.zeros((1, 5)))
    params = m.init(jax.random.key(0), jnp.zeros((1, 5)))
    with pytest.raises(ValueError, match="traced bit-width"):
        quant.export(params, fam.policy(jnp.int32(1)))


def _dots(lowered) -> int:
    return len(re.findall(r"stablehlo\.dot_general", lowered.as_text()))


def test_a_bit_family_trains_all_tiers_in_one_pass_equal_to_the_switch():
    presets = ["full", "w4a8"]
    tiered = tuple(_model(p) for p in presets)
    at = family_model(_model, presets)
    params = _model(None).init(jax.random.key(1), jnp.zeros((1, 5)))
    stacked = jax.tree.map(lambda a: jnp.stack([a, 1.5 * a, -a, 0.5 * a]), params)  # 4 clients
    x = jax.random.normal(jax.random.key(2), (4, 7, 5))
    tier = jnp.asarray([0, 1, 1, 0], jnp.int32)

    def grads(use_family):
        def client(p, xb, t):
            m = switch(tiered, t, at=at if use_family else None)
            return jax.value_and_grad(lambda p: jnp.sum(jnp.tanh(m.apply(p, xb))))(p)
        return jax.jit(jax.vmap(client))

    one, per_tier = grads(True), grads(False)
    for a, b in zip(jax.tree.leaves(one(stacked, x, tier)), jax.tree.leaves(per_tier(stacked, x, tier)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # as traced and lowered, the one-pass program holds one forward/backward's matmuls, the switch T = 2 of them
    # (XLA's optimiser then shares part of the switch's backward: 11 dots against 8 compiled, for an MLP)
    n1, nT = _dots(one.lower(stacked, x, tier)), _dots(per_tier.lower(stacked, x, tier))
    assert n1 > 0 and nT == 2 * n1, (n1, nT)


C = 6


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(5)
    return classification_population(rng.integers(3, 9, size=C).tolist(), num_features=5, num_classes=3, seed=5)


def _build(population, tiers, **kw):
    return engine.build(population, _model(None), algorithms.fedavg(optax.sgd(0.3)),
                        engine.LocalSchedule(local_steps=1, batch_size=3), cohort_size=4, num_devices=1, tiers=tiers,
                        **kw)


def test_a_tiered_round_with_a_bit_family_equals_the_switched_round(population):
    presets = ["w4a8", "full"]
    of_client = np.asarray([0, 1, 0, 1, 0, 1], np.int32)
    tiered = tuple(_model(p) for p in presets)
    calls = []

    def at(t):  # the round builds the one-pass model with the client's traced tier
        calls.append(isinstance(t, jax.core.Tracer))
        return family_model(_model, presets)(t)

    out = []
    for model_at in (None, at):
        sim = _build(population, engine.Tiers(of_client, tiered, (None, None), model_at=model_at))
        out.append(jax.device_get(sim.run_block(sim.init(0), 1))[0].params)
    assert calls.count(True) >= 1  # (the build's parameter check calls it once with a concrete tier)
    for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_a_one_pass_model_with_other_parameters_is_refused(population):
    tiered = (_model("full"), _model("w4a8"))
    with pytest.raises(ValueError, match="Tiers.model_at has other parameters"):
        _build(population, engine.Tiers(np.zeros(C, np.int32), tiered, (None, None),
                                        model_at=lambda t: models.mlp(hidden=(7,), num_outputs=3, policy="full")))
