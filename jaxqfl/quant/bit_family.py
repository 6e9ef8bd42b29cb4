"""Bit families: presets equal up to the widths of their uniform quantizers, served by ONE policy.

Presets (or policies) whose rules are identical up to the integer widths of
uniform quantizers (same patterns in the same order, quantizers built by
``uniform`` with equal hyper-parameters other than ``bits``, the same slots
float) form a family; ``family.policy(index)`` is one policy whose widths are
looked up from a traced member index. Among the presets, ``full`` and ``w4a8``
form one (they differ only in the kernels' 4 or 8 bits); ``w8`` has float inputs
where they quantize them, ``mixed`` and ``binary`` have first/last-layer rules,
``lsq4`` a learned quantizer, ``none`` no quantizer at all, so none of those
joins them. Client tiers of a family train in one pass (``jaxqfl.models.switch``).
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxqfl.quant.policy import Policy, Rule, resolve
from jaxqfl.quant.qtensor import Quantizer
from jaxqfl.quant.uniform import uniform


class BitFamily(NamedTuple):
    """Policies identical up to uniform bit-widths (module docstring, ``bit_family``).

    Attributes:
      names: the members' names, in the order given (member ``m`` is index ``m``).
      template: member 0's policy: the patterns and the quantizers' other hyper-parameters.
      widths: per member, per rule, ``(weight bits, activation bits)`` (``None`` where float).
    """

    names: tuple
    template: Policy
    widths: tuple

    def policy(self, index) -> Policy:
        """The policy of member ``index``, a Python int or a traced int32 scalar (per client under vmap).

        A slot whose width is the same for every member keeps member 0's (static)
        quantizer; any other is ``uniform(table[index], max_bits=max(table), ...)`` with
        ``table`` the members' widths for that slot (a ``[M]`` int32 constant), which
        computes exactly what member ``index``'s static quantizer computes (forward and
        STE gradient, ``jaxqfl.quant.uniform``). An index outside ``[0, M)`` is clamped
        by the lookup: the caller (``engine.Tiers``) keeps it in range.
        """
        static = isinstance(index, (int, np.integer)) and not isinstance(index, bool)
        if static and not 0 <= int(index) < len(self.names):
            raise ValueError(f"bit family {list(self.names)}: member {index} is out of range [0, {len(self.names)})")
        if not static:
            index = jnp.asarray(index)
            if index.ndim != 0 or not jnp.issubdtype(index.dtype, jnp.integer):
                raise ValueError(f"bit family {list(self.names)}: the member index must be an integer scalar, got "
                                 f"{index.dtype} of shape {index.shape}")
        rules = []
        for r, rule in enumerate(self.template.rules):
            slots = []
            for slot, q in enumerate((rule.weights, rule.activations)):
                table = [w[r][slot] for w in self.widths]
                if q is None or len(set(table)) == 1:
                    slots.append(q)
                elif static:  # a static member: its own static quantizer
                    slots.append(uniform(table[int(index)], **dict(q.spec[1])))
                else:
                    bits = jnp.asarray(table, jnp.int32)[index]
                    slots.append(uniform(bits, max_bits=max(table), **dict(q.spec[1])))
            rules.append(Rule(rule.pattern, *slots))
        return Policy(tuple(rules), self.names[int(index)] if static else f"bits[{'|'.join(self.names)}]")


def _uniform_slot(q) -> bool:
    """A static ``uniform`` quantizer of 2 to 16 bits: the kind a family may vary."""
    return (isinstance(q, Quantizer) and q.traced_bits is None and bool(q.spec) and q.spec[0] == "uniform"
            and q.bits >= 2)


def bit_family(members) -> BitFamily | None:
    """The :class:`BitFamily` of ``members`` (preset names or ``Policy``s), or ``None`` if they are not one.

    They form a family when every member quantizes something (no float ``none``) and
    all have the same rules up to widths: the same patterns in the same order, and in
    each rule's weight and activation slot either float in every member, or a
    static ``uniform`` quantizer of at least 2 bits in every member with equal
    hyper-parameters other than ``bits`` (grid symmetry, channel axis, statistic,
    percentile, rounding, STE: ``Quantizer.spec``). Binary (1-bit), learned,
    non-uniform and float-format quantizers never vary within a family.

    Cost: a model built from ``family.policy(index)`` runs ONE forward/backward pass
    whatever the index, where ``lax.switch`` over the members' models runs all M
    under a vmap over clients (``jaxqfl.models.switch``).
    """
    members = tuple(members)
    if not members:
        raise ValueError("bit_family needs at least one preset or policy")
    policies = [resolve(m) for m in members]
    if any(p is None for p in policies):
        return None
    first = policies[0]
    widths = []
    for p in policies:
        if len(p.rules) != len(first.rules):
            return None
        row = []
        for rule, ref in zip(p.rules, first.rules):
            if not isinstance(rule, Rule) or rule.pattern != ref.pattern:
                return None
            pair = []
            for q, q0 in ((rule.weights, ref.weights), (rule.activations, ref.activations)):
                if q is None and q0 is None:
                    pair.append(None)
                elif _uniform_slot(q) and _uniform_slot(q0) and q.spec == q0.spec:
                    pair.append(int(q.bits))
                else:
                    return None
            row.append(tuple(pair))
        widths.append(tuple(row))
    names = tuple(m if isinstance(m, str) else m.name for m in members)
    return BitFamily(names, first, tuple(widths))
