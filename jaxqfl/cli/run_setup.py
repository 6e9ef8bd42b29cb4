"""Around a run: the config (flags, ``--config`` file, ``--resume``), its fingerprint, the output folder.

``prepare(parser, run_parser, args, argv)`` runs before JAX starts any device:
it merges the config file (or, for ``--resume OUT``, the checkpoint's config)
under the flags given on the command line, and is followed by the command's own
``validate``; ``check_resume`` then refuses a resumed run whose resolved config
differs from the checkpoint's, naming the field.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import pathlib

from jaxqfl.cli import config_file


def fingerprint(config: dict) -> str:
    """sha256 of the config as canonical JSON (sorted keys): equal configs, equal fingerprints."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def block_rounds(args) -> int:
    """Rounds per compiled block: evaluations and checkpoints both fall on block ends."""
    k = args.checkpoint_every or args.eval_every
    return min(math.gcd(args.eval_every, k), args.rounds)


def checkpoint_dir(out) -> pathlib.Path:
    return pathlib.Path(out) / "checkpoints"


def prepare(run_parser: argparse.ArgumentParser, args: argparse.Namespace, run_argv: list[str]) -> None:
    """Merge ``--config`` (or the resumed run's config) under the flags given; raises ``ConfigError``."""
    explicit = config_file.explicit_dests(run_parser, run_argv)
    if args.resume is not None:
        if args.config is not None:
            raise config_file.ConfigError("give --resume OUT or --config FILE, not both: a resumed run keeps its config")
        if args.out is not None and pathlib.Path(args.out) != pathlib.Path(args.resume):
            raise config_file.ConfigError(f"--resume {args.resume} continues the run in that folder; "
                                          f"--out {args.out} cannot move it")
        from jaxqfl.engine import checkpoint

        ckpt = checkpoint_dir(args.resume)
        if not pathlib.Path(args.resume).is_dir():
            raise config_file.ConfigError(f"--resume {args.resume!r}: no such folder")
        step, meta = readable_meta(ckpt, args.resume)
        args._resume_meta = meta
        args._resume_step = step
        config_file.apply_config(run_parser, args, meta["config"], explicit, f"checkpoint {ckpt}")
        args.out = args.resume
    elif args.config is not None:
        config_file.apply_config(run_parser, args, config_file.read_toml(args.config), explicit,
                                 f"--config {args.config}")


def saved_devices(out) -> int | None:
    """``devices`` of the run in folder ``out`` (its ``config.toml``), read without JAX; None when unknown.

    A resume reads its checkpoint through orbax, which starts JAX: the host's CPU
    devices must be split as the run's were before that.
    """
    import tomllib

    try:
        value = tomllib.loads((pathlib.Path(out) / "config.toml").read_text()).get("devices")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def readable_meta(ckpt: pathlib.Path, resume) -> tuple[int, dict]:
    """``(round, meta)`` of the newest checkpoint whose record reads back; a damaged newer one is warned about.

    Raises ``ConfigError`` naming the folders when there is no checkpoint or none can be read.
    """
    import sys

    from jaxqfl.engine import checkpoint

    rounds = checkpoint.all_rounds(ckpt)
    if not rounds:
        raise config_file.ConfigError(f"--resume {resume!r}: no checkpoint in {ckpt} (the run was stopped "
                                      f"before its first checkpoint); start it again instead")
    damaged = []
    for step in reversed(rounds):
        try:
            meta = checkpoint.read_meta(ckpt, step)
            if not isinstance(meta, dict) or "config" not in meta:
                raise ValueError("its record holds no config")
        except Exception as e:  # truncated or bit-flipped JSON: JSONDecodeError, UnicodeDecodeError, orbax errors
            damaged.append(str(ckpt / str(step)))
            print(f"jaxqfl run: warning: the checkpoint {ckpt / str(step)} cannot be read ({type(e).__name__}: "
                  f"{e}); trying an older one", file=sys.stderr)
            continue
        return step, meta
    raise config_file.ConfigError(f"--resume {resume!r}: no readable checkpoint in {ckpt} (damaged: "
                                  f"{', '.join(damaged)}); start the run again")


def check_resume(args: argparse.Namespace) -> None:
    """Refuse a resumed run whose resolved config differs from its checkpoint's, naming the field."""
    meta = getattr(args, "_resume_meta", None)
    if meta is None:
        return
    saved, now = meta["config"], config_file.config_of(args)
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            raise config_file.ConfigError(
                f"--resume {args.resume}: the config differs from the checkpoint's in {key.replace('_', '-')!r} "
                f"(checkpoint: {saved.get(key)!r}, now: {now.get(key)!r}); a resumed run must keep its config")
    if meta.get("fingerprint") != fingerprint(saved):
        raise config_file.ConfigError(f"--resume {args.resume}: the checkpoint's config does not match its "
                                      f"fingerprint; the checkpoint was edited or is damaged")
