"""Client selection (issue 27, item 3): Power-of-Choice and Oort's utility, ranked inside the round program."""
import json

import jax
import numpy as np
import pytest

from cli_refusals import assert_refused_before_any_work
from cohort_setup import C, F, K, build, numpy_client_losses, pool_of, population, round_uniforms
from jaxqfl import keys, systems
from jaxqfl.cli.main import main


def _round_by_round(sim, seed, rounds):
    """``[(global params before the round, the round's metrics)]``, one round at a time."""
    state, out = sim.init(seed), []
    for _ in range(rounds):
        params = jax.device_get(state.params)
        state, m = sim.run_block(state, 1)
        out.append((params, jax.device_get(m)))
    return out


def _top(scores, ids, ok, M, gap_check=True):
    """The reference pick: the M valid candidates with the largest scores, largest first."""
    s = np.where(ok, scores, -np.inf)
    order = np.argsort(-s, kind="stable")
    if gap_check:  # the M-th and (M+1)-th are well apart: float32 in the engine cannot swap them
        assert s[order[M - 1]] - s[order[M]] > 1e-4 * max(1.0, abs(s[order[M - 1]]))
    return ids[order[:M]]


def test_power_of_choice_picks_the_largest_global_model_losses_among_its_candidates():
    pop, seed, M, D = population(), 1, 3, 8
    sim = build(pop, cohort_size=M, chunk_size=3, num_devices=1, selection=f"power-of-choice:{D}")
    for r, (params, m) in enumerate(_round_by_round(sim, seed, 3)):
        ids, ok = pool_of(seed, r, D)  # D uniform candidates: the same draw as uniform sampling's
        mean, _ = numpy_client_losses(params, pop, ids)
        np.testing.assert_array_equal(m.cohort[0], _top(mean, ids, ok, M))


def test_oort_ranks_by_statistical_utility_times_the_speed_penalty():
    pop, seed, M, P = population(), 2, 3, 0.7
    profile = systems.draw_lognormal_systems(jax.random.key(9), C, 1.0, step_seconds=0.5, bandwidth_bps=2e3)
    spc, bw = np.asarray(profile.seconds_per_step, np.float64), np.asarray(profile.bandwidth, np.float64)
    sim = build(pop, cohort_size=M, chunk_size=3, num_devices=1, selection="oort", availability=f"bernoulli:{P}",
                systems=profile)
    D = min(C, 4 * M)  # Oort's default pool
    penalised = 0
    for r, (params, m) in enumerate(_round_by_round(sim, seed, 3)):
        available = round_uniforms(seed, r, keys.AVAILABILITY) < P
        ids, ok = pool_of(seed, r, D, available)
        _, rms = numpy_client_losses(params, pop, ids)
        n = np.asarray(pop.counts, np.float64)[ids]
        t = 2 * spc[ids] + 2 * 32 * (F * K + K) / bw[ids]  # 2 local steps; the float32 model down and up
        T = np.median(t[ok])
        utility = n * rms * np.where(t > T, (T / t) ** 2, 1.0)
        want = _top(utility, ids, ok, M)
        np.testing.assert_array_equal(m.cohort[0], want)
        penalised += not np.array_equal(np.sort(want), np.sort(_top(n * rms, ids, ok, M, gap_check=False)))
    assert penalised >= 1, "the speed penalty never changed the cohort: the test cannot see it"


def test_the_cohort_and_results_do_not_depend_on_devices_or_chunks():
    pop = population()
    profile = systems.draw_lognormal_systems(jax.random.key(0), C, 0.7)
    runs = []
    for devices, chunk in ((1, 4), (1, 2), (4, 1)):
        sim = build(pop, cohort_size=4, num_devices=devices, chunk_size=chunk, selection="oort:10",
                    availability="bernoulli:0.6", systems=profile)
        runs.append(jax.device_get(sim.run_block(sim.init(4), 4)))
    (s0, m0), rest = runs[0], runs[1:]
    for s, m in rest:
        np.testing.assert_array_equal(m.cohort, m0.cohort)
        np.testing.assert_array_equal(m.server["available"], m0.server["available"])
        for a, b in zip(jax.tree.leaves(s.params), jax.tree.leaves(s0.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


SYNTH = ["--dataset", "synthetic", "--num-clients", "12", "--cohort-size", "4", "--rounds", "2", "--eval-every", "2",
         "--local-steps", "1", "--devices", "2", "--chunk-size", "2", "--no-progress"]


@pytest.mark.parametrize("argv", [["--selection", "power-of-choice:6", "--availability", "FILE"],
                                  ["--selection", "oort", "--speeds", "lognormal:0.5"]])
def test_a_run_with_a_selection_rule_writes_its_metrics(tmp_path, argv):
    avail_file = tmp_path / "avail.csv"
    avail_file.write_text("client,availability\n" + "".join(f"{c},{0.5 if c % 2 else 1}\n" for c in range(12)))
    with_file, argv = "FILE" in argv, [str(avail_file) if a == "FILE" else a for a in argv]
    out = tmp_path / "run"
    assert main(["run", *SYNTH, *argv, "--out", str(out)]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(record["server_available_per_round"]) == 2 and np.isfinite(record["test_loss"])
    s = json.loads((out / "summary.json").read_text())
    assert s["selection"] == argv[1]
    if with_file:
        assert min(record["server_available_per_round"]) >= 6  # the six clients with probability 1


@pytest.mark.parametrize("argv, message", [
    (["--selection", "power-of-choice:3"], "D=3 must be at least --cohort-size 4"),
    (["--selection", "power-of-choice:13"], "D=13 exceeds --num-clients 12"),
    (["--selection", "power-of-choice:x"], "D 'x' is not an integer"),
    (["--selection", "power-of-choice"], "D '' is not an integer"),
    (["--selection", "best"], "none of uniform, power-of-choice:D, oort, oort:D"),
    (["--selection", "oort"], "give --speeds"),
    (["--selection", "power-of-choice:6", "--sampling", "poisson"], "does not combine with --sampling poisson"),
    (["--selection", "power-of-choice:6", "--secure-aggregation", "secagg"], "--secure-aggregation"),
])
def test_bad_selection_flags_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, [*SYNTH, *argv], message)
