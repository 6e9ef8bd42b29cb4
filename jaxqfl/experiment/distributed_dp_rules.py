"""``--dp-distributed skellam``: distributed DP's setup and summary for ``jaxqfl run``.

``make_distributed`` builds the parameter template from the model, asks the library
for the privacy plan (``jaxqfl.privacy.plan_distributed_skellam``: z calibrated to
``--dp-epsilon``, the Skellam grid, the equivalent Gaussian and epsilon), prints it
and returns ``aggregate.distributed_skellam``; ``summary`` gives summary.json's
fields of that plan. The flags themselves and their checks are in
``jaxqfl.experiment.privacy_rules``.
"""
from __future__ import annotations

import math


def sampling(args) -> str:
    """The accounting's sampling: ``"async"`` for FedBuff's flushes (``jaxqfl.privacy.accounting``), else fixed."""
    return "async" if getattr(args, "async", None) is not None else "fixed"


def make_distributed(args, num_clients: int, model, feature_shape):
    """Distributed DP: the template from the model, the library's plan for the flags, printed; the aggregator."""
    import jax
    import jax.numpy as jnp

    from jaxqfl import aggregate, privacy
    from jaxqfl.experiment.privacy_rules import aggregated

    template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + tuple(feature_shape), jnp.float32))
    M = aggregated(args)  # the cohort, or FedBuff's buffer
    plan = privacy.plan_distributed_skellam(
        clip=args.dp_clip, template_or_dimension=template, num_clients=num_clients, cohort_size=M,
        rounds=args.rounds, delta=args.dp_delta, bits=args.dp_bits, dropout=args.dropout, sampling=sampling(args),
        noise_multiplier=None if args.dp_epsilon is not None else args.dp_noise, target_epsilon=args.dp_epsilon)
    args.dp_noise = plan.noise_multiplier
    args._ddp_plan = plan
    protocol = args.secure_aggregation or "secagg+"
    p = plan.parameters
    print(f"distributed DP (Skellam, {protocol}): clip {args.dp_clip}, noise multiplier {args.dp_noise:.4f} "
          f"(equivalent Gaussian {plan.effective_noise_multiplier:.4f} against replace-one), {p.modulus_bits}-bit "
          f"sum, grid step {p.scale:.3g}, noise split over {p.noise_shares} survivors, delta {args.dp_delta:.3g}"
          f"{' (default 1/num_clients^1.1)' if args.dp_delta_default else ''}")
    return aggregate.distributed_skellam(args.dp_clip, args.dp_noise, template=template, num_clients=num_clients,
                                         cohort_size=M, bits=args.dp_bits, protocol=protocol,
                                         dropout=args.dropout, neighbours=args.secagg_degree,
                                         threshold=args.secagg_threshold, noise_shares=p.noise_shares)


def summary(args, num_clients: int) -> dict:
    """summary.json's fields of a distributed-DP run: the plan of :func:`make_distributed` and the SecAgg graph."""
    from jaxqfl.experiment.privacy_rules import secagg_degree

    plan = args._ddp_plan
    p = plan.parameters
    protocol = args.secure_aggregation or "secagg+"
    g = secagg_degree(args)
    return {
        "dp_epsilon": plan.epsilon if math.isfinite(plan.epsilon) else None, "dp_delta": args.dp_delta,
        "dp_accountant": plan.accountant, "dp_event": repr(plan.event),
        "dp_effective_noise_multiplier": plan.effective_noise_multiplier, "dp_noise_multiplier": args.dp_noise,
        "dp_clip": args.dp_clip, "dp_mechanism": "distributed skellam (Agarwal et al. 2021) under " + protocol,
        "dp_bits": p.modulus_bits, "ddp_scale": p.scale, "ddp_rotated_dimension": p.rotated_dimension,
        "ddp_l2_sensitivity": p.l2_sensitivity, "ddp_l1_sensitivity": p.l1_sensitivity,
        "ddp_central_variance": p.central_variance, "ddp_noise_shares": p.noise_shares,
        "ddp_wrap_bound": p.wrap_bound, "secure_aggregation": protocol, "secagg_dropout": args.dropout,
        "secagg_threshold": args.secagg_threshold, "secagg_neighbours": g.neighbours,
        "secagg_failure_bound": g.failure_bound,
        "dp_weighting": "uniform: the mean over the surviving clients (example weights are not used)",
    }
