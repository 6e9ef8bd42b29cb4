"""A run's folder: its resolved config (what ``config.toml`` holds), the config's fingerprint, checkpoints, and
the check that a resumed run keeps its config.

The resolved config is the run's settings after the dataset-dependent defaults are filled in (flat names,
plain values); ``jaxqfl run --config OUT/config.toml`` and ``jaxqfl.Experiment.from_toml`` repeat it.
"""
from __future__ import annotations

import hashlib
import json
import math
import pathlib

from jaxqfl.value_kinds import ExperimentError

#: Flags that say how to run, not what: never stored in config.toml nor part of a run's fingerprint.
NOT_CONFIG = frozenset({"command", "config", "print_config", "out", "overwrite", "resume", "no_progress",
                        "log",  # where records go, not what the run computes
                        # derived by the validators, not flags
                        "dp", "dp_count_noise", "dp_delta_default", "sweep_values"})


def config_of(args) -> dict:
    """The run config of parsed, resolved args: plain values only (codec objects and how-to-run flags left out)."""
    out, derived = {}, getattr(args, "_derived", ())  # filled in by a validator for this kind of run, not flags
    for k, v in vars(args).items():
        if k in NOT_CONFIG or k.startswith("_") or k in derived:
            continue
        if isinstance(v, tuple):
            v = list(v)
        if v is None or isinstance(v, (bool, int, float, str)) or (
                isinstance(v, list) and all(isinstance(x, (bool, int, float, str)) for x in v)):
            out[k] = v
    swept = getattr(args, "sweep_values", None) or {}
    out.update({k: list(v) for k, v in swept.items()})  # a sweep's config holds its lists, as given
    if getattr(args, "seeds", None) is not None:
        out.pop("seed", None)  # the first of --seeds, filled in by the validator: not a flag of the sweep
    return out


def fingerprint(config: dict) -> str:
    """sha256 of the config as canonical JSON (sorted keys): equal configs, equal fingerprints."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def block_rounds(args) -> int:
    """Rounds per compiled block: evaluations and checkpoints both fall on block ends."""
    k = args.checkpoint_every or args.eval_every
    return min(math.gcd(args.eval_every, k), args.rounds)


def checkpoint_dir(out) -> pathlib.Path:
    return pathlib.Path(out) / "checkpoints"


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


def _why_no_checkpoint(resume) -> str:
    """What the folder's summary says ended the run before a checkpoint: divergence, or a stop."""
    try:
        summary = json.loads((pathlib.Path(resume) / "summary.json").read_text())
    except (OSError, ValueError):
        summary = None
    if isinstance(summary, dict) and summary.get("diverged"):
        return (f"the run diverged at round {summary.get('diverged_round')}, before its first checkpoint: a resume "
                f"would diverge again; lower --client-lr or --server-lr")
    return "the run was stopped before its first checkpoint"


def readable_meta(ckpt: pathlib.Path, resume) -> tuple[int, dict]:
    """``(round, meta)`` of the newest checkpoint whose record reads back; a damaged newer one is warned about.

    Raises ``ExperimentError`` naming the folders when there is no checkpoint or none can be read.
    """
    import sys

    from jaxqfl.engine import checkpoint

    rounds = checkpoint.all_rounds(ckpt)
    if not rounds and (pathlib.Path(resume).parent / "sweep.json").is_file():
        raise ExperimentError(f"--resume {resume!r} is one config of the sweep in "
                              f"{str(pathlib.Path(resume).parent)!r}: a sweep resumes whole, --resume "
                              f"{pathlib.Path(resume).parent}")
    if not rounds and not (pathlib.Path(resume) / "config.toml").is_file():
        raise ExperimentError(f"--resume {resume!r}: not a run's folder (it holds no config.toml and no "
                              f"checkpoints/); --resume takes the folder of a run (its --out)")
    if not rounds:
        raise ExperimentError(f"--resume {resume!r}: no checkpoint in {ckpt} ({_why_no_checkpoint(resume)}); "
                              f"start it again instead")
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
    raise ExperimentError(f"--resume {resume!r}: no readable checkpoint in {ckpt} (damaged: "
                                  f"{', '.join(damaged)}); start the run again")


def saved_config(meta: dict) -> dict:
    """The config a checkpoint's record holds, as this version writes it: a run calibrated from ``dp_epsilon``
    recorded the derived ``dp_noise`` beside it before (and was refused on resume for giving both)."""
    config = dict(meta["config"])
    if config.get("dp_epsilon") is not None:
        config.pop("dp_noise", None)
    return config


def check_resume(args) -> None:
    """Refuse a resumed run whose resolved config differs from its checkpoint's, naming the field."""
    meta = getattr(args, "_resume_meta", None)
    if meta is None:
        return
    saved, now = saved_config(meta), config_of(args)
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            raise ExperimentError(
                f"--resume {args.resume}: the config differs from the checkpoint's in {key.replace('_', '-')!r} "
                f"(checkpoint: {saved.get(key)!r}, now: {now.get(key)!r}); a resumed run must keep its config")
    if meta.get("fingerprint") != fingerprint(meta["config"]):
        raise ExperimentError(f"--resume {args.resume}: the checkpoint's config does not match its "
                                      f"fingerprint; the checkpoint was edited or is damaged")
