"""``jaxqfl.run(experiment)``: what ``jaxqfl run`` does, from Python, with the same objects.

One path for both (the command line is a skin over it)::

    settings = settings_of(experiment, out=..., ...)     a fresh namespace: the experiment is never changed
    start_data(settings)              a small generated population not yet cached is generated and cached by a
                                      child process (jaxqfl.experiment.data_ahead: it overlaps JAX's start;
                                      refuses nothing)
    resolve(settings, refuser)        the rules: combinations checked, automatic values filled in (no JAX
                                      device work; a resumed run's config compared with its checkpoint's)
    check_memory(settings, refuser)   generated data: the estimated footprint against this host, before any row
    out = open_out(settings, refuser) a fresh (or --overwrite) folder, locked for this process
    runner.main(settings, stop, out)  build, run, checkpoint, write metrics / summary / final model

A refusal is ``refuser.error(message)``: the command line's parser prints it with the usage (exit status
2); the library's raises :class:`jaxqfl.ExperimentError`. So ``jaxqfl run --config X.toml`` and
``jaxqfl.run(Experiment.from_toml("X.toml"))`` run the same program on the same settings and write the same
files (``tests/test_experiment.py`` checks the final models are bit-identical).
"""
from __future__ import annotations

import json
import os
import re
import pathlib
import sys
import time
from typing import NamedTuple, Optional

from jaxqfl.experiment.resolved import Refuse, Refuser, Settings, settings_of
from jaxqfl.value_kinds import ExperimentError


class RunOutcome(NamedTuple):
    """What :func:`run` leaves: the run's folder, its exit status and its ``summary.json``.

    ``status``: 0 done; 3 the model diverged (non-finite loss; the folder holds the records up to then);
    5 a file could not be written; 130 / 143 stopped by a signal at a safe point (resumable). ``summary``:
    ``summary.json``'s fields (None if the run wrote none). The final model:
    ``jaxqfl.load_final_model(outcome.out)``.
    """

    out: pathlib.Path
    status: int
    summary: Optional[dict]


def start_data(settings: Settings) -> None:
    """Begin building a small generated population ahead, while JAX starts (``jaxqfl.experiment.data_ahead``)."""
    from jaxqfl.experiment import data_ahead

    if not getattr(settings, "print_config", False):  # --print-config reads no data
        data_ahead.start(settings)


def resolve(settings: Settings, refuser: Refuser) -> None:
    """Check the combinations and fill in the automatic values (the rules); nothing is built or compiled."""
    from jaxqfl.engine import compile_cache
    from jaxqfl.experiment import run_folder, runner

    compile_cache.enable()  # before the first compilation: later runs of the same shapes load their programs
    runner.validate(refuser, settings)
    problem = None
    try:
        run_folder.check_resume(settings)
    except ExperimentError as e:
        problem = str(e)
    if problem is not None:  # outside the except block: the refusal is not chained to the caught error
        refuser.error(problem)


def check_memory(settings: Settings, refuser: Refuser) -> None:
    """Refuse (or warn about) a run whose estimated footprint exceeds this host, before any data is drawn."""
    from jaxqfl.experiment import memory_guard

    cpu = memory_guard.likely_cpu()
    if cpu and settings.devices is not None and settings.devices > memory_guard.cpu_cores():
        print(f"jaxqfl run: warning: --devices {settings.devices} exceeds this host's {memory_guard.cpu_cores()} "
              f"CPU cores; the devices will share them (and each holds a copy of the population)", file=sys.stderr)
    from jaxqfl.experiment import population_rules

    devices = settings.devices or (memory_guard.cpu_cores() if cpu else 1)
    stream, procedural = getattr(settings, "stream", False), population_rules.on(settings)
    fp = memory_guard.footprint_from_flags(settings)  # generated data: its client sizes, drawn before any row
    if procedural:  # no rows held: the test clients' and each cohort's, padded to the cap
        est = memory_guard.procedural_estimate(settings, num_devices=devices)
    elif fp is None:
        return
    else:
        est = memory_guard.estimate(settings, num_devices=devices, examples=fp.train_rows, test_examples=fp.test_rows,
                                    feature_dim=fp.feature_dim, num_classes=max(fp.num_classes, fp.target_width),
                                    num_clients=fp.num_clients, home=settings.client_state, cpu=cpu,
                                    feature_shape=fp.feature_shape,
                                    stream_block=fp.cohort_block_bytes(settings.cohort_size) if stream else None,
                                    largest_client=fp.largest_client)
    problem = None
    try:
        memory_guard.check(est, num_devices=devices, cpu=cpu,
                           stream_available=(hasattr(settings, "stream") and memory_guard.num_configs(settings) == 1
                                             and not procedural),
                           stream=stream, generated=settings.dataset != "mnist", procedural=procedural)
    except memory_guard.MemoryRefusal as e:
        problem = str(e)
    if problem is not None:
        refuser.error(problem)


def open_out(settings: Settings, refuser: Refuser) -> pathlib.Path:
    """The run's folder: the resumed one (locked), or a fresh one (an existing non-empty folder only with
    ``overwrite``); ``settings.out`` is set to it."""
    from jaxqfl.experiment import outputs

    problem = None
    try:
        if settings.resume is not None:
            out = pathlib.Path(settings.resume)
            outputs.lock_folder(out, "--resume")
        else:
            out = outputs.prepare_out(settings.out, dataset=settings.dataset, seed=settings.seed,
                                      overwrite=settings.overwrite)
            settings.out = str(out)
    except outputs.OutputError as e:
        problem = str(e)
    if problem is not None:
        refuser.error(problem)
    return out


