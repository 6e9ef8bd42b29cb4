"""Names of the built-in choices, importable without JAX (the CLI checks flags before JAX starts).

Each list is defined here once; the modules that implement the choices import it.
"""
from jaxqfl.registry import aggregators as _aggregator_registry
from jaxqfl.registry import algorithms as _algorithm_registry
from jaxqfl.registry import attacks as _attack_registry
from jaxqfl.registry import models as _model_registry

# adam / yogi / adagrad: Reddi et al. 2021's Algorithm 2; optax-*: optax's (bias-corrected) optimizers
SERVER_OPTIMIZERS = ("sgd", "momentum", "adam", "yogi", "adagrad", "optax-adam", "optax-yogi",
                     "optax-adagrad")  # jaxqfl.algorithms.fedavg.server_optimizer
WEIGHTINGS = ("examples", "uniform")  # p_i = n_i or 1 (jaxqfl.algorithms.base.client_weight)
CLIENT_STATE_HOMES = ("auto", "replicated", "sharded", "host")  # jaxqfl.engine.homes
ALGORITHMS = _algorithm_registry.NAMES  # jaxqfl.registry.algorithms: one entry per algorithm
PERSONAL_ALGORITHMS = tuple(e.name for e in _algorithm_registry.ENTRIES if e.personal)  # Algorithm.personalize
AGGREGATORS = _aggregator_registry.NAMES  # jaxqfl.registry.aggregators: one entry per rule
ATTACK_NAMES = _attack_registry.NAMES  # jaxqfl.registry.attacks: one entry per attack (minsum: Python only)
SAMPLINGS = ("fixed", "poisson")  # fixed-size cohorts, or Poisson (each client with probability q)
POPULATIONS = ("memory", "procedural")  # jaxqfl.data.procedural: clients drawn on demand
MODELS = _model_registry.NAMES  # jaxqfl.registry.models: one entry per model
ZOO_MODELS = tuple(e.name for e in _model_registry.ENTRIES if e.zoo)  # sized from the data (model_rules)
LORA_AGGREGATIONS = ("fedit", "product")  # jaxqfl.lora: average A and B apart (FedIT) or their products
BASE_FORMATS = ("none", "bf16", "int8", "int4", "nf4")  # jaxqfl.lora.base_quant.FORMATS (checked by a test)
TIER_WEIGHTS = ("examples", "precision")  # jaxqfl.aggregate.tier_weighted
CLIENT_TEST = ("auto", "labels", "none")  # per-client test rows
STRAGGLERS = ("wait", "drop", "partial")  # jaxqfl.systems.deadline.STRAGGLERS (not imported: no JAX before validate)
ASYNC_MODES = ("fedbuff",)  # jaxqfl.engine.fedbuff
KMEANS = ("lloyd", "minibatch")  # jaxqfl.clustering
SECURE_PROTOCOLS = ("secagg", "secagg+")  # jaxqfl.aggregate.secure.PROTOCOLS
DISTRIBUTED_MECHANISMS = ("skellam",)  # jaxqfl.aggregate.distributed_dp.MECHANISMS
