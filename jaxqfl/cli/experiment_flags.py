"""``jaxqfl run``'s flags, generated from the typed settings of :class:`jaxqfl.Experiment`.

Each setting (``jaxqfl.experiment.setting``) becomes one flag in its section's group: its name, its default,
its help, its choices and its value kind (``jaxqfl.value_kinds``, adapted by
``jaxqfl.cli.argtypes.as_argparse_type``). So a flag cannot drift from the Python API or the TOML keys, and a
new setting is a new field, not a new flag. Only the flags that say how this invocation runs, not what it
computes (config file, output folder, sinks, overwrite, resume, progress), are declared here by hand.
"""
from __future__ import annotations

import argparse

from jaxqfl.cli.argtypes import as_argparse_type
from jaxqfl import value_kinds as values
from jaxqfl.experiment.experiment import Experiment, settings
from jaxqfl.experiment.resolved import Settings, settings_of

#: flags of this invocation only: never in an Experiment, a config.toml or a run's fingerprint
INVOCATION = ("config", "print_config", "overwrite", "resume", "out", "no_progress", "log")


def _title(section_cls) -> str:
    doc = (section_cls.__doc__ or section_cls.section_name).strip().rstrip(".")
    return doc[0].lower() + doc[1:]


def add_arguments(p: argparse.ArgumentParser) -> None:
    defaults, groups = Experiment(), {}
    for section_name, field_name, info in settings():
        section = getattr(defaults, section_name)
        if section_name not in groups:
            groups[section_name] = p.add_argument_group(_title(type(section)))
        g = groups[section_name]
        if info.switch:
            # --no-<name> too: a switch a config file turns on can be turned off for one run
            g.add_argument(info.flag, dest=info.dest, action=argparse.BooleanOptionalAction, default=False,
                           help=info.help)
            continue
        g.add_argument(info.flag, dest=info.dest, type=as_argparse_type(info.parse),
                       default=getattr(section, field_name), choices=info.choices, metavar=info.metavar,
                       help=info.help)
    g = p.add_argument_group("configs, outputs, checkpoints")
    g.add_argument("--config", default=None, metavar="FILE.toml",
                   help="read settings from a TOML file whose keys are the flags' names (flags given here override it)")
    g.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    g.add_argument("--out", default=None,
                   help="output folder (default: a fresh runs/<dataset>-<date-time.ms>-s<seed>); an existing "
                        "non-empty folder is refused unless --overwrite")
    g.add_argument("--overwrite", action="store_true", help="replace the run in an existing non-empty --out")
    g.add_argument("--resume", default=None, metavar="OUT",
                   help="continue the run in folder OUT from its latest checkpoint (its config is reused)")
    g.add_argument("--log", type=as_argparse_type(values.sink_list), default=("jsonl",), metavar="SINKS",
                   help="where the evaluation records go, comma-separated: jsonl (OUT/metrics.jsonl, always), "
                        "tensorboard (OUT/tensorboard/ event files; needs tensorboardX), csv (OUT/metrics.csv); "
                        "default jsonl")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def experiment_of(args: argparse.Namespace) -> Experiment:
    """The Experiment of parsed flags (before any validator resolves them)."""
    return Experiment.of(**{info.dest: getattr(args, info.dest) for _, _, info in settings()})


def settings_of_args(args: argparse.Namespace) -> Settings:
    """A fresh namespace for the library's run path: the Experiment of the flags, this invocation's flags, and
    what ``--resume`` read (``_resume_*``); ``args`` itself is left as parsed."""
    resolved = settings_of(experiment_of(args), **{k: getattr(args, k) for k in INVOCATION})
    for k, v in vars(args).items():
        if k.startswith("_"):
            setattr(resolved, k, v)
    return resolved
