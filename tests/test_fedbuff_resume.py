"""A resumed FedBuff run equals the uninterrupted one, bit for bit (issue 27, item 4; the house rule on resume).

The state a FedBuff run carries is more than the server's: the in-flight table (client ids, start and finish
times, start versions, every in-flight client's trained output and typed key) and the last flush time; the CLI
carries the clock (``sim_time``) and the staleness histogram in the checkpoint's record. Checked in Python
(checkpoint after 4 flushes, restore into a template of another seed, 4 more: the whole ``FedBuffState`` and the
records equal the 8-flush run's) and through the CLI (a run stopped by a real SIGTERM after its checkpoint of
flush 2, resumed with ``--resume``, equals the run through once: final params, ``metrics.jsonl`` rows with
``sim_time``, the summary's staleness histogram and clock).
"""
import json
import signal

import jax
import numpy as np
import optax
import pytest

from interrupted_runs import cut_resume_and_full
from jaxqfl import algorithms, compress, engine, systems
from jaxqfl.engine import checkpoint
from jaxqfl.engine.fedbuff import FedBuffState
from test_fedbuff import N, _logreg, _population


def _bytes(state):
    """Every leaf of a state as bytes, typed keys as their key data."""
    data = jax.tree.map(lambda a: jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
                        else a, jax.device_get(state))
    return jax.tree.structure(data), [np.asarray(a).tobytes() for a in jax.tree.leaves(data)]


def test_a_restored_fedbuff_state_continues_as_the_uninterrupted_run_bit_for_bit(tmp_path):
    profile = systems.draw_lognormal_systems(jax.random.key(1), N, 0.8)
    # server momentum (algorithm state), a stochastic uplink codec (uses the clients' keys), stale arrivals
    sim = engine.build_fedbuff(_population(), _logreg(), algorithms.fedavg(optax.sgd(0.2), optax.sgd(1.0, 0.9)),
                               engine.LocalSchedule(local_steps=2, batch_size=3), concurrency=6, buffer=2,
                               staleness="poly:0.5", systems=profile, uplink=compress.from_spec("qsgd:4"),
                               num_devices=2)
    full = engine.run(sim, rounds=8, eval_every=2, seed=4, systems=profile)
    part = engine.run(sim, rounds=4, eval_every=2, seed=4, systems=profile)
    checkpoint.save(tmp_path, part.state, {"records": part.records})
    saved = _bytes(part.state)
    state, meta = checkpoint.restore(tmp_path, sim.init(11))  # a template of another seed: nothing comes from it
    assert isinstance(state, FedBuffState) and _bytes(state) == saved
    assert jax.random.key_impl(state.in_flight.trained.info.key) == jax.random.key_impl(part.state.server.key)
    rest = engine.run(sim, rounds=4, eval_every=2, state=state, systems=profile,
                      totals=engine.RunTotals(part.uplink_bits_total, part.downlink_bits_total,
                                              sim_time=part.sim_time, counts=part.counts))
    assert _bytes(rest.state) == _bytes(full.state)
    assert rest.counts == full.counts and sum(full.counts["staleness"].values()) == 8 * 2  # carried over the resume
    assert rest.sim_time == full.sim_time and rest.uplink_bits_total == full.uplink_bits_total
    strip = lambda recs: [{k: v for k, v in r.items() if k not in engine.driver.TIMING_KEYS} for r in recs]
    assert strip(meta["records"] + rest.records) == strip(full.records)
    # the state is real: stale arrivals, a server momentum, in-flight clients of different versions
    a = jax.device_get(full.state)
    assert max(max(r["server_staleness_mean_per_round"]) for r in full.records) > 0
    assert np.any(np.asarray(jax.tree.leaves(a.server.algorithm_state)[0]) != 0)
    assert len(set(np.asarray(a.in_flight.version).tolist())) > 1 and a.clock > 0


FEDBUFF = ["--dataset", "synthetic", "--num-clients", "12", "--rounds", "6", "--eval-every", "2", "--local-steps",
           "2", "--devices", "2", "--no-progress", "--async", "fedbuff", "--concurrency", "5", "--buffer", "2",
           "--staleness", "sqrt", "--speeds", "lognormal:0.8"]


def _rows_without_time(folder):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in engine.driver.TIMING_KEYS} for r in rows]


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


@pytest.mark.slow
def test_a_fedbuff_run_stopped_and_resumed_equals_the_run_through_once(tmp_path, capsys):
    def inspect(cut):
        return {"summary": _summary(cut), "rounds": checkpoint.all_rounds(cut / "checkpoints"),
                "meta": checkpoint.read_meta(cut / "checkpoints")}

    # SIGTERM arrives while flush 2's checkpoint is written: the run stops there, --resume goes on to flush 6
    cut, full, rcs, stopped = cut_resume_and_full(tmp_path, FEDBUFF, at_step=2, sig=signal.SIGTERM, inspect=inspect)
    assert rcs == (143, 0, 0)
    assert stopped["rounds"] == [2] and stopped["summary"]["rounds"] == 2 and stopped["summary"]["interrupted"]
    assert stopped["meta"]["staleness_histogram"] == stopped["summary"]["staleness_histogram"]
    assert sum(stopped["meta"]["staleness_histogram"].values()) == 2 * 2 and stopped["meta"]["sim_time"] > 0
    a, b = _summary(cut), _summary(full)
    assert a["completed"] and a["rounds"] == 6 and a["resumed_from_round"] == 2
    assert (cut / "final_params.msgpack").read_bytes() == (full / "final_params.msgpack").read_bytes()
    rows = _rows_without_time(cut)
    assert rows == _rows_without_time(full) and [r["round"] for r in rows] == [2, 4, 6]
    assert all(r["sim_time"] > 0 for r in rows)
    assert a["staleness_histogram"] == b["staleness_histogram"] and sum(a["staleness_histogram"].values()) == 6 * 2
    assert any(int(k) > 0 for k in a["staleness_histogram"])  # stale arrivals were counted across the resume
    assert a["staleness_mean"] == b["staleness_mean"] and a["sim_time_total"] == b["sim_time_total"]
    assert a["uplink_bits_total"] == b["uplink_bits_total"] and a["checkpoint"] == str(cut / "checkpoints" / "6")
    assert checkpoint.all_rounds(cut / "checkpoints") == [4, 6]
    printed = capsys.readouterr().out  # the resumed run's and the full run's one-screen summaries
    assert f"checkpoints in {cut / 'checkpoints'}" in printed and "no checkpoints" not in printed
