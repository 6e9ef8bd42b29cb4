"""Systems model (issue 27, item 1): per-client speeds/bandwidths and the simulated round time."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxqfl.systems import ClientSystems, draw_lognormal_systems, round_seconds


def test_sigma_zero_gives_equal_clients():
    s = draw_lognormal_systems(jax.random.key(3), 7, 0.0, step_seconds=0.25, bandwidth_bps=2e6)
    np.testing.assert_array_equal(np.asarray(s.seconds_per_step), np.full(7, 0.25, np.float32))
    np.testing.assert_array_equal(np.asarray(s.bandwidth), np.full(7, 2e6, np.float32))


def test_a_clients_draw_depends_on_seed_and_id_only():
    small = draw_lognormal_systems(jax.random.key(5), 4, 0.8)
    large = draw_lognormal_systems(jax.random.key(5), 40, 0.8)
    other = draw_lognormal_systems(jax.random.key(6), 4, 0.8)
    np.testing.assert_array_equal(np.asarray(small.seconds_per_step), np.asarray(large.seconds_per_step)[:4])
    np.testing.assert_array_equal(np.asarray(small.bandwidth), np.asarray(large.bandwidth)[:4])
    assert not np.array_equal(np.asarray(small.seconds_per_step), np.asarray(other.seconds_per_step))


def test_draws_are_lognormal_with_the_given_sigma_and_independent():
    sigma, n = 0.5, 4000
    s = draw_lognormal_systems(jax.random.key(0), n, sigma, step_seconds=2.0, bandwidth_bps=1e5)
    ls, lb = np.log(np.asarray(s.seconds_per_step, np.float64)), np.log(np.asarray(s.bandwidth, np.float64))
    se = sigma / np.sqrt(n)
    assert abs(ls.mean() - np.log(2.0)) < 4 * se and abs(lb.mean() - np.log(1e5)) < 4 * se
    assert abs(ls.std() - sigma) < 0.05 * sigma and abs(lb.std() - sigma) < 0.05 * sigma
    assert abs(np.corrcoef(ls, lb)[0, 1]) < 4 / np.sqrt(n)


def _round_reference(spc, bw, ids, steps, up, down, waited):
    """Loop over clients in NumPy: the slowest waited-for client's compute + traffic / bandwidth."""
    t = 0.0
    for i, c in enumerate(ids):
        if waited[i]:
            t = max(t, steps[i] * spc[c] + (up[i] + down[i]) / bw[c])
    return t


def test_round_seconds_and_clock_equal_a_numpy_reference():
    rng = np.random.default_rng(1)
    systems = draw_lognormal_systems(jax.random.key(2), 12, 1.0, step_seconds=0.1, bandwidth_bps=1e6)
    spc, bw = np.asarray(systems.seconds_per_step, np.float64), np.asarray(systems.bandwidth, np.float64)
    fn = jax.jit(round_seconds)
    clock, clock_ref = jnp.float32(0.0), 0.0
    for _ in range(4):
        ids = rng.choice(12, size=5, replace=False)
        steps = rng.integers(0, 9, size=5)
        up = rng.integers(1_000, 2_000_000, size=5)
        down = rng.integers(1_000, 2_000_000, size=5)
        waited = rng.random(5) < 0.7
        got = fn(systems, jnp.asarray(ids, jnp.int32), jnp.asarray(steps, jnp.int32), jnp.asarray(up, jnp.float32),
                 jnp.asarray(down, jnp.float32), jnp.asarray(waited))
        want = _round_reference(spc, bw, ids, steps, up, down, waited)
        np.testing.assert_allclose(float(got), want, rtol=1e-5)
        clock, clock_ref = clock + got, clock_ref + want
    np.testing.assert_allclose(float(clock), clock_ref, rtol=1e-5)


def test_a_round_waiting_for_nobody_takes_no_time():
    systems = ClientSystems(jnp.ones(3), jnp.ones(3))
    z = jnp.zeros(3, jnp.int32)
    assert float(round_seconds(systems, jnp.arange(3), z + 5, z + 9, z + 9, jnp.zeros(3, bool))) == 0.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_clients=0, sigma=0.5), "num_clients"),
    (dict(num_clients=3, sigma=-0.1), "sigma"),
    (dict(num_clients=3, sigma=float("nan")), "sigma"),
    (dict(num_clients=3, sigma=0.5, step_seconds=0.0), "step_seconds"),
    (dict(num_clients=3, sigma=0.5, bandwidth_bps=float("inf")), "bandwidth_bps"),
])
def test_bad_profiles_are_refused_with_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        draw_lognormal_systems(jax.random.key(0), **kwargs)


def test_a_profile_file_gives_each_client_its_row(tmp_path):
    from jaxqfl.systems import load_systems_csv
    path = tmp_path / "speeds.csv"
    path.write_text("client,seconds_per_step,bandwidth_bps\n2,0.5,3e6\n0,1.5,1e6\n1,0.25,2e5\n")
    s = load_systems_csv(path, 3)
    np.testing.assert_array_equal(np.asarray(s.seconds_per_step), np.float32([1.5, 0.25, 0.5]))
    np.testing.assert_array_equal(np.asarray(s.bandwidth), np.float32([1e6, 2e5, 3e6]))


@pytest.mark.parametrize("body, message", [
    ("id,s,b\n0,1,1\n1,1,1\n", "first line"),
    ("client,seconds_per_step,bandwidth_bps\n0,1,1\n", r"no row for client\(s\) \[1\]"),
    ("client,seconds_per_step,bandwidth_bps\n0,1,1\n0,1,1\n", "appears twice"),
    ("client,seconds_per_step,bandwidth_bps\n0,1,1\n5,1,1\n", "outside 0..1"),
    ("client,seconds_per_step,bandwidth_bps\n0,0,1\n1,1,1\n", "seconds_per_step must be"),
    ("client,seconds_per_step,bandwidth_bps\n0,1,nan\n1,1,1\n", "bandwidth_bps must be"),
    ("client,seconds_per_step,bandwidth_bps\n0,fast,1\n1,1,1\n", "line 2"),
])
def test_a_malformed_profile_file_is_refused_with_the_line(tmp_path, body, message):
    from jaxqfl.systems import load_systems_csv
    path = tmp_path / "speeds.csv"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        load_systems_csv(path, 2)