def run(experiment, *, out: str | pathlib.Path | None = None, overwrite: bool = False,
        log: tuple[str, ...] | str = ("jsonl",), progress: bool = False) -> RunOutcome:
    """Run ``experiment`` as ``jaxqfl run`` would and write its folder; see the module docstring.

    Args:
      experiment: a :class:`jaxqfl.Experiment`.
      out: the output folder (default: a fresh ``runs/<dataset>-<date-time>-s<seed>``); an existing non-empty
        folder is refused unless ``overwrite``.
      log: metrics sinks besides ``metrics.jsonl`` (``"tensorboard"``, ``"csv"``), as ``--log``.
      progress: draw the progress bar on stderr.

    Raises ``ExperimentError`` (naming the settings and what is allowed) for an experiment that cannot run,
    before any data is read where the problem is visible from the settings alone.
    """
    from jaxqfl import value_kinds as values
    from jaxqfl.experiment.experiment import Experiment

    if not isinstance(experiment, Experiment):
        raise ExperimentError(f"jaxqfl.run takes a jaxqfl.Experiment, got {type(experiment).__name__}")
    if not isinstance(overwrite, bool) or not isinstance(progress, bool):
        raise ExperimentError(f"overwrite and progress take True or False, got {overwrite!r} and {progress!r}")
    _check_folder_argument("out", out, may_be_none=True)
    sinks = values.sink_list(values.as_text(log))
    settings = settings_of(experiment, out=None if out is None else str(out), overwrite=overwrite, log=sinks,
                           no_progress=not progress)
    return _execute(settings, "jaxqfl.run() call")


def resume(out: str | pathlib.Path, *, log: tuple[str, ...] | str = ("jsonl",), progress: bool = False) -> RunOutcome:
    """Continue the run in folder ``out`` from its newest readable checkpoint, as ``jaxqfl run --resume OUT``.

    The experiment is the checkpoint's own config (``Experiment.from_toml(out / "config.toml")`` reads the
    same); a resumed run equals the uninterrupted one. Raises ``ExperimentError`` when ``out`` holds no
    readable checkpoint.
    """
    from jaxqfl import value_kinds as values
    from jaxqfl.experiment import run_folder
    from jaxqfl.experiment.experiment import Experiment

    if not isinstance(progress, bool):
        raise ExperimentError(f"progress takes True or False, got {progress!r}")
    _check_folder_argument("resume's folder", out, may_be_none=False)
    folder = pathlib.Path(out)
    if not folder.is_dir():
        raise ExperimentError(f"resume {str(out)!r}: no such folder")
    step, meta = run_folder.readable_meta(run_folder.checkpoint_dir(folder), str(out))
    settings = settings_of(Experiment.of(**run_folder.saved_config(meta)), resume=str(folder), out=str(folder),
                           log=values.sink_list(values.as_text(log)), no_progress=not progress)
    settings._resume_meta, settings._resume_step = meta, step
    return _execute(settings, "jaxqfl.resume() call")


#: The invocation's flags as ``jaxqfl.run`` / ``jaxqfl.resume`` take them (a refusal in Python names these).
_PYTHON_INVOCATION = {"--overwrite": "overwrite=True", "--out": "out", "--log": "log", "--no-progress": "progress"}


class _PythonNames(Refuse):
    """The library's refuser for ``jaxqfl.run`` / ``jaxqfl.resume``: the invocation's flags named as their
    arguments (``--overwrite`` -> ``overwrite=True``, ``--resume OUT`` -> ``jaxqfl.resume(OUT)``); a setting's
    flag is left as it is (``--devices`` is ``devices`` of ``Experiment.of``)."""

    def error(self, message: str):
        message = re.sub(r"--resume (\S+?)(?=[\s,;)]|$)", r"jaxqfl.resume('\1')", message)
        message = re.sub(r"--(overwrite|out|log|no-progress)(?![\w-])",
                         lambda m: _PYTHON_INVOCATION[m.group(0)], message)
        super().error(message)


def _check_folder_argument(what: str, value, *, may_be_none: bool) -> None:
    """A folder given in Python is a non-empty ``str`` or ``os.PathLike`` (bytes, numbers and "" made folders named
    ``b'``, ``5`` or wrote into the working folder)."""
    if value is None and may_be_none:
        return
    if not isinstance(value, (str, os.PathLike)) or isinstance(value, bytes):
        raise ExperimentError(f"{what} takes a folder path (str or pathlib.Path), got {value!r}")
    if not str(value).strip():
        raise ExperimentError(f"{what} is an empty path; give a folder")


def _execute(settings: Settings, what: str) -> RunOutcome:
    """The library's run path on fresh settings (the module docstring's steps), refusals raised."""
    from jaxqfl.experiment import outputs, runner
    from jaxqfl.experiment.collections_pause import fewer_collections

    refuser = _PythonNames()
    origin = (time.time(), what)
    try:
        with fewer_collections():
            start_data(settings)
            resolve(settings, refuser)
            check_memory(settings, refuser)
            folder = open_out(settings, refuser)
            settings._startup_origin = origin
            status = runner.main(settings, stop=None, out=folder)
    finally:
        outputs.release_locks()
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return RunOutcome(folder, status, summary)
