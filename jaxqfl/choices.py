"""Names of the built-in choices, importable without JAX (the CLI checks flags before JAX starts).

Each list is defined here once; the modules that implement the choices import it.
"""

# adam / yogi / adagrad: Reddi et al. 2021's Algorithm 2; optax-*: optax's (bias-corrected) optimizers
SERVER_OPTIMIZERS = ("sgd", "momentum", "adam", "yogi", "adagrad", "optax-adam", "optax-yogi",
                     "optax-adagrad")  # jaxqfl.algorithms.fedavg.server_optimizer
WEIGHTINGS = ("examples", "uniform")  # p_i = n_i or 1 (jaxqfl.algorithms.base.client_weight)
CLIENT_STATE_HOMES = ("auto", "replicated", "sharded", "host")  # jaxqfl.engine.homes
ALGORITHMS = ("fedavg", "fedprox", "scaffold", "fednova", "feddyn", "mimelite", "ditto", "fedrep", "fedper",
              "perfedavg", "qffl")  # jaxqfl.cli.algorithm_args
PERSONAL_ALGORITHMS = ("ditto", "fedrep", "fedper")  # clients keep their own model (Algorithm.personalize)
AGGREGATORS = ("mean", "median", "trimmed-mean", "krum", "multi-krum", "bulyan", "geomed", "centered-clip",
               "norm-bound")  # jaxqfl.aggregate.named
ATTACK_NAMES = ("none", "sign-flip", "scale", "gaussian", "label-flip", "alie", "ipm", "minmax")  # aggregate.attacks
