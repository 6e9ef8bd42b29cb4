"""Sweeps over codecs and QAT presets (issue 26): one program, each config equal to its single run, exact bits."""
import jax
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, compress, engine, models
from jaxqfl.compress.families import families, value_of
from jaxqfl.engine.compilations import CompilationLog
from populations import classification_population

SCHEDULE = engine.LocalSchedule(local_steps=2, batch_size=3)
UPLINKS = ["qsgd:2", "qsgd:8", "topk:0.4+ef"]  # a traced family, and a stateful codec slotted next to it
PRESETS = ["none", "w4a8"]


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(5)
    return classification_population(rng.integers(3, 12, size=12).tolist(), num_features=5, num_classes=3, seed=5)


def _model(preset):
    return models.mlp(hidden=(6,), num_outputs=3, policy=None if preset == "none" else preset)


def fedavg(hp):
    return algorithms.fedavg(optax.sgd(hp["client_lr"]))


def _sweep(population, seeds, num_devices=2, uplinks=UPLINKS):
    members, fams = families(uplinks)
    variants, index = [], {}
    for preset in PRESETS:
        for f, fam in enumerate(fams):
            index[(preset, f)] = len(variants)
            variants.append(engine.SweepVariant(_model(preset), lambda hp, fam=fam: fam.build(hp["uplink_value"])))
    configs = [{"seed": s, "client_lr": 0.2, "variant": index[(p, members[u])],
                "uplink_value": value_of(fams[members[u]], spec), "u": u}
               for p in PRESETS for u, spec in enumerate(uplinks) for s in seeds]
    sim = engine.build_sweep(population, _model("none"), fedavg, SCHEDULE, cohort_size=4, num_devices=num_devices,
                             chunk_size=2, configs=configs, variants=variants)
    return sim, configs


@pytest.mark.slow
def test_each_codec_and_preset_config_equals_its_single_run_and_the_block_compiles_once(population):
    with CompilationLog() as log:
        sim, configs = _sweep(population, [0])
        states, metrics = jax.device_get(sim.run_block(sim.init(), 3))
    assert log.count("jit(sweep_block)") == 1, log.counts()
    assert len(configs) == len(UPLINKS) * len(PRESETS) and sim.trace_count() == 1
    evaluated = sim.evaluate(states)
    for s, c in enumerate(configs):
        preset = PRESETS[s // len(UPLINKS)]
        spec = UPLINKS[c["u"]]
        single = engine.build(population, _model(preset), fedavg({"client_lr": 0.2}), SCHEDULE, cohort_size=4,
                              num_devices=2, chunk_size=2, uplink=None if spec == "none" else compress.from_spec(spec))
        state, m = jax.device_get(single.run_block(single.init(c["seed"]), 3))
        np.testing.assert_array_equal(metrics.uplink_bits[:, s], m.uplink_bits, err_msg=f"{preset} {spec}")
        np.testing.assert_array_equal(metrics.downlink_bits[:, s], m.downlink_bits)
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[s], states.params)), jax.tree.leaves(state.params),
                        strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=f"{preset} {spec}")
        expected = single.evaluate(state.params)  # the config's own model (its preset) evaluates it
        for k, v in expected.items():
            np.testing.assert_allclose(evaluated[s][k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    bits = {UPLINKS[c["u"]]: int(metrics.uplink_bits[0, s].sum()) for s, c in enumerate(configs) if c["seed"] == 0}
    assert bits["qsgd:2"] < bits["qsgd:8"]  # the traced level count reaches the bit count


def test_variants_with_different_parameters_are_refused_by_name(population):
    variants = [engine.SweepVariant(_model("none")), engine.SweepVariant(_model("lsq4"))]
    with pytest.raises(ValueError, match="different structure.*lsq4"):
        engine.build_sweep(population, _model("none"), fedavg, SCHEDULE, cohort_size=4, num_devices=1,
                           configs=[{"seed": 0, "client_lr": 0.1, "variant": 0},
                                    {"seed": 0, "client_lr": 0.1, "variant": 1}], variants=variants)


@pytest.mark.parametrize("variant,match", [(2, "integer in \\[0, 1\\]"), (0.5, "integer in \\[0, 1\\]")])
def test_a_bad_or_missing_variant_is_refused(population, variant, match):
    variants = [engine.SweepVariant(_model("none")), engine.SweepVariant(_model("w8"))]
    with pytest.raises(ValueError, match=match):
        engine.build_sweep(population, _model("none"), fedavg, SCHEDULE, cohort_size=4, num_devices=1,
                           configs=[{"seed": 0, "client_lr": 0.1, "variant": variant}], variants=variants)
    with pytest.raises(ValueError, match="variant 1 has no config"):
        engine.build_sweep(population, _model("none"), fedavg, SCHEDULE, cohort_size=4, num_devices=1,
                           configs=[{"seed": 0, "client_lr": 0.1, "variant": 0}], variants=variants)


@pytest.mark.slow  # the CLI sweep test (qsgd:2,qsgd:16,none) covers it in the default suite
def test_stateless_codecs_and_none_share_one_state_structure(population):
    """No codec keeps a state: ``none`` becomes the identity codec (the same bits), so the variants' states match."""
    sim, configs = _sweep(population, [0], uplinks=["qsgd:2", "none"])
    _, metrics = jax.device_get(sim.run_block(sim.init(), 1))
    single = engine.build(population, _model("w4a8"), fedavg({"client_lr": 0.2}), SCHEDULE, cohort_size=4,
                          num_devices=2, chunk_size=2)
    _, m = jax.device_get(single.run_block(single.init(0), 1))
    np.testing.assert_array_equal(metrics.uplink_bits[:, -1], m.uplink_bits)  # w4a8 x none: float32 bits


@pytest.mark.slow  # CI budget: traced bucket sizes are checked by default at the codec level (test_traced_buckets)
def test_specs_that_differ_in_bucket_size_are_one_variant_and_each_equals_its_single_run(population):
    """``qsgd:2:bucket=4,qsgd:8:bucket=16``: levels and bucket size traced in one variant (uniform's traced
    buckets equal its static codec at the codec level, ``tests/test_traced_buckets.py``)."""
    uplinks = ["qsgd:2:bucket=4", "qsgd:8:bucket=16"]
    members, fams = families(uplinks)
    assert members == (0, 0)
    variants = [engine.SweepVariant(_model("none"), lambda hp, fam=fam: fam.build(hp["uplink_value"])) for fam in fams]
    configs = [{"seed": 0, "client_lr": 0.2, "variant": members[u], "uplink_value": value_of(fams[members[u]], spec)}
               for u, spec in enumerate(uplinks)]
    sim = engine.build_sweep(population, _model("none"), fedavg, SCHEDULE, cohort_size=4, num_devices=2,
                             chunk_size=2, configs=configs, variants=variants)
    states, metrics = jax.device_get(sim.run_block(sim.init(), 2))
    for s, spec in enumerate(uplinks):
        single = engine.build(population, _model("none"), fedavg({"client_lr": 0.2}), SCHEDULE, cohort_size=4,
                              num_devices=2, chunk_size=2, uplink=compress.from_spec(spec))
        state, m = jax.device_get(single.run_block(single.init(0), 2))
        np.testing.assert_array_equal(metrics.uplink_bits[:, s], m.uplink_bits, err_msg=spec)
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[s], states.params)), jax.tree.leaves(state.params),
                        strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=spec)
