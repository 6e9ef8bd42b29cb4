"""jaxqfl.bench: speed of a round against the roofline floor and a per-client loop.

    machine     measured matmul FLOP/s and copy bandwidth; what the machine is
    cost        analytic FLOPs and bytes of a round; the roofline floor
    workloads   the benchmark workloads (mlp, tiny, cnn, big, qfl)
    reference   the FedJAX-style per-client loop the engine is compared with
    runner      time one workload (jaxqfl and loop), peak memory
    report      JSON and markdown
    cli         the ``jaxqfl bench`` command

Importing the package does not import JAX (the command line must set XLA flags
first); the names below load their module on first use.
"""
import importlib

_EXPORTS = {
    "LoopReference": "reference",
    "per_client_loop": "reference",
    "Peaks": "machine",
    "measure_peaks": "machine",
    "RoundCost": "cost",
    "forward_flops_per_example": "cost",
    "matmul_flops": "cost",
    "round_cost": "cost",
    "WORKLOADS": "workloads",
    "Workload": "workloads",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"jaxqfl.bench.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'jaxqfl.bench' has no attribute {name!r}")
