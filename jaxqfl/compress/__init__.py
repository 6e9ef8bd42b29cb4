"""Update codecs: compress what clients and server send each other, count its bits.

A codec is a NamedTuple of pure functions (``init``, ``encode``, ``decode``,
``bits``, ``finalize``, optional ``integer_sum``) built by a factory; see
:mod:`jaxqfl.compress.base` for the contract the round engine relies on.

Codecs: :func:`identity`, :func:`uniform`, :func:`qsgd`, :func:`terngrad`,
:func:`sign`, :func:`natural`, :func:`topk`, :func:`randk`.
Wrappers: :func:`error_feedback`, :func:`hadamard`; :func:`chain` nests them.
Spec strings (``--uplink qsgd:4+ef``): :func:`from_spec`, :data:`SPEC_GRAMMAR`.
Integer-domain aggregation: :class:`IntegerSum`, :func:`aggregate_in_integers`.
"""
from jaxqfl.compress.base import (
    Codec,
    CodecWrapper,
    bits_per_message,
)
from jaxqfl.compress.chain import chain
from jaxqfl.compress.error_feedback import ErrorFeedbackState, error_feedback
from jaxqfl.compress.hadamard import hadamard
from jaxqfl.compress.identity import identity
from jaxqfl.compress.integer_sum import IntegerAggregate, IntegerSum, aggregate_in_integers
from jaxqfl.compress.natural import natural
from jaxqfl.compress.qsgd import qsgd
from jaxqfl.compress.sign import sign
from jaxqfl.compress.spec import CODEC_NAMES, MODIFIER_NAMES, SPEC_GRAMMAR, from_spec
from jaxqfl.compress.sparsify import randk, topk
from jaxqfl.compress.terngrad import terngrad
from jaxqfl.compress.uniform import uniform

__all__ = [
    "CODEC_NAMES",
    "Codec",
    "CodecWrapper",
    "ErrorFeedbackState",
    "IntegerAggregate",
    "IntegerSum",
    "MODIFIER_NAMES",
    "SPEC_GRAMMAR",
    "aggregate_in_integers",
    "bits_per_message",
    "chain",
    "error_feedback",
    "from_spec",
    "hadamard",
    "identity",
    "natural",
    "qsgd",
    "randk",
    "sign",
    "terngrad",
    "topk",
    "uniform",
]
