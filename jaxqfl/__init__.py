"""jaxqfl: quantized federated learning, simulated on accelerators with JAX."""

__version__ = "0.1.0"

from jaxqfl.experiment import Experiment, ExperimentError, run  # noqa: E402  (no JAX: the settings only)


def load_final_model(run_dir):
    """The final global model of a ``jaxqfl run`` folder (its ``final_params.msgpack``) as a params pytree.

    ``params = jaxqfl.load_final_model("runs/my-run")``; then ``model.apply(params, x, key=None)``
    with the run's model. See ``jaxqfl.engine.checkpoint.load_final_model``.
    """
    from jaxqfl.engine.checkpoint import load_final_model as load

    return load(run_dir)
