"""Secure aggregation and central DP per FedBuff buffer (issue 27, item 4).

* The secure sum of each flush's K arrivals (masks among them, their dropouts) equals the plain integer-domain
  mean of the same codec over the flush's survivors, bit for bit, with and without dropouts.
* DP-FedAvg per flush: a zero-update run releases noise of std ``z C / K`` per flush (the synchronous round's
  ``z C / M`` with the buffer as the cohort), and the epsilon the run reports is ``dp_accounting``'s for the
  unsampled Gaussian mechanism composed over the flushes (no amplification by sampling), computed here
  independently.
"""
import json
import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dp_accounting import rdp

from cli_refusals import assert_refused_before_any_work
from jaxqfl import aggregate, algorithms, compress, engine, models, privacy, systems
from jaxqfl.aggregate.base import Aggregator
from jaxqfl.aggregate.secure import _dropped
from jaxqfl.cli.main import main
from populations import classification_population

N, F, L = 10, 4, 3  # clients, features, classes
SIZES = [3, 5, 4, 6, 2, 7, 3, 5, 4, 6]
C, K = 6, 4  # in flight, buffer
CODEC = compress.from_spec("qsgd:8")


def _population():
    return classification_population(SIZES, num_features=F, num_classes=L, seed=5)


def _logreg(pad: int = 0):
    """Softmax regression; ``pad`` extra parameters the model never reads (zero gradient: room to see noise)."""
    def init(key, x):
        p = {"b": jnp.zeros((L,), jnp.float32), "w": 0.3 * jax.random.normal(key, (x.shape[-1], L), jnp.float32)}
        return {**p, "pad": jnp.zeros((pad,), jnp.float32)} if pad else p

    return models.from_functions(init, lambda p, x: x @ p["w"] + p["b"])


def _fedbuff(aggregator, *, lr=0.2, pad=0, uplink=CODEC, sigma=0.8):
    """Speeds differ; links are so fast (1e30 bits/s) that the upload's size, which differs between a secure
    sum and a plain one (protocol traffic), cannot change a float32 finish time: the same arrivals for both."""
    drawn = systems.draw_lognormal_systems(jax.random.key(1), N, sigma)
    speeds = systems.ClientSystems(drawn.seconds_per_step, jnp.full((N,), 1e30, jnp.float32))
    return engine.build_fedbuff(_population(), _logreg(pad), algorithms.fedavg(optax.sgd(lr)),
                                engine.LocalSchedule(local_steps=2, batch_size=3), concurrency=C, buffer=K,
                                staleness="constant", systems=speeds, aggregator=aggregator, uplink=uplink,
                                num_devices=1)


def _survivors_only(inner: Aggregator, dropout: float) -> Aggregator:
    """``inner`` over the clients that do not drop out: a dropped client's weight is 0 (the reference of a
    secure sum with dropouts: the same dropout draw, ``fold_in(client key, AGGREGATE)``)."""
    def prepare(update, weight, client_state, state, stats, info):
        return update, jnp.where(_dropped(info.key, dropout), 0.0, weight), client_state, {}

    return inner._replace(prepare=prepare)


@pytest.mark.parametrize("dropout", [pytest.param(0.0, marks=pytest.mark.slow), 0.3])  # 0.3 covers the no-dropout sums too
def test_secure_sum_per_buffer_equals_the_integer_mean_of_its_survivors(dropout):
    """Four flushes of K = 4 (SecAgg, all pairs, t = 1; FedAvg weighs by example counts, integers up to 7):
    the model bit for bit, the survivors counted."""
    secure = aggregate.secure_sum(CODEC, num_clients=N, cohort_size=K, protocol="secagg", threshold=0.25,
                                  dropout=dropout, max_weight=max(SIZES))
    plain = _survivors_only(aggregate.integer_mean(CODEC), dropout)
    a, b = _fedbuff(secure), _fedbuff(plain)
    sa, ma = a.run_block(a.init(3), 4)
    sb, mb = b.run_block(b.init(3), 4)
    for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(sa.params["w"]), np.asarray(a.init(3).params["w"]))  # it trained
    np.testing.assert_array_equal(np.asarray(ma.cohort), np.asarray(mb.cohort))  # the same arrivals
    dropped = np.asarray(ma.clients["secagg_dropped"])
    assert np.all(np.asarray(ma.server["secagg_failed"]) == 0)
    np.testing.assert_array_equal(np.asarray(ma.server["secagg_survivors"]), K - dropped.sum(1))
    np.testing.assert_array_equal(np.asarray(ma.server["secagg_weight_overflow"]), 0)
    assert (dropped.sum() > 0) == (dropout > 0)  # with dropout 0.3, some arrivals really dropped


