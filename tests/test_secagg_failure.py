"""Secure aggregation that must fail is refused before any work; a failure at run time has its own exit status."""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxqfl import compress
from jaxqfl.aggregate import secagg_plan
from jaxqfl.aggregate.secagg_graph import neighbour_offsets, shamir_threshold
from aggregator_rounds import aggregator_round
from cli_refusals import assert_refused_before_any_work

_SECAGG = ["--num-clients", "200", "--cohort-size", "100", "--rounds", "300", "--uplink", "qsgd:8",
           "--secure-aggregation", "secagg+"]


@pytest.mark.parametrize("argv,message", [
    (_SECAGG + ["--dropout", "0.99"], "--dropout 0.99 with --secagg-threshold 0.5 makes secure aggregation fail"),
    (_SECAGG + ["--dropout", "0.99"], "Allowed: at --secagg-threshold 0.5, --dropout at most 0.356"),
    (_SECAGG + ["--dropout", "0.2", "--secagg-threshold", "1"], "--secagg-threshold below"),
    (["--num-clients", "200", "--cohort-size", "20", "--rounds", "50", "--dp-clip", "1", "--dp-noise", "1",
      "--dp-distributed", "skellam", "--dropout", "0.6"], "makes secure aggregation fail"),
])
def test_a_run_that_must_fail_is_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message)


def _monte_carlo_failure(M, k, t, p, s, trials, rng):
    """Independent reference: drop every client with probability p, count each member's surviving holders."""
    offsets = neighbour_offsets("secagg+" if k < M - 1 else "secagg", M, k)
    alive = rng.random((trials, M)) >= p
    holders = (np.arange(M)[:, None] + offsets[None]) % M  # [M, k]
    surviving = alive[:, holders].sum(axis=2)  # [trials, M]
    return np.mean((surviving < t).any(axis=1) | (alive.sum(axis=1) < s))


@pytest.mark.parametrize("M,k,threshold,p,s", [
    (12, 11, 0.5, 0.45, 1),  # SecAgg: the exact formula
    (12, 11, 0.5, 0.3, 9),   # SecAgg with distributed DP's noise shares
    (30, 6, 0.5, 0.3, 1),    # SecAgg+: lower and upper bounds
    (40, 8, 0.75, 0.15, 1),
])
def test_round_failure_bounds_hold_against_a_monte_carlo_simulation(M, k, threshold, p, s):
    rng = np.random.default_rng(0)
    trials = 40_000
    mc = _monte_carlo_failure(M, k, shamir_threshold(k, threshold), p, s, trials, rng)
    lower, upper = secagg_plan.round_failure_bounds(M, k, p, threshold, s)
    tol = 4 * np.sqrt(max(mc * (1 - mc), 1e-4) / trials)
    assert lower - tol <= mc <= upper + tol
    if k == M - 1:
        assert lower == upper and abs(mc - lower) <= tol


def test_the_allowed_dropout_of_a_refusal_is_accepted_and_just_above_it_is_not():
    M, rounds = 100, 300
    with pytest.raises(secagg_plan.SecaggWillFail) as e:
        secagg_plan.check(M, rounds, 0.9, 0.5, protocol="secagg")
    p_max = secagg_plan.largest_dropout(M, M - 1, rounds, 0.5)
    assert f"--dropout at most {p_max:g}" in str(e.value)
    assert not secagg_plan.check(M, rounds, p_max, 0.5, protocol="secagg").refused
    with pytest.raises(secagg_plan.SecaggWillFail):
        secagg_plan.check(M, rounds, p_max + 0.002, 0.5, protocol="secagg")
    f_max = secagg_plan.largest_threshold(M, M - 1, rounds, 0.4)
    assert not secagg_plan.check(M, rounds, 0.4, f_max - 1e-9, protocol="secagg").refused
    with pytest.raises(secagg_plan.SecaggWillFail):
        secagg_plan.check(M, rounds, 0.4, f_max + 1e-9, protocol="secagg")


def test_the_secagg_threshold_flag_reaches_the_aggregator():
    """Through the CLI's own aggregator construction: the round fails exactly when survivors W <= t (SecAgg)."""
    from jaxqfl.experiment import privacy_rules

    C, M = 30, 12
    rng = np.random.default_rng(3)
    ids = jnp.asarray(rng.choice(C, M, replace=False), jnp.int32)
    updates = {"w": jnp.asarray(rng.normal(size=(M, 4)), jnp.float32)}
    outcomes = {}
    for threshold in (0.5, 1.0):
        args = argparse.Namespace(dp_distributed=None, secure_aggregation="secagg", cohort_size=M, dropout=0.3,
                                  secagg_threshold=threshold, secagg_degree=None, dp=False)
        agg = privacy_rules.make_aggregator(args, C, compress.from_spec("qsgd:8"))
        _, _, sm, m, *_ = jax.jit(lambda i, u: aggregator_round(agg, i, u, jax.random.key(5)))(ids, updates)
        W = M - int(np.sum(m["secagg_dropped"]))
        outcomes[threshold] = (float(sm["secagg_failed"]), W)
    t_half, t_all = shamir_threshold(M - 1, 0.5), shamir_threshold(M - 1, 1.0)
    (failed_half, W), (failed_all, _) = outcomes[0.5], outcomes[1.0]
    assert t_half < W <= t_all  # this round's dropouts separate the two thresholds
    assert failed_half == 0.0 and failed_all == 1.0


def test_a_failed_round_is_named_and_has_its_documented_exit_status():
    from jaxqfl.experiment import privacy_rules
    from jaxqfl.cli.main import _parser

    args = argparse.Namespace(dp=False, dropout=0.3, secagg_threshold=0.5)
    record = {"round": 20, "server_secagg_failed_rounds": 1.0, "server_secagg_failed_per_round": [0.0] * 7 + [1.0, 0.0, 0.0]}
    with pytest.raises(privacy_rules.RoundFailed, match="at round 18") as e:
        privacy_rules.record_fields(args, 100, record)
    assert e.value.exit_status == privacy_rules.EXIT_SECAGG_FAILED != 1
    help_text = " ".join(_parser().run_parser.format_help().split())
    assert f"{privacy_rules.EXIT_SECAGG_FAILED} a secure-aggregation round failed" in help_text


@pytest.mark.slow
def test_a_round_that_fails_at_run_time_exits_4_naming_the_round(tmp_path, capsys):
    """P(fail) = 1 - 0.97^20 = 0.46 for this one round: warned, not refused; seed 0 draws a dropout."""
    from jaxqfl.cli.main import main

    rc = main(["run", "--num-clients", "40", "--cohort-size", "20", "--rounds", "1", "--eval-every", "1",
               "--local-steps", "1", "--uplink", "qsgd:8", "--secure-aggregation", "secagg", "--dropout", "0.03",
               "--secagg-threshold", "1", "--seed", "0", "--devices", "2", "--chunk-size", "5", "--no-progress",
               "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert rc == 4
    assert "warning: at --dropout 0.03" in captured.err and "P(round fails) <= 0.456" in captured.out
    assert "secure aggregation failed at round 1" in captured.err
