"""Run configs as TOML: the flags' names are the keys (``client-lr`` or ``client_lr``, not both).

Precedence: a flag given on the command line > the ``--config`` file > the
built-in default. A key the command does not know is refused, naming it. A
run's folder holds ``config.toml``, the resolved config (dataset-dependent
defaults filled in), so ``jaxqfl run --config OUT/config.toml`` repeats it.
TOML has no null: a setting left to its automatic value (``devices``,
``chunk-size``, ...) is simply absent.

Reading and writing are the library's (``jaxqfl.experiment.toml_io``: the same
files ``jaxqfl.Experiment.from_toml`` reads); here are the command line's rules on
top: precedence, and the flags a file may not hold.
"""
from __future__ import annotations

import argparse
import re

from jaxqfl.experiment import toml_io
from jaxqfl.experiment.toml_io import to_toml  # noqa: F401  (re-exported: --print-config and config.toml)
from jaxqfl.experiment.run_folder import NOT_CONFIG, config_of  # noqa: F401  (re-exported)
from jaxqfl.value_kinds import ExperimentError, InvalidValue, as_text



class ConfigError(ExperimentError):
    """A config file that cannot be used, with the reason."""


def read_toml(path: str) -> dict:
    """The file's keys (dashes turned to underscores) and values; ``ConfigError`` naming the problem."""
    try:
        return toml_io.read_toml(path, "--config")
    except InvalidValue as e:
        raise ConfigError(str(e)) from None


def explicit_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The ``dest`` of every flag given in ``argv`` (parsed by ``parser``, defaults ignored)."""
    actions = {}
    for action in parser._actions:  # argparse has no public list of a parser's actions
        for opt in action.option_strings:
            actions[opt] = action.dest
    given = set()
    for token in argv:
        if not token.startswith("-") or token == "-":
            continue
        opt = token.split("=", 1)[0]
        if opt in actions:
            given.add(actions[opt])
        else:  # an unambiguous prefix, as argparse accepts
            hits = {d for o, d in actions.items() if o.startswith(opt)}
            if len(hits) == 1:
                given |= hits
    return given


#: Settings that exclude each other: a flag given on the command line replaces its partner from the file
#: (a run's config.toml holds --local-steps; repeating it with --local-epochs 1 means the epochs, not both).
EXCLUSIVE_PARTNERS = {"local_steps": "local_epochs", "local_epochs": "local_steps", "seed": "seeds",
                      "seeds": "seed", "dp_noise": "dp_epsilon", "dp_epsilon": "dp_noise"}


def apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace, values: dict, explicit: set[str],
                 source: str) -> None:
    """Set ``args`` from ``values`` (a config file) where no flag was given; checks each value as its flag would
    (one a flag overrides too). ``args._from_config`` records what was taken, for refusals to name its source."""
    by_dest = {a.dest: a for a in parser._actions if a.option_strings}
    taken = {}
    for key, value in values.items():
        if key == "help" or (key in NOT_CONFIG and key in by_dest and key != "config"):
            flag = max(by_dest[key].option_strings, key=len)
            raise ConfigError(f"{source}: {key.replace('_', '-')!r} is not read from a config file: it belongs to "
                              f"this invocation; pass {flag} on the command line")
        if key in NOT_CONFIG or key not in by_dest:
            known = sorted(k.replace("_", "-") for k in by_dest if k not in NOT_CONFIG and k != "help")
            raise ConfigError(f"{source}: unknown key {key.replace('_', '-')!r}; keys are the flags' names: "
                              f"{', '.join(known)}")
        if value is None:  # None: the automatic value (the flag's default)
            continue
        if not isinstance(value, (str, int, float, list)):  # TOML's dates and times are no setting's value
            raise ConfigError(f"{source}: {key.replace('_', '-')} = {value!r}: a TOML {type(value).__name__} is no "
                              f"setting's value; write text in quotes")
        overridden = key in explicit or EXCLUSIVE_PARTNERS.get(key) in explicit
        action = by_dest[key]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: {key.replace('_', '-')} takes true or false, got {value!r}")
            if not overridden:
                setattr(args, key, value)
                taken[key] = value
            continue
        try:
            text = as_text(value)  # as the library reads it: lists comma-joined, booleans true / false
            parsed = action.type(text) if action.type is not None else text
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            raise ConfigError(f"{source}: {key.replace('_', '-')} = {value!r}: {e}") from None
        if action.choices is not None and parsed not in action.choices:
            raise ConfigError(f"{source}: {key.replace('_', '-')} = {value!r} is not one of "
                              f"{', '.join(map(str, action.choices))}")
        if not overridden:
            setattr(args, key, parsed)
            taken[key] = value
    args._from_config = (source, taken)


def name_file_values(message: str, from_config) -> str:
    """``message`` with the settings it names that came from the config file, and from which (a refusal of
    ``--mu`` the user never typed says it is the file's ``mu = 0.1``)."""
    if not from_config:
        return message
    source, taken = from_config
    named = [f"{key.replace('_', '-')} = {toml_io.toml_value(value)}" for key, value in taken.items()
             if re.search(rf"--{re.escape(key.replace('_', '-'))}(?![\w-])", message)]
    return f"{message} ({'; '.join(named)} from {source})" if named else message