def test_dp_noise_per_flush_has_std_z_clip_over_buffer():
    """Zero updates (client lr 0): each flush moves the model by the released mean, pure noise of std
    ``z C / K`` over 20000 coordinates (the synchronous round's ``z C / M``, tests/test_privacy_dp.py), with
    fresh noise every flush."""
    z, clip, pad = 0.8, 1.5, 20000
    sim = _fedbuff(aggregate.dp_mean(clip, z), lr=0.0, pad=pad, uplink=None)
    state = sim.init(4)
    before = np.array(state.params["pad"])
    released = []
    for _ in range(3):
        state, m = sim.run_block(state, 1)
        after = np.array(state.params["pad"])
        released.append(after - before)
        before = after
    for r in released:
        assert abs(r.std() - z * clip / K) < 0.03 * z * clip / K
        assert abs(r.mean()) < 4 * z * clip / K / math.sqrt(pad)
    assert abs(np.corrcoef(released[0], released[1])[0, 1]) < 0.05
    np.testing.assert_allclose(np.asarray(m.server["dp_noise_std"]), z * clip, rtol=1e-6)


def _independent_epsilon(z, delta, flushes):
    """The unsampled Gaussian mechanism, replace-one (sensitivity 2C: multiplier z / 2), over the flushes."""
    acc = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z / 2), flushes))
    return acc.get_epsilon(delta)


def test_async_accounting_is_the_gaussian_composed_over_flushes_without_amplification():
    z, delta = 1.3, 1e-5
    eps = privacy.epsilon(z, delta, 50, num_clients=100, cohort_size=10, sampling="async")
    assert eps == pytest.approx(_independent_epsilon(z, delta, 50), rel=1e-12)
    # it does not depend on the buffer or the population (no sampling), and is above the sampled round's
    assert eps == privacy.epsilon(z, delta, 50, num_clients=1000, cohort_size=3, sampling="async")
    assert eps > privacy.epsilon(z, delta, 50, num_clients=100, cohort_size=10, sampling="fixed")
    calibrated = privacy.noise_for_epsilon(4.0, delta, 50, num_clients=100, cohort_size=10, sampling="async")
    assert _independent_epsilon(calibrated, delta, 50) == pytest.approx(4.0, rel=1e-3)


SYNTH = ["--dataset", "synthetic", "--num-clients", "20", "--rounds", "4", "--eval-every", "2", "--local-steps", "2",
         "--devices", "2", "--no-progress", "--async", "fedbuff", "--concurrency", "6", "--buffer", "3",
         "--speeds", "lognormal:0.8", "--bandwidth", "1e30"]  # links too fast for the upload's size to matter


