"""Experiments: every setting of a run, typed and declared once; the run path the command line shares.

* :class:`Experiment` (``experiment.py``): frozen sections of settings (``*_settings.py``, built with
  ``setting.py`` from the value kinds in ``jaxqfl.value_kinds``); ``of`` / ``replace`` / ``flat`` / ``from_toml`` /
  ``to_toml`` / ``validate``.
* :func:`run` (``pipeline.py``): ``jaxqfl.run(experiment, out=...)``, what ``jaxqfl run`` does.
* The rules (``*_rules.py``): each area's combination checks, automatic values and builders (data,
  population, model, algorithm, sampling, selection, systems, tiers, asynchronous rounds, LoRA, personal
  evaluation, robust aggregation, privacy); ``memory_guard.py`` the footprint check; the runners
  (``runner.py``, ``sweep_runner.py``, ``clustering_runner.py``) build and run; ``run_folder.py`` and
  ``outputs.py`` the run's files.
"""
from jaxqfl.experiment.experiment import Experiment, settings
from jaxqfl.value_kinds import ExperimentError, InvalidValue


def run(experiment, **options):
    """``jaxqfl.run``: see :func:`jaxqfl.experiment.pipeline.run` (imported on first use: it starts JAX)."""
    from jaxqfl.experiment.pipeline import run as run_experiment

    return run_experiment(experiment, **options)


def resume(out, **options):
    """``jaxqfl.resume``: see :func:`jaxqfl.experiment.pipeline.resume` (imported on first use: it starts JAX)."""
    from jaxqfl.experiment.pipeline import resume as resume_run

    return resume_run(out, **options)


__all__ = ["Experiment", "ExperimentError", "InvalidValue", "resume", "run", "settings"]
