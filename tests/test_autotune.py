"""Chunk size by measurement: the search, its budget, its on-disk cache, and results whatever it picks."""
import json
import math
import time
import warnings

import jax
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, models
from jaxqfl.data.population import from_client_indices
from jaxqfl.engine import autotune, chunking, layout_search
from jaxqfl.engine.compilations import CompilationLog

MEASURED = "jit(measured_round)"


class FakeClock:
    """A clock that moves only when a fake measurement says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_measure(clock, round_seconds, cost_seconds, log):
    def measure(chunk):
        log.append(chunk)
        clock.now += cost_seconds
        return round_seconds[chunk]

    return measure


@pytest.mark.parametrize("seed_value", [0, 1, 2, 3])
def test_tuner_picks_the_cheapest_candidate_that_fits_memory(seed_value):
    rng = np.random.default_rng(seed_value)
    candidates = [int(c) for c in rng.permutation(np.arange(1, 13))]
    cost = {c: float(rng.uniform(0.01, 1.0)) for c in candidates}
    fits = {c: bool(rng.random() < 0.6) for c in candidates}
    fits[candidates[0]] = True
    clock, timed = FakeClock(), []
    record = autotune.tune(candidates, fake_measure(clock, cost, 1.0, timed), fits.get, budget_seconds=1e9,
                           timer=clock, prune=False)
    fitting = [c for c in candidates if fits[c]]
    assert record.picked == min(fitting, key=cost.get)
    assert set(timed) == set(fitting)  # a candidate that does not fit is never timed
    assert all(record.skipped[str(c)] == "memory" for c in candidates if not fits[c])
    assert record.seconds == [cost[c] if fits[c] else None for c in candidates]


def test_a_cheap_candidate_that_does_not_fit_memory_is_never_picked():
    cost = {4: 0.5, 8: 0.1, 2: 0.7}
    clock, timed = FakeClock(), []
    record = autotune.tune([4, 8, 2], fake_measure(clock, cost, 1.0, timed), lambda c: c <= 4, 100.0, timer=clock)
    assert record.picked == 4 and 8 not in timed


@pytest.mark.parametrize("budget,cost_each", [(10.0, 3.0), (5.0, 1.0), (2.0, 2.5)])
def test_tuner_stops_within_its_budget(budget, cost_each):
    candidates = list(range(1, 21))
    round_seconds = {c: 1.0 / c for c in candidates}  # always faster further out: no pruning
    clock, timed = FakeClock(), []
    record = autotune.tune(candidates, fake_measure(clock, round_seconds, cost_each, timed), lambda c: True, budget,
                           timer=clock)
    assert len(timed) == max(1, math.floor(budget / cost_each))  # the seed is always timed
    assert record.tuning_seconds <= max(budget, cost_each)
    assert record.picked == min(timed, key=round_seconds.get)
    assert all(record.skipped[str(c)] == "budget" for c in candidates if c not in timed)


def test_the_two_fastest_are_re_timed_side_by_side_and_the_duel_decides():
    search = {1: 0.30, 2: 0.10, 4: 0.12, 8: 0.50}  # 2 looked fastest while the machine was quiet
    duel_times = {2: 0.20, 4: 0.15}  # side by side, 4 wins
    clock, timed, dueled = FakeClock(), [], []

    def confirm(chunks):
        dueled.append(sorted(chunks))
        return {c: duel_times[c] for c in chunks}

    record = autotune.tune([2, 1, 4, 8], fake_measure(clock, search, 1.0, timed), lambda c: True, 1e9,
                           timer=clock, prune=False, confirm=confirm)
    assert dueled == [[2, 4]] and record.picked == 4
    assert record.seconds == [0.20, 0.30, 0.15, 0.50]


def test_pruning_finds_the_minimum_of_a_unimodal_curve_with_fewer_timings():
    per_device, seed = 500, 100
    candidates = chunking.candidate_chunks(per_device, seed, 10**9)
    assert candidates[0] == seed
    round_seconds = {c: (math.log(c) - math.log(50)) ** 2 for c in candidates}  # best at 50
    clock, timed = FakeClock(), []
    record = autotune.tune(candidates, fake_measure(clock, round_seconds, 1.0, timed), lambda c: True, 1e9,
                           timer=clock)
    assert record.picked == min(candidates, key=round_seconds.get)
    assert len(timed) < len(candidates)
    assert "slower neighbour" in record.skipped.values()


def test_candidates_start_at_the_seed_and_stay_within_share_and_memory():
    for per_device, seed, top in [(50, 2, 10**9), (500, 100, 64), (5, 1, 10**9), (5000, 3, 4), (1, 1, 1)]:
        cands = chunking.candidate_chunks(per_device, seed, top)
        assert cands[0] == chunking._balanced(per_device, min(seed, top))
        assert len(set(cands)) == len(cands) <= 6
        assert all(1 <= c <= min(per_device, top) for c in cands)
        assert all(c == chunking._balanced(per_device, c) for c in cands)  # least padding for their chunk count


def test_reported_cache_sizes_are_clamped_to_plausible_values():
    # a 2-core VM reporting its host's 480 MiB L3 (issue 14) is treated as 32 MiB
    assert chunking.clamp_caches(2**20, 480 * 2**20, 2) == (2**20, 32 * 2**20)
    assert chunking.clamp_caches(2**20, 480 * 2**20, 64) == (2**20, 256 * 2**20)  # 4 MiB per core
    assert chunking.clamp_caches(8 * 2**10, 64 * 2**10, 1) == (128 * 2**10, 2**20)
    assert chunking.clamp_caches(64 * 2**20, 96 * 2**20, 2) == (2 * 2**20, 32 * 2**20)


def test_cache_round_trip_survives_corruption_and_never_leaves_a_partial_file(tmp_path):
    cache = autotune.TuningCache(tmp_path)
    key = autotune.cache_key({"a": 1, "b": [2, 3]})
    assert key == autotune.cache_key({"b": [2, 3], "a": 1}) != autotune.cache_key({"a": 2, "b": [2, 3]})
    cache.put(key, {"chunk": 3})
    assert cache.get(key)["chunk"] == 3
    cache.path.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable autotune cache"):
        assert cache.get(key) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache.put(key, {"chunk": 5})
    assert json.loads(cache.path.read_text())[key]["chunk"] == 5
    assert [p.name for p in tmp_path.iterdir()] == [autotune.CACHE_FILE]
    assert autotune.TuningCache(None).get(key) is None


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(autotune.CACHE_DIR_ENV, str(tmp_path / "c"))
    assert autotune.default_cache_dir() == tmp_path / "c"
    monkeypatch.setenv(autotune.CACHE_DIR_ENV, "off")
    assert autotune.default_cache_dir() is None
    monkeypatch.delenv(autotune.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert autotune.default_cache_dir() == tmp_path / "xdg" / "jaxqfl"
    monkeypatch.setenv(autotune.BUDGET_ENV, "-1")
    with pytest.raises(ValueError, match="JAXQFL_AUTOTUNE_BUDGET"):
        autotune.default_budget()


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 9, size=40)
    x = rng.normal(size=(int(sizes.sum()), 6)).astype(np.float32)
    y = rng.integers(0, 3, size=x.shape[0]).astype(np.int32)
    bounds = np.cumsum([0, *sizes])
    idx = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(sizes))]
    return from_client_indices(x, y, idx, x[:10], y[:10], 3)


def _args(population, hidden=4):
    return (population, models.mlp(hidden=(hidden,), num_outputs=3), algorithms.fedavg(optax.sgd(0.1)),
            engine.LocalSchedule(local_steps=2, batch_size=3))


def test_second_build_reads_the_cache_and_a_different_key_tunes_again(population, tmp_path, monkeypatch):
    monkeypatch.setenv(autotune.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(autotune.BUDGET_ENV, "60")
    real_candidates = chunking.candidate_chunks
    monkeypatch.setattr(layout_search.chunking, "candidate_chunks", lambda *a: real_candidates(*a)[:2])
    with CompilationLog() as first:
        sim = engine.build(*_args(population), cohort_size=24, num_devices=2, autotune=True)
    t = sim.tuning
    assert not t["cache_hit"] and first.count(MEASURED) == sum(s is not None for s in t["seconds"]) >= 2
    assert sim.chunk_size == t["picked"] and t["seconds"][t["candidates"].index(t["picked"])] == min(
        s for s in t["seconds"] if s is not None)
    with CompilationLog() as second:
        again = engine.build(*_args(population), cohort_size=24, num_devices=2, autotune=True)
    assert second.count() == 0, second.counts()
    assert again.tuning["cache_hit"] and again.chunk_size == sim.chunk_size and again.tuning["key"] == t["key"]
    with CompilationLog() as other:  # another model shape is another key
        wider = engine.build(*_args(population, hidden=5), cohort_size=24, num_devices=2, autotune=True)
    assert not wider.tuning["cache_hit"] and other.count(MEASURED) >= 1 and wider.tuning["key"] != t["key"]
    with CompilationLog() as off:  # tuning off: the cost model, nothing timed
        modelled = engine.build(*_args(population), cohort_size=24, num_devices=2, autotune=False)
    assert modelled.tuning is None and off.count(MEASURED) == 0


@pytest.mark.slow
def test_results_are_the_same_whatever_chunk_the_tuner_picks(population, monkeypatch):
    """The tuner's pick (forced by a fake timing) changes the layout, not the round's result."""
    reference = engine.build(*_args(population), cohort_size=24, num_devices=2, chunk_size=12, autotune=False)
    ref_state, ref_metrics = reference.run_block(reference.init(0), 2)
    real_round_program = layout_search.round_program
    for favourite in (1, 5):
        layouts = []

        def recording_round_program(*a, **k):
            layouts.append(a[6].chunk)  # the candidate layout each measured program is built for
            return real_round_program(*a, **k)

        def fake_measure_layout(lowered, init_state, data, **_):
            return 0.001 if layouts.pop(0) == favourite else 1.0

        with monkeypatch.context() as m:
            m.setenv(autotune.CACHE_DIR_ENV, "off")
            m.setattr(layout_search, "measure_layout", fake_measure_layout)
            m.setattr(layout_search, "round_program", recording_round_program)
            m.setattr(layout_search.chunking, "candidate_chunks", lambda per_device, seed, top: [2, favourite])
            sim = engine.build(*_args(population), cohort_size=24, num_devices=2, autotune=True)
        assert sim.chunk_size == favourite and sim.tuning["picked"] == favourite
        state, metrics = sim.run_block(sim.init(0), 2)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
        np.testing.assert_allclose(metrics.train_loss, ref_metrics.train_loss, rtol=1e-6)


@pytest.mark.slow
def test_cli_writes_the_search_into_summary_and_prints_it(tmp_path, monkeypatch, capsys):
    from jaxqfl.cli.main import main

    monkeypatch.setenv(autotune.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(autotune.BUDGET_ENV, "0")  # the seed alone: one compilation
    argv = ["run", "--num-clients", "30", "--cohort-size", "6", "--rounds", "1", "--eval-every", "1",
            "--local-steps", "2", "--devices", "2", "--no-progress", "--verbose"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--chunk-size", "auto", "--autotune", "on"]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    t = summary["tuning"]
    assert summary["chunk_size"] == t["picked"] == t["candidates"][0] and not t["cache_hit"]
    assert summary["chunk_size_from"] == "autotune" and t["seconds"][0] > 0
    assert "autotune: chunk" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "b"), "--autotune", "on"]) == 0  # the same shape: from the cache
    again = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert again["tuning"]["cache_hit"] and again["chunk_size_from"] == "autotune, cache hit"


@pytest.mark.parametrize("argv,message", [(["--chunk-size", "0"], "'auto' or a positive integer"),
                                          (["--autotune", "maybe"], "'on' or 'off'")])
def test_cli_refuses_bad_chunk_and_autotune_values(tmp_path, capsys, argv, message):
    from jaxqfl.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--out", str(tmp_path / "o"), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_bench_writes_a_fresh_folder_and_sweep_refuses_a_fixed_chunk():
    import argparse

    from jaxqfl.cli.bench_command import add_arguments, validate

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--workloads", "tiny"])
    validate(parser, args)
    assert args.out.startswith("runs/bench-") and "benchmarks" not in args.out
    args = parser.parse_args(["--chunk-sweep", "--chunk-size", "4"])
    with pytest.raises(SystemExit):
        validate(parser, args)


@pytest.mark.slow
def test_chunk_sweep_times_every_candidate_and_names_the_tuners_pick(population, monkeypatch, tmp_path):
    from jaxqfl.bench import sweep
    from jaxqfl.bench.workloads import Workload

    monkeypatch.setenv(autotune.CACHE_DIR_ENV, "off")
    monkeypatch.setenv(autotune.BUDGET_ENV, "0")  # the tuner times its seed only
    monkeypatch.setattr(layout_search.chunking, "candidate_chunks", lambda per_device, seed, top: [3, 6])
    w = Workload("t", "test", *_args(population), 12)
    r = sweep.sweep_workload(w, rounds=2, num_devices=2, run_loop=False)  # the loop is tested in test_bench.py
    assert r["candidates"] == [3, 6] and set(r["round_s"]) == {"3", "6"}
    assert r["tuned_chunk"] == 3 and r["skipped"] == {"6": "budget"} and r["best_round_s"] == min(r["round_s"].values())
    assert r["tuned_over_best"] >= 1.0 and all(len(r["round_times_s"][c]) == 2 for c in ("3", "6"))
    assert "| t | **3: " in sweep.markdown_table([r])
    json_path, _ = sweep.write(tmp_path, "s", {"machine": {"cpu": "x", "cpu_cores": 2, "jax": "j", "jaxlib": "j",
                                                           "backend": "cpu", "num_devices": 2},
                                               "peaks": {"flops": 1e9, "bandwidth": 1e9}, "results": [r]})
    assert json.loads(json_path.read_text())["results"][0]["tuned_chunk"] == r["tuned_chunk"]


@pytest.mark.parametrize("faster", [1, pytest.param(8, marks=pytest.mark.slow)])
def test_cpu_device_split_is_tuned_the_faster_mesh_is_picked_cached_and_results_do_not_change(
        population, monkeypatch, tmp_path, faster):
    """With no device count fixed, the tuner times the all-device mesh and a one-device mesh (faked
    times: ``faster`` devices win), picks the faster, caches the choice, and computes the same round."""
    from jaxqfl.engine import device_split

    class FakeTimedRound:  # the seconds of a round depend only on the mesh it runs on
        def __init__(self, lowered, init_state, data):
            self.devices = jax.tree.leaves(init_state)[0].sharding.mesh.devices.size

        def __call__(self):
            return 0.001 if self.devices == faster else 0.002

    assert device_split.split_candidates(None) == [8, 1] and device_split.split_candidates(2) == []
    monkeypatch.setenv(autotune.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(layout_search, "TimedRound", FakeTimedRound)
    monkeypatch.setattr(layout_search.chunking, "candidate_chunks", lambda per_device, seed, top: [seed])
    sim = engine.build(*_args(population), cohort_size=24, autotune=True)
    split = sim.tuning["device_split"]
    assert sim.num_devices == split["picked"] == faster and split["candidates"] == [8, 1] and not split["cache_hit"]
    assert split["seconds"][split["candidates"].index(faster)] < max(split["seconds"])
    with CompilationLog() as second:
        again = engine.build(*_args(population), cohort_size=24, autotune=True)
    assert second.count(MEASURED) == 0 and again.tuning["device_split"]["cache_hit"]
    assert again.num_devices == faster and again.chunk_size == sim.chunk_size
    reference = engine.build(*_args(population), cohort_size=24, num_devices=2, chunk_size=3, autotune=False)
    ref_state, _ = reference.run_block(reference.init(0), 2)
    state, _ = sim.run_block(sim.init(0), 2)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_a_short_run_does_not_wait_for_a_search_and_a_long_one_searches(tmp_path, monkeypatch):
    """``jaxqfl.engine.tuning_rule``: search iff R x the round's FLOP/byte floor at nominal peaks >= 30 s."""
    from jaxqfl import algorithms, data, models
    from jaxqfl.bench.cost import round_cost
    from jaxqfl.cli.main import main
    from jaxqfl.engine import checkpoint, tuning_rule
    from jaxqfl.engine.schedule import LocalSchedule

    pop = data.build("synthetic", num_clients=30, seed=0)
    model, alg = models.logistic_regression(10), algorithms.fedavg(optax.sgd(0.1))
    schedule = LocalSchedule(local_steps=2, batch_size=8)
    cost = round_cost(pop, model, alg, schedule, 6)
    flops, bandwidth = tuning_rule.nominal_peaks("cpu", 2)
    floor = max(cost.flops / flops, cost.bytes / bandwidth)
    enough = int(np.ceil(tuning_rule.MIN_TRAINING_SECONDS / floor))
    decide = lambda rounds: tuning_rule.decide(pop, model, alg, schedule, cohort_size=6, rounds=rounds,
                                               platform="cpu", num_devices=2)
    short, long = decide(enough - 1), decide(enough)
    assert not short.tune and long.tune and long.floor_seconds == pytest.approx(enough * floor)
    assert "under the 30 s" in short.reason
    # the CLI: a short run takes the cost model's pick at once (no search); --autotune on still searches
    monkeypatch.setenv(autotune.AUTOTUNE_ENV, "on")
    monkeypatch.setenv(autotune.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(autotune.BUDGET_ENV, "0")
    argv = ["run", "--num-clients", "30", "--cohort-size", "6", "--rounds", "2", "--eval-every", "2",
            "--local-steps", "2", "--devices", "2", "--no-progress"]
    called = time.time()
    assert main([*argv, "--out", str(tmp_path / "short")]) == 0
    short_wall = time.time() - called
    s = json.loads((tmp_path / "short" / "summary.json").read_text())
    assert s["tuning"] is None and "no search" in s["chunk_size_from"] and "under the 30 s" in s["tuning_rule"]
    # startup: from the main() call to the first round, holding the data, the rule's decision and the compilation,
    # and none of the rounds, the evaluation or the writing after them
    parts = s["data_seconds"] + s["tuning_seconds"] + s["compile_seconds"]
    assert s["startup_from"] == "jaxqfl.cli.main.main() call"
    assert s["tuning_seconds"] > 0  # the rule counted the round's work (no search)
    assert parts <= s["startup_seconds"] <= short_wall - s["rounds"] * s["seconds_per_round"]
    assert main([*argv, "--autotune", "on", "--out", str(tmp_path / "on")]) == 0
    t = json.loads((tmp_path / "on" / "summary.json").read_text())
    assert t["tuning"] is not None and t["tuning_rule"] is None
    searched = (t["tuning"].get("device_split") or t["tuning"])["tuning_seconds"]
    assert t["tuning_seconds"] == searched > 0
    assert t["data_seconds"] + t["tuning_seconds"] + t["compile_seconds"] <= t["startup_seconds"]
    # the search changes where the clients run, never what they compute
    short, tuned = (checkpoint.load_final_model(tmp_path / d) for d in ("short", "on"))
    for a, b in zip(jax.tree.leaves(short), jax.tree.leaves(tuned)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert t["final_accuracy"] == pytest.approx(s["final_accuracy"], abs=1e-6)
