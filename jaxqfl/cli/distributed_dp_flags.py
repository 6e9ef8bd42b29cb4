"""``--dp-distributed skellam``: distributed DP's setup and summary for ``jaxqfl run``.

``make_distributed`` builds the parameter template from the model, calibrates
``--dp-epsilon`` through the equivalent Gaussian (``jaxqfl.privacy.distributed``),
prints the mechanism's grid and returns ``aggregate.distributed_skellam``;
``summary`` gives summary.json's fields. The flags themselves and their checks
are in ``jaxqfl.cli.privacy_flags``.
"""
from __future__ import annotations

import argparse
import math


def _equivalent_noise(p) -> float:
    """z_eff of the Gaussian whose RDP bounds the Skellam mechanism with parameters ``p``."""
    from jaxqfl import privacy

    return privacy.skellam_noise_multiplier(p.l2_sensitivity, p.l1_sensitivity, p.central_variance)


def sampling(args) -> str:
    """The accounting's sampling: ``"async"`` for FedBuff's flushes (``jaxqfl.privacy.accounting``), else fixed."""
    return "async" if getattr(args, "async", None) is not None else "fixed"


def make_distributed(args, num_clients: int, model, feature_shape):
    """Distributed DP: the template from the model, z calibrated to --dp-epsilon, the equivalent Gaussian."""
    import jax
    import jax.numpy as jnp

    from jaxqfl import aggregate, privacy
    from jaxqfl.aggregate import skellam_calibration as calibration
    from jaxqfl.cli.privacy_flags import aggregated

    template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + tuple(feature_shape), jnp.float32))
    dimension = sum(x.size for x in jax.tree.leaves(template))
    M = aggregated(args)  # the cohort, or FedBuff's buffer
    shares = calibration.min_survivors(M, args.dropout)  # does not depend on z: once

    def parameters(z):
        return calibration.skellam_parameters(args.dp_clip, z, dimension=dimension, cohort_size=M,
                                              bits=args.dp_bits, noise_shares=shares)

    acct = dict(num_clients=num_clients, cohort_size=M, sampling=sampling(args))
    if args.dp_epsilon is not None:
        args.dp_noise = privacy.distributed_noise_for_epsilon(args.dp_epsilon, args.dp_delta, args.rounds,
                                                              lambda z: _equivalent_noise(parameters(z)), **acct)
    args._ddp_params = parameters(args.dp_noise)
    args._ddp_z_eff = _equivalent_noise(args._ddp_params)
    protocol = args.secure_aggregation or "secagg+"
    p = args._ddp_params
    print(f"distributed DP (Skellam, {protocol}): clip {args.dp_clip}, noise multiplier {args.dp_noise:.4f} "
          f"(equivalent Gaussian {args._ddp_z_eff:.4f} against replace-one), {p.modulus_bits}-bit sum, grid step "
          f"{p.scale:.3g}, noise split over {p.noise_shares} survivors, delta {args.dp_delta:.3g}"
          f"{' (default 1/num_clients^1.1)' if args.dp_delta_default else ''}")
    return aggregate.distributed_skellam(args.dp_clip, args.dp_noise, template=template, num_clients=num_clients,
                                         cohort_size=M, bits=args.dp_bits, protocol=protocol,
                                         dropout=args.dropout, neighbours=args.secagg_degree,
                                         threshold=args.secagg_threshold, noise_shares=p.noise_shares)


def summary(args, num_clients: int) -> dict:
    """summary.json's fields of a distributed-DP run (after :func:`make_distributed`)."""
    import dp_accounting

    from jaxqfl import privacy
    from jaxqfl.cli.privacy_flags import aggregated
    from jaxqfl.privacy import distributed

    acct = dict(num_clients=num_clients, cohort_size=aggregated(args), sampling=sampling(args))
    eps = privacy.distributed_epsilon(args._ddp_z_eff, args.dp_delta, args.rounds, **acct)
    event = dp_accounting.SelfComposedDpEvent(distributed.distributed_round_event(args._ddp_z_eff, **acct), args.rounds)
    p = args._ddp_params
    protocol = args.secure_aggregation or "secagg+"
    from jaxqfl.cli.privacy_flags import secagg_degree

    k, bound = secagg_degree(argparse.Namespace(**{**vars(args), "secure_aggregation": protocol}))
    return {
        "dp_epsilon": eps if math.isfinite(eps) else None, "dp_delta": args.dp_delta,
        "dp_accountant": "rdp (replace-one, integer orders) on the equivalent Gaussian"
                         + (", no sampling amplification" if sampling(args) == "async" else ""),
        "dp_event": repr(event),
        "dp_effective_noise_multiplier": args._ddp_z_eff, "dp_noise_multiplier": args.dp_noise,
        "dp_clip": args.dp_clip, "dp_mechanism": "distributed skellam (Agarwal et al. 2021) under " + protocol,
        "dp_bits": p.modulus_bits, "ddp_scale": p.scale, "ddp_rotated_dimension": p.rotated_dimension,
        "ddp_l2_sensitivity": p.l2_sensitivity, "ddp_l1_sensitivity": p.l1_sensitivity,
        "ddp_central_variance": p.central_variance, "ddp_noise_shares": p.noise_shares,
        "ddp_wrap_bound": p.wrap_bound, "secure_aggregation": protocol, "secagg_dropout": args.dropout,
        "secagg_threshold": args.secagg_threshold, "secagg_neighbours": k, "secagg_failure_bound": bound,
        "dp_weighting": "uniform: the mean over the surviving clients (example weights are not used)",
    }