def test_cli_dp_epsilon_calibrates_and_reports_the_flushes_epsilon(tmp_path):
    out = tmp_path / "dp"
    assert main(["run", *SYNTH, "--dp-clip", "1.0", "--dp-epsilon", "8", "--dp-delta", "1e-4",
                 "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    z = s["dp_noise_multiplier"]
    assert s["dp_epsilon"] == pytest.approx(_independent_epsilon(z, 1e-4, 4), rel=1e-9)
    assert s["dp_epsilon"] == pytest.approx(8.0, rel=1e-3)
    assert "no sampling amplification" in s["dp_accountant"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["dp_epsilon"] for r in records] == pytest.approx([_independent_epsilon(z, 1e-4, 2), s["dp_epsilon"]])


@pytest.mark.slow  # 14 s; the Python test above checks the secure sum per buffer by default
def test_cli_secure_aggregation_per_buffer_equals_integer_aggregation(tmp_path):
    """No dropouts: ``--secure-aggregation`` over each buffer gives the run ``--integer-aggregation`` gives."""
    runs = {}
    for name, flags in (("secure", ["--secure-aggregation", "secagg+"]), ("integer", ["--integer-aggregation"])):
        assert main(["run", *SYNTH, "--uplink", "qsgd:8", *flags, "--out", str(tmp_path / name)]) == 0
        runs[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    keep = lambda r: {k: v for k, v in r.items() if k.startswith("test_") or k in ("round", "train_loss", "sim_time")}
    assert [keep(r) for r in runs["secure"]] == [keep(r) for r in runs["integer"]]
    s = json.loads((tmp_path / "secure" / "summary.json").read_text())
    assert s["secure_aggregation"] == "secagg+" and s["secagg_neighbours"] == 2  # K = 3: the other two


@pytest.mark.slow  # 9 s
def test_cli_distributed_dp_per_buffer_accounts_the_unsampled_skellam_bound(tmp_path):
    """``--dp-distributed skellam``: each buffer of K = 3 is the secure sum's cohort (its Skellam noise split over
    them), and the reported epsilon is the equivalent Gaussian (Agarwal et al. 2021, replace-one: sensitivities
    doubled) composed over the 4 flushes without sampling, recomputed here from the summary's sensitivities."""
    out = tmp_path / "ddp"
    assert main(["run", *SYNTH, "--dp-clip", "1.0", "--dp-noise", "1.0", "--dp-distributed", "skellam",
                 "--dp-delta", "1e-4", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    d2, d1, mu = 2 * s["ddp_l2_sensitivity"], 2 * s["ddp_l1_sensitivity"], s["ddp_central_variance"]
    z_eff = (d2 ** 2 / mu + min((d2 ** 2 + 3 * d1) / mu ** 2, 3 * d1 / mu)) ** -0.5
    assert s["dp_effective_noise_multiplier"] == pytest.approx(z_eff, rel=1e-12)
    acc = rdp.RdpAccountant(orders=list(privacy.distributed.RDP_ORDERS),
                            neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z_eff), 4))
    assert s["dp_epsilon"] == pytest.approx(acc.get_epsilon(1e-4), rel=1e-9)
    assert "no sampling amplification" in s["dp_accountant"] and s["secagg_neighbours"] == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.all(np.asarray(r["server_secagg_failed_per_round"]) == 0) for r in records if
               "server_secagg_failed_per_round" in r)
    assert math.isfinite(records[-1]["test_accuracy"])


REFUSALS = ["--uplink", "qsgd:8"]


@pytest.mark.parametrize("argv, message", [
    (["--dp-clip", "1", "--dp-noise", "1", "--dp-distributed", "skellam", "--uplink", "none", "--staleness", "sqrt"],
     "--staleness sqrt with --dp-clip --dp-distributed"),
    (["--dp-clip", "1", "--dp-noise", "1", "--dp-adaptive-quantile", "0.5"],
     "--dp-adaptive-quantile keeps a per-client indicator"),
    (["--dp-clip", "1", "--dp-noise", "1", "--staleness", "sqrt"], "--staleness sqrt with --dp-clip"),
    (["--secure-aggregation", "secagg", "--staleness", "poly:0.5"],
     "--staleness poly:0.5 with --secure-aggregation"),
])
def test_what_stays_unsupported_is_refused_by_name(tmp_path, capsys, monkeypatch, argv, message):
    import jaxqfl.engine

    monkeypatch.setattr(jaxqfl.engine, "build_fedbuff", lambda *a, **k: (_ for _ in ()).throw(AssertionError()))
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, [*SYNTH, *REFUSALS, *argv], message)
