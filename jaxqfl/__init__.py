"""jaxqfl: quantized federated learning, simulated on accelerators with JAX.

The public API::

    jaxqfl.Experiment          every setting of a run, typed (``Experiment.of``, ``.replace``, ``.validate``,
                               ``.from_toml`` / ``.to_toml``)
    jaxqfl.run(experiment)     what ``jaxqfl run`` does, from Python (``RunOutcome``: out, status, summary)
    jaxqfl.resume(out)         ``jaxqfl run --resume OUT``: a stopped run continued from its newest checkpoint
    jaxqfl.ExperimentError     every refusal of a setting or a combination
    jaxqfl.load_final_model    a run folder's final model

and the subpackages, imported on first use: ``data``, ``models``, ``algorithms``, ``aggregate``,
``compress``, ``quant``, ``ptq``, ``privacy``, ``engine``, ``lora``, ``systems``, ``clustering``,
``registry``, ``experiment``, ``keys``, ``tasks``, ``metrics``, ``sinks``. Modules and names starting with
``_``, and ``jaxqfl.cli`` (the command line's skin), are not part of the API.
"""

__version__ = "0.1.0"

from jaxqfl.experiment import Experiment, ExperimentError, resume, run  # noqa: E402  (no JAX: the settings only)

SUBPACKAGES = ("data", "models", "algorithms", "aggregate", "compress", "quant", "ptq", "privacy", "engine", "lora",
               "systems", "clustering", "registry", "experiment", "keys", "tasks", "metrics", "sinks")


def load_final_model(run_dir):
    """The final global model of a ``jaxqfl run`` folder (its ``final_params.msgpack``) as a params pytree.

    ``params = jaxqfl.load_final_model("runs/my-run")``; then ``model.apply(params, x, key=None)``
    with the run's model. See ``jaxqfl.engine.checkpoint.load_final_model``.
    """
    from jaxqfl.engine.checkpoint import load_final_model as load

    return load(run_dir)


def __getattr__(name):
    """``jaxqfl.aggregate`` and the other subpackages without importing them (and JAX) at ``import jaxqfl``."""
    if name in SUBPACKAGES:
        import importlib

        return importlib.import_module(f"jaxqfl.{name}")
    raise AttributeError(f"module 'jaxqfl' has no attribute {name!r}")


__all__ = ["Experiment", "ExperimentError", "load_final_model", "resume", "run", *SUBPACKAGES]
