"""One setting of an experiment, declared once: its type, default, range and one-line doc.

A section of an :class:`jaxqfl.Experiment` is a frozen dataclass whose fields are made by :func:`setting`;
the field's annotation is its type, its default the default, and its metadata holds how a value is read
(``parse``: one of ``jaxqfl.value_kinds``, or ``int`` / ``float``; None: text), the allowed names
(``choices``), the doc (the flag's help) and, for the command line, the flag. ``jaxqfl run``'s flags,
their ``--help`` and their range checks are generated from these fields (``jaxqfl.cli.experiment_flags``),
a TOML config's keys are the flags' names, and a Python script sets the same fields. Each way in reads a
value through the same ``parse``, so a value has one meaning and one refusal whichever way it is given.

A value of None is the setting's automatic value (a dataset-dependent default, filled in when the run is
resolved); it stands for "not given", as an absent flag or TOML key does.
"""
from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Any, Callable, NamedTuple, Optional

from jaxqfl.value_kinds import InvalidValue, as_text


class SettingInfo(NamedTuple):
    """A setting's reading and documentation (a field's ``metadata["setting"]``)."""

    parse: Optional[Callable[[str], Any]]  # text -> value (raises InvalidValue); None: the text itself
    choices: Optional[tuple]  # the allowed values, or None
    help: str  # the flag's help: one line, the doc of the setting
    metavar: Optional[str]  # how --help names the value
    switch: bool  # a flag without a value (True when given)
    flag: str  # the command-line flag, e.g. "--client-lr"
    dest: str  # the setting's name in a flat config (a TOML key with "_"); the field's name unless a keyword


def setting(default, parse=None, *, choices=None, help: str = "", metavar: str | None = None,
            switch: bool = False, flag: str | None = None, dest: str | None = None):
    """A dataclass field for one setting (see the module docstring); ``flag`` defaults to ``--name-with-dashes``."""
    info = SettingInfo(parse, tuple(choices) if choices is not None else None, help, metavar, switch, flag or "", dest or "")
    return dataclasses.field(default=default, metadata={"setting": info})


def info_of(field: dataclasses.Field) -> SettingInfo:
    info = field.metadata["setting"]
    dest = info.dest or field.name
    return info._replace(flag=info.flag or "--" + dest.replace("_", "-"), dest=dest)


def read_value(field: dataclasses.Field, value, where: str):
    """``value`` (text, a TOML value or a Python value) as the setting's typed value; None: the default.

    ``where`` names the setting in a refusal (e.g. ``"training.client_lr (--client-lr)"``).
    """
    info = info_of(field)
    if value is None:
        return field.default
    if info.switch:
        import numpy as np

        if not isinstance(value, (bool, np.bool_)):  # NumPy's booleans too
            raise InvalidValue(f"{where} takes true or false, got {value!r}")
        return bool(value)
    if isinstance(value, dict):
        raise InvalidValue(f"{where} = {value!r}: a table is not a value of this setting")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    elif getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a NumPy / JAX scalar array: its number
        value = value.item()
    elif getattr(value, "ndim", None) == 1 and hasattr(value, "tolist"):  # a 1-d array: its list (a sweep)
        value = value.tolist()
    if not isinstance(value, (str, numbers.Real, list, tuple)):  # bytes, objects: their repr was read as the text
        raise InvalidValue(f"{where} = {value!r}: expected text (a str; a path may be a pathlib.Path), a number or "
                           f"a list (its type is {type(value).__name__})")
    text = as_text(value)
    try:
        parsed = info.parse(text) if info.parse is not None else text
    except InvalidValue as e:
        raise InvalidValue(f"{where} = {value!r}: {e}") from None
    except (TypeError, ValueError):
        kind = getattr(info.parse, "__name__", "value")
        raise InvalidValue(f"{where} = {value!r}: expected {'an' if kind[0] in 'aeiou' else 'a'} {kind}") from None
    if info.choices is not None and parsed not in info.choices:
        raise InvalidValue(f"{where} = {value!r} is not one of {', '.join(map(str, info.choices))}")
    return parsed


class Section:
    """Base of a section's frozen dataclass: every given value is read (and refused) as its flag's would be."""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is field.default:
                continue
            where = f"{type(self).section_name}.{field.name} ({info_of(field).flag})"
            value = read_value(field, value, where)
            if field.default is not None and value == read_value(field, field.default, where):
                value = field.default  # one form per value: 1 given for a default of 1.0 reads as the default
            object.__setattr__(self, field.name, value)

    section_name = ""  # set by each section class: its attribute name on an Experiment


def make_section(cls_name: str, section_name: str, doc: str, fields: list) -> type:
    """A section class generated from a registry: ``fields`` are ``(name, annotation, setting(...))`` triples."""
    cls = dataclasses.make_dataclass(cls_name, fields, bases=(Section,), frozen=True,
                                     namespace={"section_name": section_name, "__doc__": doc})
    cls.__module__ = "jaxqfl.experiment"
    return cls


def hyper_fields(hyper: dict, chooser: str) -> list:
    """The fields of registry hyper-parameters (``jaxqfl.registry.hyper_users``); ``chooser``: the flag that picks
    an entry (``--algorithm``), named in each help with the entries that read the hyper-parameter."""
    out = []
    for name, (h, users) in hyper.items():
        default = f"; default {h.default:g}" if isinstance(h.default, float) else (
            f"; default {h.default}" if h.default is not None else "")
        sweep = "; a comma-separated list sweeps it" if h.sweep else ""
        doc = f"{h.doc} ({chooser} {' / '.join(users)}{default}){sweep}"
        out.append((name, h.type, setting(None, h.kind, help=doc, metavar=h.metavar)))
    return out
