"""``--dp-clip`` over a robust ``--aggregator`` (issue 22, item 5): central DP composed over the rule.

The composition itself (noise std z S, S the rule's sensitivity; epsilon against dp-accounting) is checked in
``tests/test_aggregate_compose.py``; here: the command line builds it, refuses what has no bound with the
rule's own reason, and with z = 0 and a clip no update reaches it is the plain rule, bit for bit.
"""
import pytest

from jaxqfl.cli.main import main

BASE = ["run", "--num-clients", "40", "--cohort-size", "10", "--rounds", "3", "--eval-every", "1", "--no-progress"]


@pytest.mark.parametrize("extra,message", [
    (["--aggregator", "krum"], "--dp-clip with --aggregator krum: central_gaussian over krum"),
    (["--aggregator", "geomed"], "--dp-clip with --aggregator geomed"),
    (["--aggregator", "trimmed-mean", "--sampling", "poisson"], "with poisson sampling is refused"),
    (["--aggregator", "median", "--dp-adaptive-quantile", "0.5"], "--dp-adaptive-quantile (adaptive clipping) with "
                                                                  "--dp-clip serves --aggregator mean only"),
])
def test_central_dp_over_a_rule_without_a_bound_is_refused_with_its_reason(extra, message, capsys):
    with pytest.raises(SystemExit) as e:
        main([*BASE, "--dp-clip", "1", "--dp-noise", "1", *extra, "--print-config"])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_secure_aggregation_still_takes_the_mean_only(capsys):
    with pytest.raises(SystemExit):
        main([*BASE, "--secure-aggregation", "secagg", "--uplink", "qsgd:8", "--aggregator", "median",
              "--print-config"])
    assert "does not combine with secure aggregation" in capsys.readouterr().err


@pytest.mark.slow
def test_zero_noise_and_an_unreached_clip_leave_the_median_unchanged(tmp_path):
    assert main([*BASE, "--aggregator", "median", "--out", str(tmp_path / "plain")]) == 0
    assert main([*BASE, "--aggregator", "median", "--dp-clip", "1e6", "--dp-noise", "0",
                 "--out", str(tmp_path / "dp")]) == 0
    plain, dp = ((tmp_path / w / "final_params.msgpack").read_bytes() for w in ("plain", "dp"))
    assert plain == dp
