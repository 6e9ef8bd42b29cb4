"""Client availability (issue 27, item 1): who can be sampled each round, drawn in the round program from the keys."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_refusals import assert_refused_before_any_work
from cohort_setup import C, SIZES, build, pool_of, population, round_uniforms
from jaxqfl import keys
from jaxqfl.cli.main import main
from jaxqfl.systems import availability as avail


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_always_bernoulli_one_and_uniform_selection_are_todays_program_bit_for_bit():
    pop = population()
    base = build(pop)
    s0, m0 = base.run_block(base.init(3), 3)
    for kw in ({"availability": "always", "selection": "uniform"}, {"availability": avail.bernoulli(1.0)}):
        sim = build(pop, **kw)
        s, m = sim.run_block(sim.init(3), 3)
        assert np.array_equal(m.cohort, m0.cohort) and _same(s.params, s0.params)
        assert np.array_equal(m.uplink_bits, m0.uplink_bits) and np.array_equal(m.total_weight, m0.total_weight)
        if "availability" in kw and kw.get("selection") is None:  # a drawn availability reports who was there
            assert np.array_equal(m.server["available"], np.full(3, C, np.float32))
        else:
            assert set(m.server) == set(m0.server)  # always + uniform: nothing added to the program


def test_bernoulli_cohort_holds_only_available_clients_and_masks_missing_slots_exactly():
    pop, seed, M, R, P = population(), 5, 4, 8, 0.3
    sim = build(pop, cohort_size=M, availability=f"bernoulli:{P}")
    _, m = jax.device_get(sim.run_block(sim.init(seed), R))
    short = 0
    for r in range(R):
        available = round_uniforms(seed, r, keys.AVAILABILITY) < P  # recomputed from the stated keys
        want, ok = pool_of(seed, r, M, available)  # M uniformly among the available: largest cohort uniforms
        real = min(M, int(available.sum()))
        short += real < M
        assert m.server["available"][r] == available.sum()
        np.testing.assert_array_equal(m.cohort[r], np.where(ok, want, -1))
        assert np.all(available[m.cohort[r][:real]]) and np.all(m.cohort[r][real:] == -1)
        for per_slot in (m.uplink_bits[r], m.downlink_bits[r], m.local_steps[r]):  # masked slots: no bits, no work
            assert np.all(per_slot[real:] == 0) and np.all(per_slot[:real] > 0)
        np.testing.assert_allclose(m.total_weight[r], sum(SIZES[c] for c in m.cohort[r][:real]))  # weights 0
        assert m.joined[r] == real and m.overflow[r] == 0
    assert short >= 1, "no round had fewer than M available clients: the masking was not exercised"


def test_bernoulli_frequency_matches_p_and_a_clients_draw_ignores_the_population_size():
    P, R, N = 0.35, 200, 400
    b = avail.bernoulli(P)
    masks = jax.vmap(lambda r: avail.available_mask(b, jax.random.key(1), keys.round_key(jax.random.key(1), r), r, N))(
        jnp.arange(R))
    freq = float(np.mean(masks))
    assert abs(freq - P) < 4 * np.sqrt(P * (1 - P) / (R * N))  # 4 standard errors of the mean of R N Bernoullis
    small = avail.available_mask(b, jax.random.key(1), keys.round_key(jax.random.key(1), 7), 7, 50)
    np.testing.assert_array_equal(small, masks[7][:50])


def test_diurnal_probability_is_the_stated_formula_of_a_per_client_phase():
    run, period, N = jax.random.key(4), 6, 40
    d = avail.diurnal(period)
    phases = np.array([float(jax.random.uniform(keys.purpose_key(keys.derive(run, keys.CLIENT_TAG, c),
                                                                  keys.AVAILABILITY))) for c in range(N)])
    for r in (0, 2, 5, 13):
        want = np.clip(0.5 + 0.5 * np.cos(2 * np.pi * (r / period + phases)), avail.DIURNAL_FLOOR, 1.0)
        np.testing.assert_allclose(d.probability(run, r, N), want, atol=2e-6)
        u = round_uniforms(0, r, keys.AVAILABILITY, N)
        got = avail.available_mask(d, run, keys.round_key(jax.random.key(0), r), r, N)
        sure = np.abs(u - want) > 1e-5  # away from the threshold, float32 and float64 agree
        np.testing.assert_array_equal(np.asarray(got)[sure], (u < want)[sure])
    np.testing.assert_allclose(d.probability(run, period + 2, N), d.probability(run, 2, N), atol=2e-6)  # a day


def test_poisson_sampling_joins_only_available_clients():
    pop, seed, R, P = population(), 2, 4, 0.5
    sim = build(pop, cohort_size=6, sampling="poisson", max_cohort=8, availability=f"bernoulli:{P}")
    _, m = jax.device_get(sim.run_block(sim.init(seed), R))
    q = 6 / C
    for r in range(R):
        available = round_uniforms(seed, r, keys.AVAILABILITY) < P
        joiners = np.flatnonzero(available & (round_uniforms(seed, r, keys.COHORT) < q))
        assert m.joined[r] == joiners.size and m.server["available"][r] == available.sum()
        kept = sorted(int(c) for c in m.cohort[r] if c >= 0)
        assert len(kept) == min(joiners.size, 8) and set(kept) <= set(joiners.tolist())
    assert m.joined.sum() > 0


@pytest.mark.parametrize("rows, message", [
    ("client,p\n0,1\n", "the first line must be 'client,availability'"),
    ("client,availability\n0,0.5\n0,0.2\n1,1\n2,1\n", "line 3: client 0 appears twice"),
    ("client,availability\n0,0.5\n1,1.5\n2,1\n", "line 3: availability must be a probability in [0, 1], got '1.5'"),
    ("client,availability\n0,0.5\n1,nan\n2,1\n", "line 3: availability must be a probability"),
    ("client,availability\n0,0.5\n2,1\n", "no row for client(s) [1]"),
    ("client,availability\n0,0.5\n1,x\n2,1\n", "line 3: expected an integer id and a number"),
    ("client,availability\n0,0.5\n7,1\n2,1\n", "line 3: client id 7 is outside 0..2"),
])
def test_a_bad_availability_file_is_refused_naming_the_row(tmp_path, rows, message):
    path = tmp_path / "avail.csv"
    path.write_text(rows)
    with pytest.raises(ValueError) as e:
        avail.load_availability_csv(path, 3)
    assert message in str(e.value)


def test_an_availability_file_gives_each_client_its_probability(tmp_path):
    path = tmp_path / "avail.csv"
    path.write_text("client,availability\n2,0\n0,1\n1,0.25\n")
    a = avail.parse(str(path), 3)
    np.testing.assert_array_equal(a.probability(None, 0, 3), [1.0, 0.25, 0.0])
    with pytest.raises(ValueError, match="gives 3 clients' probabilities; the population has 16"):
        build(population(), availability=a)


SYNTH = ["--dataset", "synthetic", "--num-clients", "12", "--cohort-size", "4", "--rounds", "4", "--eval-every", "2",
         "--local-steps", "1", "--devices", "2", "--chunk-size", "2", "--no-progress"]


def test_a_run_with_diurnal_availability_writes_the_available_count_per_round(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *SYNTH, "--availability", "diurnal:3", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    counts = [x for r in records for x in r["server_available_per_round"]]
    assert len(counts) == 4 and all(0 <= x <= 12 for x in counts) and len(set(counts)) > 1
    s = json.loads((out / "summary.json").read_text())
    assert s["availability"] == "diurnal:3" and s["mean_available"] == pytest.approx(np.mean(counts))


@pytest.mark.parametrize("argv, message", [
    (["--availability", "bernoulli:0"], "P in (0, 1]"),
    (["--availability", "bernoulli:1.5"], "P in (0, 1]"),
    (["--availability", "bernoulli:x"], "P 'x' is not a number"),
    (["--availability", "diurnal:0"], "PERIOD that is a positive integer"),
    (["--availability", "diurnal:2.5"], "PERIOD '2.5' is not an integer"),
    (["--availability", "nowhere.csv"], "none of always, bernoulli:P"),
    (["--availability", "bernoulli:0.5", "--client-state", "host"], "does not combine with --client-state host"),
    (["--availability", "bernoulli:0.5", "--stream"], "does not combine with --stream"),
    (["--availability", "bernoulli:0.5", "--seeds", "0-1"], "runs one config at a time"),
    (["--availability", "bernoulli:0.5", "--dp-clip", "1", "--dp-noise", "1"], "does not combine with differential"),
])
def test_bad_availability_flags_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, [*SYNTH, *argv], message)


def test_an_availability_file_missing_clients_ends_the_run_before_anything_is_written(tmp_path, capsys):
    path, out = tmp_path / "avail.csv", tmp_path / "out"
    path.write_text("client,availability\n0,1\n")
    try:
        status = main(["run", *SYNTH, "--availability", str(path), "--out", str(out)])
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err
    assert status == 2 and "--availability: " in err and "no row for client(s) [1, 2" in err
    assert not out.exists() or [p.name for p in out.iterdir()] in ([], [".jaxqfl.lock"])
