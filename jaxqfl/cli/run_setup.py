"""The command line's config precedence: flags given > the ``--config`` file (or a resumed run's config) > defaults.

``prepare(run_parser, args, argv)`` runs before JAX starts any device; the
library's ``jaxqfl.experiment.run_folder.check_resume`` then refuses a resumed run
whose resolved config differs from the checkpoint's, naming the field.
"""
from __future__ import annotations

import argparse
import pathlib

from jaxqfl.cli import config_file
from jaxqfl.experiment.run_folder import checkpoint_dir, readable_meta, saved_config


def prepare(run_parser: argparse.ArgumentParser, args: argparse.Namespace, run_argv: list[str]) -> None:
    """Merge ``--config`` (or the resumed run's config) under the flags given; raises ``ConfigError``."""
    explicit = config_file.explicit_dests(run_parser, run_argv)
    if args.resume is not None:
        if args.config is not None:
            raise config_file.ConfigError("give --resume OUT or --config FILE, not both: a resumed run keeps its config")
        if args.out is not None and pathlib.Path(args.out) != pathlib.Path(args.resume):
            raise config_file.ConfigError(f"--resume {args.resume} continues the run in that folder; "
                                          f"--out {args.out} cannot move it")
        if getattr(args, "overwrite", False):
            raise config_file.ConfigError(f"--resume {args.resume} continues the run in that folder; --overwrite "
                                          f"would start a new one over it: give one of them")
        ckpt = checkpoint_dir(args.resume)
        if not pathlib.Path(args.resume).is_dir():
            what = "is a file" if pathlib.Path(args.resume).exists() else "no such folder"
            raise config_file.ConfigError(f"--resume {args.resume!r}: {what}; --resume takes the folder of a run "
                                          f"(its --out)")
        from jaxqfl.experiment import outputs

        try:  # a run still going in it: say so (its checkpoints may not exist yet); released when the command ends
            outputs.lock_folder(pathlib.Path(args.resume), "--resume")
        except outputs.OutputError as e:
            raise config_file.ConfigError(str(e)) from None
        step, meta = readable_meta(ckpt, args.resume)
        args._resume_meta = meta
        args._resume_step = step
        config_file.apply_config(run_parser, args, saved_config(meta), explicit, f"checkpoint {ckpt}")
        args.out = args.resume
    elif args.config is not None:
        config_file.apply_config(run_parser, args, config_file.read_toml(args.config), explicit,
                                 f"--config {args.config}")


