"""An experiment's settings as TOML: ``key = value`` lines at the top level, the keys the flags' names.

``client-lr`` or ``client_lr`` (not both); TOML has no null, so a setting left to its automatic value is
absent. Reading uses ``tomllib``; writing uses the small writer below (strings, numbers, booleans and lists
of those are all an experiment holds; ``nan`` / ``inf`` as TOML writes them).
"""
from __future__ import annotations

import math
import pathlib
import tomllib

from jaxqfl.value_kinds import InvalidValue


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}


def toml_value(v) -> str:
    """One value as TOML."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return repr(v)
    if isinstance(v, str):  # a TOML basic string: backslash, quote and every control character escaped
        return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                             for c in v) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} ({type(v).__name__}) as TOML")


def to_toml(config: dict) -> str:
    """A flat dict as TOML ``key = value`` lines (keys with dashes, as the flags); None values are left out."""
    lines = [f"{k.replace('_', '-')} = {toml_value(v)}" for k, v in config.items() if v is not None]
    return "\n".join(lines) + "\n"


def read_toml(path, what: str = "config") -> dict:
    """The file's keys (dashes turned to underscores) and values; ``InvalidValue`` naming the problem.

    ``what`` names the file in a refusal (the CLI passes ``--config``).
    """
    p = pathlib.Path(path)
    if p.is_dir():
        raise InvalidValue(f"{what} {str(path)!r} is a folder; {what} takes a TOML file")
    if not p.is_file():
        raise InvalidValue(f"{what} {str(path)!r}: no such file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8-sig"))  # a byte-order mark (some editors write one) skipped
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InvalidValue(f"{what} {str(path)!r} is not valid TOML: {e}") from None
    out, spelled = {}, {}
    for k, v in data.items():
        if isinstance(v, dict):
            raise InvalidValue(f"{what} {str(path)!r}: tables ([{k}]) are not used; write every setting as "
                               f"key = value at the top level")
        key = k.replace("-", "_")
        if key in spelled:  # one setting, two spellings: which one was meant is a guess
            raise InvalidValue(f"{what} {str(path)!r}: {spelled[key]!r} and {k!r} are two spellings of one setting "
                               f"(= {out[key]!r} and = {v!r}); keep one of them")
        out[key], spelled[key] = v, k
    return out
