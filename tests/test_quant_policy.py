"""Policies: rule resolution, presets, and the errors a wrong policy must raise."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxqfl import models, quant


def _mlp_params(n_hidden=3, width=4):
    m = models.mlp(hidden=(width,) * n_hidden, num_outputs=3)
    return m, jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 5)))


def test_every_preset_binds_to_the_zoo_and_unknown_names_list_the_presets():
    _, shapes = _mlp_params()
    for name in quant.PRESETS:
        b = quant.bind(name, shapes)
        if name == "none":
            assert b.weights == {} and b.activations == {}
        else:
            assert {"Dense_0/kernel", "Dense_3/kernel"} <= set(b.weights)
    with pytest.raises(ValueError, match=r"'int3'.*none, full, half, mixed, w4a8"):
        quant.preset("int3")
    with pytest.raises(ValueError, match="'int3'"):
        models.mlp(policy="int3")


def test_mixed_is_8_bit_at_both_ends_and_4_bit_in_between_in_natural_order():
    _, shapes = _mlp_params(n_hidden=11)  # Dense_0 ... Dense_11: Dense_2 < Dense_10 < Dense_11
    b = quant.bind("mixed", shapes)
    bits = {p: q.bits for p, q in b.weights.items()}
    assert bits["Dense_0/kernel"] == 8 and bits["Dense_11/kernel"] == 8
    assert all(bits[f"Dense_{i}/kernel"] == 4 for i in range(1, 11))
    assert b.activations["Dense_0"].bits == 8 and b.activations["Dense_5"].bits == 4
    assert not any(p.endswith("bias") for p in b.weights)  # biases stay float


def test_first_matching_rule_wins_and_add_puts_user_rules_in_front():
    _, shapes = _mlp_params()
    pol = quant.preset("full").add(r"Dense_1/kernel", quant.uniform(2), None)
    b = quant.bind(pol, shapes)
    assert b.weights["Dense_1/kernel"].bits == 2 and "Dense_1" not in b.activations
    assert b.weights["Dense_2/kernel"].bits == 8 and b.activations["Dense_2"].bits == 8
    pol = quant.preset("full").extend(r"bias$", quant.cast("bf16"))
    b = quant.bind(pol, shapes)
    assert b.weights["Dense_0/bias"].bits == 16 and b.weights["Dense_0/kernel"].bits == 8
    # 'half' covers every parameter, biases included
    assert len(quant.bind("half", shapes).weights) == 8


def test_policy_errors_name_the_bad_value():
    m, shapes = _mlp_params()
    with pytest.raises(ValueError, match=r"rule 'Conv_./kernel' matches no parameter.*Dense_0/bias"):
        quant.bind(quant.Policy((quant.Rule(r"Conv_./kernel", quant.uniform(8)),)), shapes)
    bad = quant.Policy((quant.Rule(r"Dense_0/kernel", quant.uniform(8, axis=2)),))
    with pytest.raises(ValueError, match=r"'Dense_0/kernel' of shape \(5, 4\).*axis=2"):
        quant.bind(bad, shapes)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        quant.bind(quant.Policy((quant.Rule("Dense_(", quant.uniform(8)),)), shapes)
    with pytest.raises(TypeError, match="got int"):
        quant.bind(quant.Policy((quant.Rule("kernel", 8),)), shapes)
    ints = {"Dense_0": {"kernel": jax.ShapeDtypeStruct((3, 2), jnp.int32)}}
    with pytest.raises(TypeError, match=r"'Dense_0/kernel' of integer dtype int32"):
        quant.bind("full", ints)
    # the model reports a non-matching rule when it is bound, at init
    pol = quant.preset("full").add("Conv_0/kernel", quant.uniform(4))
    with pytest.raises(ValueError, match="'Conv_0/kernel' matches no parameter"):
        models.mlp(hidden=(4,), policy=pol).init(jax.random.key(0), jnp.zeros((1, 5)))
    with pytest.raises(TypeError, match="preset name or None"):
        models.mlp(policy=8)


def test_learned_quantizer_state_is_skipped_by_binding():
    m = models.mlp(hidden=(4,), num_outputs=3, policy="lsq4")
    p = m.init(jax.random.key(0), jnp.ones((2, 5)))
    assert set(p["Dense_0"]) == {"kernel", "bias", "kernel:scale"}
    assert set(quant.param_paths(p)) == {"Dense_0/kernel", "Dense_0/bias", "Dense_1/kernel", "Dense_1/bias"}
