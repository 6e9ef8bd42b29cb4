"""A cached chunk pick is re-checked against the round times runs observe (deterministic: times and loads injected)."""
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, models
from jaxqfl.engine import autotune, layout_search, tuning_conditions as tc
from populations import classification_population


def _cache_with(tmp_path, conditions):
    cache = autotune.TuningCache(tmp_path)
    entry = {"chunk": 4}
    if conditions is not None:
        entry["conditions"] = conditions
    cache.put("k", entry)
    return cache


@pytest.mark.parametrize("observed,load_now,agrees", [
    (0.011, 0.5, True),    # as recorded
    (0.030, 0.5, False),   # 3x slower at the same load: the pick is suspect
    (0.004, 0.5, False),   # 2.5x faster: it was timed under a load the OS average missed
    (0.035, 3.0, True),    # 3.5x slower, but 3 runnable processes per core now: expected 0.03
])
def test_an_entry_that_disagrees_with_the_observed_round_time_is_retuned_and_one_that_agrees_is_reused(
        tmp_path, observed, load_now, agrees):
    cache = _cache_with(tmp_path, tc.conditions(0.010, 0.5))
    verdict = tc.recheck(cache, ["k"], observed, load_now, fresh=False)
    assert verdict.agrees is agrees
    reason = tc.stale_reason(cache.get("k"), load_now)
    assert (reason is None) is agrees
    if not agrees:
        assert "disagrees" in reason and cache.get("k")["chunk"] == 4  # kept for the record until re-tuned


def test_a_fresh_search_sets_the_baseline_later_runs_are_compared_with(tmp_path):
    cache = _cache_with(tmp_path, tc.conditions(0.010, 0.2))
    assert tc.recheck(cache, ["k"], 0.015, 0.2, fresh=True).agrees  # the run's rounds cost 1.5x the timed program
    assert cache.get("k")["conditions"]["baseline"] == pytest.approx(1.5)
    assert tc.recheck(cache, ["k"], 0.016, 0.2, fresh=False).expected_seconds == pytest.approx(0.015)
    assert tc.stale_reason(cache.get("k"), 0.2) is None
    assert not tc.recheck(cache, ["k"], 0.040, 0.2, fresh=False).agrees  # 2.7x the baseline
    assert tc.stale_reason(cache.get("k"), 0.2) is not None


def test_an_entry_timed_under_heavy_load_is_retuned_once_the_machine_is_quieter(tmp_path):
    entry = {"chunk": 3, "conditions": tc.conditions(0.02, 3.0)}
    assert "under load 3.00" in tc.stale_reason(entry, 0.8)  # 3x lighter now
    assert tc.stale_reason(entry, 2.0) is None  # still busy: nothing better to measure
    assert tc.stale_reason({"chunk": 3, "conditions": tc.conditions(0.02, 0.9)}, 0.1) is None  # was quiet
    assert tc.stale_reason({"chunk": 3}, 0.1) == "the entry records no tuning conditions"


def test_only_steady_blocks_judge():
    records = [{"round": 10, "seconds": 5.0}, {"round": 20, "seconds": 6.0}, {"round": 30, "seconds": 7.2},
               {"round": 40, "seconds": 8.1}]
    blocks = tc.blocks_of_records(records)
    assert blocks == ([5.0, 1.0, pytest.approx(1.2), pytest.approx(0.9)], [10, 10, 10, 10])
    assert tc.steady_round_seconds(*blocks) == pytest.approx(0.1)  # the first block (first execution) left out
    assert tc.steady_round_seconds(*tc.blocks_of_records(records[:2])) is None
    cache_entry = {"chunk": 2, "conditions": tc.conditions(0.01, 0.0)}
    assert tc.compare(cache_entry, None, 0.0).agrees is None


def test_a_cache_hit_the_runs_disagree_with_is_searched_again(tmp_path, monkeypatch):
    """Through engine.build: hit, a run that disagrees, then a fresh search (its timings are injected)."""
    population = classification_population(np.random.default_rng(0).integers(2, 9, size=40))
    build_args = (population, models.mlp(hidden=(4,), num_outputs=3), algorithms.fedavg(optax.sgd(0.1)),
                  engine.LocalSchedule(local_steps=2, batch_size=3))
    monkeypatch.setenv(autotune.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(layout_search.chunking, "candidate_chunks", lambda per_device, seed, top: [2, 3])
    timings = iter([0.004, 0.003] * 2)  # chunk 2, chunk 3, for each search
    monkeypatch.setattr(layout_search, "measure_layout", lambda *a, **k: next(timings))
    monkeypatch.setattr(layout_search, "duel", lambda timed: {})  # no re-timing: the injected times decide
    monkeypatch.setattr(tc, "machine_load", lambda: 0.1)
    build = lambda: engine.build(*build_args, cohort_size=24, num_devices=2, autotune=True)

    first = build()
    assert not first.tuning["cache_hit"] and first.chunk_size == 3
    steady = [{"round": r, "seconds": 0.003 * r} for r in (2, 4, 6)]  # 12 clients a device: all timed, 3 ms
    assert tc.recheck_run(first.tuning, steady, load_now=0.1).agrees  # the run agrees: reused
    again = build()
    assert again.tuning["cache_hit"] and again.chunk_size == 3
    slow = [{"round": r, "seconds": 0.02 * r} for r in (2, 4, 6)]  # 6.7x the recorded time at the same load
    verdict = tc.recheck_run(again.tuning, slow, load_now=0.1)
    assert verdict.agrees is False
    third = build()
    assert not third.tuning["cache_hit"] and "disagrees" in third.tuning["retuned"]
    assert tc.stale_reason(autotune.TuningCache(tmp_path).get(third.tuning["key"]), 0.1) is None  # replaced
