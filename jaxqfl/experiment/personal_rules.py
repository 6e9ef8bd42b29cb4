"""Per-client evaluation flags of ``jaxqfl run``: whose test rows, and fine-tuning before evaluating.

``--client-test`` says where each client's test rows come from:

* ``auto`` (default): the clients' own held-out rows when the data has them
  (generated populations, natural clients without a test file); for a
  classification data set whose test set is pooled (MNIST, CIFAR-10, an npz
  without test clients), ``labels``; otherwise none.
* ``labels``: the pooled test set partitioned over the clients by their training
  labels (``jaxqfl.data.split_test_by_labels``); the pooled metrics are unchanged.
* ``none``: a pooled test set stays pooled (no per-client metrics); data whose
  clients hold their own test rows keeps them.

``--personal-eval K`` fine-tunes the global model K SGD steps (``--personal-lr``,
default ``--client-lr``; batches of ``--batch-size``) on each client's training
rows before evaluating it on the client's test rows (TFF's personalization
evaluation; ``jaxqfl.engine.client_evaluation``). Ditto, FedRep and FedPer are
evaluated per client with their personal models; Per-FedAvg with
``--personal-eval 1`` at its inner step unless told otherwise.
"""
from __future__ import annotations

from jaxqfl.experiment.resolved import Refuser, Settings

from jaxqfl import choices


from jaxqfl.choices import PERSONAL_ALGORITHMS

CLIENT_TEST = choices.CLIENT_TEST


def validate(refuser: Refuser, args: Settings) -> None:
    """Refuse what per-client evaluation cannot do yet; fill Per-FedAvg's default."""
    sweep = bool(getattr(args, "sweep_values", None)) or args.seeds is not None
    if args.algorithm == "perfedavg" and args.personal_eval is None and not sweep and not args.stream:
        args.personal_eval = 1
    fine_tunes = bool(args.personal_eval)
    if args.personal_lr is not None and not fine_tunes:
        refuser.error(f"--personal-lr {args.personal_lr:g} is the step of --personal-eval; give --personal-eval K "
                       f"(K >= 1) with it")
    personal = args.algorithm in PERSONAL_ALGORITHMS
    what = f"--algorithm {args.algorithm}" if personal else "--personal-eval"
    if (personal or fine_tunes) and sweep:
        refuser.error(f"{what} evaluates every client's own model, which sweeps (--seeds, list-valued flags) do "
                       f"not yet do; run one config at a time")
    if (personal or fine_tunes) and args.stream:
        refuser.error(f"{what} evaluates every client's own model, which --stream does not yet do; drop --stream")
    if fine_tunes and args.client_test == "none":
        refuser.error(f"--personal-eval {args.personal_eval} evaluates each client on its own test rows; "
                       f"--client-test none leaves it none: use --client-test auto or labels")


def client_test_split(args: Settings, population, seed: int):
    """``population`` with per-client test rows as ``--client-test`` says (module docstring)."""
    from jaxqfl import data
    from jaxqfl.experiment.data_rules import fail

    mode = args.client_test
    if mode == "none" or population.test_counts is not None:
        if population.test_counts is None and args.algorithm in PERSONAL_ALGORITHMS:
            fail(f"--algorithm {args.algorithm} evaluates each client's own model on the client's test rows; "
                 f"--client-test none leaves {population.name!r} none: use --client-test auto or labels")
        return population
    if population.task != "classification":
        if mode == "labels" or args.algorithm in PERSONAL_ALGORITHMS or args.personal_eval:
            fail(f"per-client test rows: --client-test labels splits a test set by class labels, and the "
                 f"{population.task} data {population.name!r} has none and no test rows of its own clients")
        return population
    try:
        return data.split_test_by_labels(population, seed=seed)
    except ValueError as e:  # e.g. a training label outside the population's classes
        fail(str(e))


def fine_tune(args: Settings):
    """The ``engine.build`` ``personal_eval`` of the flags (None without fine-tuning)."""
    if not args.personal_eval:
        return None
    from jaxqfl.engine.client_evaluation import FineTune

    lr = args.personal_lr
    if lr is None:
        lr = args.perfedavg_alpha or args.client_lr if args.algorithm == "perfedavg" else args.client_lr
    batch = None if args.batch_size == 0 else args.batch_size
    return FineTune(args.personal_eval, float(lr), batch)


def final_client_fields(final: dict) -> dict:
    """``summary.json``'s ``final_client_*`` and ``final_global_client_*`` from the last record."""
    return {f"final_{k[len('test_'):]}": v for k, v in final.items()
            if k.startswith(("test_client_", "test_global_client_"))}


def summary_line(s: dict) -> str:
    """The one-screen summary's per-client accuracy line (empty without per-client metrics)."""
    mean = s.get("final_client_accuracy_mean")
    if mean is None:
        return ""
    line = (f"  per client       accuracy mean {mean:.4f}, p10 {s['final_client_accuracy_p10']:.4f}, "
            f"worst {s['final_client_accuracy_min']:.4f}")
    if s.get("final_global_client_accuracy_mean") is not None:
        line += f" (own models; the global model's mean {s['final_global_client_accuracy_mean']:.4f})"
    diverged = s.get("final_client_loss_nonfinite")
    if diverged:
        tuned = bool((s.get("config") or {}).get("personal_eval"))
        line += (f"\n  warning          {diverged} client(s)' {'fine-tuned ' if tuned else ''}models have a non-finite "
                 f"test loss (diverged){': lower --personal-lr' if tuned else ''}")
    return line
