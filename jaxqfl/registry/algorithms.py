"""The built-in FL algorithms: one entry each (see ``jaxqfl.registry``), their factories and properties.

How the shared settings map onto each algorithm (``client_lr``, ``server_opt``, ``server_lr``,
``weighting``) is in each entry's ``build``; its own hyper-parameters are its ``hyper``. The properties
are what the rules need to know instead of the algorithm's name:

* ``server_optimizer`` / ``server_lr``: whether ``--server-opt`` / ``--server-lr`` mean anything (else
  they must stay ``sgd`` / 1);
* ``uniform``: every client weighs 1 whatever ``--weighting`` says (the paper's mean);
* ``personal``: clients keep their own model (``Algorithm.personalize``);
* ``stateful``: clients keep state between rounds (asynchronous rounds cannot serve them);
* ``client_state_models``: model-sized arrays each client keeps (the memory estimate before JAX starts);
* ``updates_like_params``: uploads shaped like the model's parameters (distributed DP's noise calibration).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from jaxqfl import value_kinds as v
from jaxqfl.registry import HyperParameter, check_unique, hyper_users

Build = Callable[[Any, dict], tuple]  # (settings, traced overrides) -> (Algorithm, recorded hyper-parameters)


class AlgorithmEntry(NamedTuple):
    name: str
    doc: str
    build: Build
    hyper: tuple = ()
    server_optimizer: bool = True
    server_lr: bool = True
    uniform: bool = False
    personal: bool = False
    stateful: bool = False
    client_state_models: int = 0
    updates_like_params: bool = False


def _sgd(lr):
    import optax

    return optax.sgd(lr)


def _server(s, hp):
    from jaxqfl import algorithms

    return algorithms.server_optimizer(s.server_opt, hp.get("server_lr", s.server_lr))


def _lr(s, hp):
    return hp.get("client_lr", s.client_lr)


def _fedopt(s):
    return {"client_lr": s.client_lr, "server_opt": s.server_opt, "server_lr": s.server_lr, "weighting": s.weighting}


def _fedavg(s, hp):
    from jaxqfl import algorithms

    return algorithms.fedavg(_sgd(_lr(s, hp)), _server(s, hp), weighting=s.weighting), _fedopt(s)


def _fedprox(s, hp):
    from jaxqfl import algorithms

    return (algorithms.fedprox(_sgd(_lr(s, hp)), hp.get("mu", s.mu), _server(s, hp), weighting=s.weighting),
            {**_fedopt(s), "mu": s.mu})


def _scaffold(s, hp):
    from jaxqfl import algorithms

    return (algorithms.scaffold(_lr(s, hp), global_lr=hp.get("server_lr", s.server_lr)),
            {"local_lr": s.client_lr, "global_lr": s.server_lr, "weighting": "uniform"})


def _fednova(s, hp):
    from jaxqfl import algorithms

    return algorithms.fednova(_lr(s, hp), 0.0, _server(s, hp), weighting=s.weighting), {**_fedopt(s), "momentum": 0.0}


def _feddyn(s, hp):
    from jaxqfl import algorithms

    return (algorithms.feddyn(_sgd(_lr(s, hp)), alpha=s.feddyn_alpha),
            {"client_lr": s.client_lr, "alpha": s.feddyn_alpha, "weighting": "uniform"})


def _mimelite(s, hp):
    from jaxqfl import algorithms

    base = algorithms.server_optimizer(s.server_opt, _lr(s, hp))
    return algorithms.mimelite(base, weighting=s.weighting), {
        "base_optimizer": s.server_opt, "learning_rate": s.client_lr, "weighting": s.weighting}


def _ditto(s, hp):
    from jaxqfl import algorithms

    lr = _lr(s, hp)
    return (algorithms.ditto(_sgd(lr), lr, s.ditto_lambda, _server(s, hp), weighting=s.weighting),
            {**_fedopt(s), "personal_lr": s.client_lr, "lambda": s.ditto_lambda})


def _fedrep(s, hp):
    from jaxqfl import algorithms

    return (algorithms.fedrep(_sgd(_lr(s, hp)), s.head, s.head_steps, _server(s, hp), weighting=s.weighting),
            {**_fedopt(s), "head": s.head or "the model's last layer",
             "head_steps": s.head_steps if s.head_steps is not None else "first half"})


def _fedper(s, hp):
    from jaxqfl import algorithms

    return (algorithms.fedper(_sgd(_lr(s, hp)), s.head, _server(s, hp), weighting=s.weighting),
            {**_fedopt(s), "head": s.head or "the model's last layer"})


def _perfedavg(s, hp):
    from jaxqfl import algorithms

    alpha = s.perfedavg_alpha if s.perfedavg_alpha is not None else s.client_lr
    return (algorithms.perfedavg(alpha, _lr(s, hp), _server(s, hp), weighting=s.weighting),
            {**_fedopt(s), "alpha": alpha, "beta": s.client_lr})


def _qffl(s, hp):
    from jaxqfl import algorithms

    return algorithms.qffl(_lr(s, hp), s.q), {"local_lr": s.client_lr, "q": s.q, "weighting": "uniform"}


HEAD = HyperParameter("head", None, "the per-client head: a regular expression over parameter paths such as "
                      "Dense_2/kernel (default: the model's last layer)", type="str | None", metavar="REGEX")

ENTRIES = (
    AlgorithmEntry("fedavg", "FedAvg (McMahan et al. 2017) with a server optimizer: FedAvgM, FedAdam, FedYogi, "
                   "FedAdagrad (Reddi et al. 2021)", _fedavg, updates_like_params=True),
    AlgorithmEntry("fedprox", "FedProx (Li et al. 2020): a proximal term mu/2 ||w - w_global||^2 on the clients",
                   _fedprox, (HyperParameter("mu", v.nonneg_floats, "FedProx proximal coefficient", 0.01,
                                             "float | tuple[float, ...] | None", sweep=True),),
                   updates_like_params=True),
    AlgorithmEntry("scaffold", "SCAFFOLD (Karimireddy et al. 2020), option II control variates; local step "
                   "--client-lr, global step --server-lr", _scaffold, server_optimizer=False, uniform=True,
                   stateful=True, client_state_models=1),
    AlgorithmEntry("fednova", "FedNova (Wang et al. 2020): updates normalized by each client's local steps",
                   _fednova),
    AlgorithmEntry("feddyn", "FedDyn (Acar et al. 2021): a dynamic regularizer per client", _feddyn,
                   (HyperParameter("feddyn_alpha", v.positive_float, "FedDyn regularization alpha", 0.01),),
                   server_optimizer=False, server_lr=False, uniform=True, stateful=True, client_state_models=1),
    AlgorithmEntry("mimelite", "MimeLite (Karimireddy et al. 2021): clients step with the server optimizer's "
                   "frozen statistics at --client-lr", _mimelite, server_lr=False),
    AlgorithmEntry("ditto", "Ditto (Li et al. 2021): personal models pulled toward the global one", _ditto,
                   (HyperParameter("ditto_lambda", v.nonneg_float, "Ditto's pull of each personal model toward "
                                   "the global one; 0: purely local personal models", 0.1),),
                   personal=True, stateful=True, client_state_models=1),
    AlgorithmEntry("fedrep", "FedRep (Collins et al. 2021): a shared body, a per-client head trained first",
                   _fedrep, (HEAD, HyperParameter("head_steps", v.nonneg_int, "FedRep: local steps on the head "
                                                  "before the body's (default: the first half)", type="int | None")),
                   personal=True, stateful=True),
    AlgorithmEntry("fedper", "FedPer (Arivazhagan et al. 2019): a shared body, a per-client head, trained together",
                   _fedper, (HEAD,), personal=True, stateful=True),
    AlgorithmEntry("perfedavg", "Per-FedAvg, first order (Fallah et al. 2020): a meta-learned start, evaluated "
                   "one inner step from it", _perfedavg,
                   (HyperParameter("perfedavg_alpha", v.positive_float, "Per-FedAvg's inner (personalisation) "
                                   "step (default: --client-lr)"),)),
    AlgorithmEntry("qffl", "q-FFL / q-FedAvg (Li et al. 2020): fairness exponent q re-weighs high-loss clients",
                   _qffl, (HyperParameter("q", v.nonneg_float, "q-FFL's fairness exponent (0 is uniform FedAvg)",
                                          1.0),), server_optimizer=False, server_lr=False, uniform=True),
)
check_unique(ENTRIES, "algorithm")
BY_NAME = {e.name: e for e in ENTRIES}
NAMES = tuple(BY_NAME)
HYPER = hyper_users(ENTRIES)
