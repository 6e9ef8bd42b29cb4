"""Privacy planning in the library (issue 22, item 4): ``jaxqfl.privacy.plan_distributed_skellam`` and
``jaxqfl.aggregate.secagg_plan.choose_degree``.

* The plan's epsilon equals ``dp_accounting``'s for the event written out here: the equivalent Gaussian of
  Agarwal et al. (2021, Cor. 4.1) from the plan's own sensitivities and variance, in the sampling's event,
  RDP at integer orders (fixed, Poisson, FedBuff's unsampled flushes).
* A plan calibrated to a target epsilon reaches it; the plan of its noise is the same plan.
* The CLI's distributed-DP summary is the plan's fields (``cli.distributed_dp_flags``, and one real run, slow).
* SecAgg / SecAgg+'s degree and failure bound equal the binomial formulas; bad values are refused by name.
"""
import argparse
import json
import math
import types

import dp_accounting
import jax
import jax.numpy as jnp
import pytest
from dp_accounting import rdp
from scipy import stats

from jaxqfl import privacy
from jaxqfl.aggregate import secagg_plan
from jaxqfl.aggregate.skellam_calibration import skellam_parameters

ORDERS = list(range(2, 65)) + [80, 96, 128, 160, 192, 256, 384, 512, 1024]  # integer orders (Agarwal et al.)
BASE = dict(clip=0.5, template_or_dimension=1000, num_clients=2000, cohort_size=50, rounds=40, delta=1e-5,
            bits=16, dropout=0.1)


def _survivors(M, p, target=1e-6):
    """The largest s with P(Bin(M, 1 - p) < s) <= target, by brute force."""
    return max([s for s in range(1, M + 1) if stats.binom.cdf(s - 1, M, 1 - p) <= target] or [1])


