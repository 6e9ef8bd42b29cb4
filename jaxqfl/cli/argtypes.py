"""The library's value kinds (``jaxqfl.value_kinds``) as argparse types: a refusal shows its message."""
from __future__ import annotations

import argparse
import functools

from jaxqfl import value_kinds as values


def as_argparse_type(parse):
    """``parse`` with :class:`values.InvalidValue` turned into ``argparse.ArgumentTypeError`` (same message);
    ``int`` and ``float`` pass as they are (argparse's own message for them)."""
    if parse is None or parse in (int, float):
        return parse

    @functools.wraps(parse)
    def typed(text):
        try:
            return parse(text)
        except values.InvalidValue as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return typed


def int_at_least(lowest: int, what: str):
    """An argparse type: an integer >= ``lowest``."""
    return as_argparse_type(values.int_at_least(lowest, what))


positive_int = as_argparse_type(values.positive_int)
nonneg_int = as_argparse_type(values.nonneg_int)
seed = as_argparse_type(values.seed)
positive_float = as_argparse_type(values.positive_float)
nonneg_float = as_argparse_type(values.nonneg_float)
chunk_size = as_argparse_type(values.chunk_size)
on_off = as_argparse_type(values.on_off)
positive_floats = as_argparse_type(values.positive_floats)
nonneg_floats = as_argparse_type(values.nonneg_floats)
positive_ints = as_argparse_type(values.positive_ints)
seed_list = as_argparse_type(values.seed_list)
