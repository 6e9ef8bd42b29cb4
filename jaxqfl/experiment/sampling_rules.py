"""The cohort-sampling flags of ``jaxqfl run``: ``--sampling {fixed,poisson}`` and ``--max-cohort``.

Hooks called by ``runner``: ``validate`` (before JAX
starts), ``build_kwargs`` (for ``engine.build``), ``warn_overflow`` (per
evaluation record) and ``summary_fields``. The privacy accounting reads
``args.sampling`` too (``privacy_rules``): the DP event follows the real sampling.
"""
from __future__ import annotations

from jaxqfl.experiment.resolved import Refuser, Settings

import sys



def validate(refuser: Refuser, args: Settings) -> None:
    if args.sampling != "poisson":
        if args.max_cohort is not None:
            refuser.error("--max-cohort applies to --sampling poisson")
        return
    from jaxqfl.experiment.clustering_runner import is_clustering

    if is_clustering(args):
        refuser.error("--sampling poisson is not available for --task clustering")
    if args.stream:
        refuser.error("--sampling poisson draws the cohort inside the round program; it does not combine with "
                       "--stream (the host must know a streamed cohort first)")
    if args.client_state == "host":
        refuser.error("--sampling poisson does not combine with --client-state host; use replicated or sharded")
    if args.sweep_values or args.seeds is not None:
        refuser.error("--sampling poisson runs one config at a time; drop --seeds and list-valued flags")
    for flag in ("secure_aggregation", "dp_distributed"):
        if getattr(args, flag, None) is not None:
            refuser.error(f"--sampling poisson does not combine with --{flag.replace('_', '-')} yet (secure "
                           f"aggregation's masks and distributed DP's noise shares are set up for a fixed cohort)")
    if args.num_clients is not None and args.max_cohort is not None and args.max_cohort > args.num_clients:
        refuser.error(f"--max-cohort {args.max_cohort} exceeds --num-clients {args.num_clients}")


def build_kwargs(args, num_clients: int) -> dict:
    """``engine.build`` keywords of the flags (nothing for fixed-size sampling)."""
    if args.sampling != "poisson":
        return {}
    if args.max_cohort is not None and args.max_cohort > num_clients:
        from jaxqfl.experiment.data_rules import fail

        fail(f"--max-cohort {args.max_cohort} exceeds the {num_clients} clients of the population")
    return {"sampling": "poisson", "max_cohort": args.max_cohort}


def _overflows(record: dict) -> list[float]:
    return [x for x in record.get("server_cohort_overflow_per_round", []) if x > 0]


def warn_overflow(args, sim, record: dict) -> None:
    """Print a warning for the rounds of this record whose joiners exceeded the slots."""
    over = _overflows(record)
    if over:
        print(f"jaxqfl run: warning: cohort overflow in {len(over)} round(s) up to round {record['round']}: more "
              f"Poisson joiners than the --max-cohort {sim.max_cohort} slots "
              f"({int(sum(over))} joiner(s) left out at random); "
              f"the privacy accounting is an approximation for those rounds. Raise --max-cohort.",
              file=sys.stderr, flush=True)


def summary_fields(args, sim, num_clients: int, records: list[dict]) -> dict:
    if getattr(args, "async", None) is not None:  # FedBuff: K arrivals per flush, replacements drawn as they finish
        return {"sampling": "async"}
    if args.sampling != "poisson":
        return {"sampling": "fixed"}
    joined = [x for r in records for x in r.get("server_cohort_joined_per_round", [])]
    return {
        "sampling": "poisson",
        "sampling_rate": args.cohort_size / num_clients,
        "expected_cohort_size": args.cohort_size,
        "max_cohort": sim.max_cohort,
        "overflow_rounds": sum(len(_overflows(r)) for r in records),
        "overflow_policy": "a round with more joiners than max_cohort keeps a uniformly random max_cohort of them "
                           "(the accounting is then an approximation)",
        "mean_joined": sum(joined) / len(joined) if joined else None,
    }