@pytest.mark.parametrize("sampling", ["fixed", "poisson", "async"])
def test_plan_epsilon_equals_dp_accounting_on_the_equivalent_gaussian(sampling):
    plan = privacy.plan_distributed_skellam(**BASE, sampling=sampling, noise_multiplier=1.2)
    s = _survivors(50, 0.1)
    assert plan.parameters == skellam_parameters(0.5, 1.2, dimension=1000, cohort_size=50, bits=16, noise_shares=s)
    p = plan.parameters
    factor = 1.0 if sampling == "poisson" else 2.0  # add/remove one vs replace one
    d2, d1, mu = factor * p.l2_sensitivity, factor * p.l1_sensitivity, p.central_variance
    z_eff = (d2 ** 2 / mu + min((d2 ** 2 + 3 * d1) / mu ** 2, 3 * d1 / mu)) ** -0.5
    assert plan.effective_noise_multiplier == pytest.approx(z_eff, rel=1e-12)

    def run_event(z):
        gaussian = dp_accounting.GaussianDpEvent(z)
        one = {"fixed": dp_accounting.SampledWithoutReplacementDpEvent(2000, 50, gaussian),
               "poisson": dp_accounting.PoissonSampledDpEvent(50 / 2000, gaussian), "async": gaussian}[sampling]
        return dp_accounting.SelfComposedDpEvent(one, 40)

    relation = (dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE if sampling == "poisson"
                else dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc = rdp.RdpAccountant(orders=ORDERS, neighboring_relation=relation)
    acc.compose(run_event(z_eff))
    assert plan.epsilon == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert plan.event == run_event(plan.effective_noise_multiplier)
    assert ("no sampling amplification" in plan.accountant) == (sampling == "async")
    assert plan.noise_multiplier == 1.2 and plan.delta == 1e-5 and plan.rounds == 40


def test_a_template_plans_as_its_coordinate_count():
    template = jax.eval_shape(lambda: {"w": jnp.zeros((40, 20)), "b": jnp.zeros(200)})  # 1000 coordinates
    assert (privacy.plan_distributed_skellam(**{**BASE, "template_or_dimension": template}, noise_multiplier=1.0)
            .parameters == privacy.plan_distributed_skellam(**BASE, noise_multiplier=1.0).parameters)


def test_target_epsilon_is_reached_and_its_noise_gives_the_plan_back():
    plan = privacy.plan_distributed_skellam(**BASE, target_epsilon=2.0)
    assert plan.epsilon == pytest.approx(2.0, rel=0.01)
    again = privacy.plan_distributed_skellam(**BASE, noise_multiplier=plan.noise_multiplier)
    assert again.epsilon == plan.epsilon and again.parameters == plan.parameters
    assert privacy.plan_distributed_skellam(**BASE, noise_multiplier=1.05 * plan.noise_multiplier).epsilon < 2.0


def _cli_args(**kw):
    return argparse.Namespace(**{
        "dp_clip": 1.0, "dp_noise": None, "dp_epsilon": 5.0, "dp_delta": 1e-4, "dp_delta_default": False,
        "dp_bits": 18, "dropout": 0.1, "rounds": 4, "cohort_size": 12, "secure_aggregation": None,
        "secagg_degree": None, "secagg_threshold": 0.5, "async": None, **kw})


def test_cli_distributed_dp_summary_is_the_plan(capsys):
    """``jaxqfl run --dp-distributed skellam``'s setup and summary.json fields, on a stub model."""
    from jaxqfl.experiment import distributed_dp_rules

    model = types.SimpleNamespace(init=lambda key, x: {"w": jnp.zeros((x.shape[-1], 3)), "b": jnp.zeros(3)})
    args = _cli_args()
    distributed_dp_rules.make_distributed(args, 60, model, (7,))
    printed = capsys.readouterr().out
    s = distributed_dp_rules.summary(args, 60)
    # the run calibrated z to epsilon 5 (the library's calibration: tested above); the plan of that z is the summary
    plan = privacy.plan_distributed_skellam(clip=1.0, template_or_dimension=7 * 3 + 3, num_clients=60,
                                            cohort_size=12, rounds=4, delta=1e-4, bits=18, dropout=0.1,
                                            noise_multiplier=s["dp_noise_multiplier"])
    assert plan.epsilon == pytest.approx(5.0, rel=0.01)
    p = plan.parameters
    assert f"noise multiplier {plan.noise_multiplier:.4f} (equivalent Gaussian " \
           f"{plan.effective_noise_multiplier:.4f}" in printed
    assert s["dp_epsilon"] == plan.epsilon and s["dp_noise_multiplier"] == plan.noise_multiplier
    assert s["dp_effective_noise_multiplier"] == plan.effective_noise_multiplier
    assert s["dp_event"] == repr(plan.event) and s["dp_accountant"] == plan.accountant
    assert (s["dp_bits"], s["ddp_scale"], s["ddp_l2_sensitivity"], s["ddp_l1_sensitivity"], s["ddp_central_variance"],
            s["ddp_noise_shares"], s["ddp_wrap_bound"], s["ddp_rotated_dimension"]) == (
        p.modulus_bits, p.scale, p.l2_sensitivity, p.l1_sensitivity, p.central_variance, p.noise_shares,
        p.wrap_bound, p.rotated_dimension)
    g = secagg_plan.choose_degree(12, 0.1, 0.5)
    assert (s["secagg_neighbours"], s["secagg_failure_bound"]) == (g.neighbours, g.failure_bound)


@pytest.mark.slow  # one CLI run
def test_cli_run_summary_is_the_plan_of_its_model(tmp_path):
    from jaxqfl.cli.main import main

    out = tmp_path / "run"
    assert main(["run", "--num-clients", "40", "--cohort-size", "8", "--rounds", "2", "--local-steps", "1",
                 "--dp-clip", "1.0", "--dp-epsilon", "6", "--dp-distributed", "skellam", "--dp-bits", "18",
                 "--dp-delta", "1e-3", "--out", str(out), "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    plan = privacy.plan_distributed_skellam(clip=1.0, template_or_dimension=s["ddp_rotated_dimension"],
                                            num_clients=40, cohort_size=8, rounds=2, delta=1e-3, bits=18,
                                            noise_multiplier=s["dp_noise_multiplier"])
    # the rotated dimension pads n to a power of two: the same grid and sensitivities, hence the same epsilon
    assert s["dp_epsilon"] == plan.epsilon and s["ddp_scale"] == plan.parameters.scale


@pytest.mark.parametrize("M, p, threshold", [(20, 0.0, 0.5), (100, 0.1, 0.5), (100, 0.3, 0.6), (9, 0.2, 0.5)])
def test_secagg_plus_degree_and_bound_are_the_binomial_union_bound(M, p, threshold):
    g = secagg_plan.choose_degree(M, p, threshold)
    k = g.neighbours
    t = min(k, math.floor(threshold * k) + 1)
    assert g.holders_needed == t and g.exact == (k >= M - 1)
    if g.exact:
        assert g.failure_bound == pytest.approx(stats.binom.cdf(t, M, 1 - p), rel=1e-9, abs=1e-300)
    else:
        union = min(1.0, M * stats.binom.cdf(t - 1, k, 1 - p))
        assert g.failure_bound == pytest.approx(union, rel=1e-9, abs=1e-300) and union <= 1e-6
        assert k % 2 == 0 and k >= 2 * math.ceil(math.log2(M))
        smaller = k - 2  # the smallest such k: two fewer neighbours miss the target (or the security floor)
        assert smaller < 2 * math.ceil(math.log2(M)) or M * stats.binom.cdf(
            min(smaller, math.floor(threshold * smaller) + 1) - 1, smaller, 1 - p) > 1e-6
    full = secagg_plan.choose_degree(M, p, threshold, protocol="secagg")
    assert full.neighbours == M - 1 and full.exact
    assert secagg_plan.choose_degree(M, p, threshold, neighbours=M + 5).neighbours == M - 1


@pytest.mark.parametrize("kw, message", [
    (dict(noise_multiplier=1.0, target_epsilon=2.0), "exactly one of noise_multiplier and target_epsilon"),
    (dict(), "exactly one of noise_multiplier and target_epsilon, got noise_multiplier=None"),
    (dict(noise_multiplier=1.0, sampling="uniform"), "sampling must be one of"),
    (dict(noise_multiplier=1.0, cohort_size=1), "cohort_size >= 2"),
    (dict(noise_multiplier=1.0, dropout=1.0), "dropout must be in [0, 1), got 1.0"),
    (dict(noise_multiplier=1.0, rounds=0), "rounds must be a positive integer, got 0"),
    (dict(noise_multiplier=1.0, bits=6), "bits=6 leaves no room"),
    (dict(noise_multiplier=1.0, delta=1.5), "delta must be in (0, 1), got 1.5"),
    (dict(noise_multiplier=1.0, template_or_dimension="mlp"), "template_or_dimension must be"),
    (dict(noise_multiplier=-1.0), "noise_multiplier must be a finite number >= 0, got -1.0"),
])
def test_plan_refusals_name_the_value(kw, message):
    with pytest.raises(ValueError) as e:
        privacy.plan_distributed_skellam(**{**BASE, **kw})
    assert message in str(e.value)


@pytest.mark.parametrize("kw, message", [
    (dict(neighbours=5), "neighbours must be an even number >= 2"),
    (dict(protocol="secagg", neighbours=4), "neighbours applies to protocol 'secagg+'"),
    (dict(protocol="secagg++"), "protocol must be one of"),
    (dict(threshold=0.0), "threshold must be a fraction in (0, 1], got 0.0"),
    (dict(cohort_size=1), "cohort of at least 2 clients, got cohort_size=1"),
])
def test_degree_refusals_name_the_value(kw, message):
    with pytest.raises(ValueError) as e:
        secagg_plan.choose_degree(**{"cohort_size": 50, "dropout": 0.1, **kw})
    assert message in str(e.value)
