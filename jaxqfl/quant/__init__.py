"""jaxqfl.quant: quantizers (pure jnp numerics with custom-VJP estimators) and policies.

Quantizer factories (hyper-parameters in, NamedTuple of pure functions out):

    uniform(bits, *, symmetric, axis, scale_method, percentile, rounding, ste, max_bits) -> Quantizer
        (with max_bits, bits may be a traced int32 in [2, max_bits])
    binary(*, scale_method, axis, rounding, ste) -> Quantizer
    cast(dtype, *, rounding, scaled, axis) -> Quantizer             # fp16 / bf16 / fp8
    power_of_two(bits, *, axis, rounding, ste) -> Quantizer         # log quantization
    natural_compression() -> Quantizer
    codebook(table, *, axis, rounding, ste), nf4(...), kmeans(bits, *, iters, ...) -> Quantizer
    lsq(bits, *, signed, per_example, grad_scale, rounding) -> LearnedQuantizer
    pact(bits, *, alpha_init, rounding) -> LearnedQuantizer

    Quantizer:        quantize(x, key) -> QTensor, dequantize(q), fake_quant(x, key)
    LearnedQuantizer: init(x) -> param, quantize(x, param, key), dequantize(q),
                      fake_quant(x, param, key)

Policies: ``Policy(rules)``, ``Rule(pattern, weights, activations)``,
``preset(name)``, ``bind(policy, params) -> Binding``; export: ``export(params, policy)``;
``bit_family(names) -> BitFamily | None`` (presets equal up to uniform widths, one
policy whose widths follow a traced index: ``family.policy(index)``).

Post-training quantization: ``static_uniform(bits, lo, hi)`` (calibrated fixed-range
quantizer), ``calibrate`` (range statistics, ``calibrate.calibrate(inputs, method)``),
``calibrated_policy(policy, params, ranges)``; adjust: ``bias_correction``, ``equalize``,
``adaround`` (each ``(params, policy / graph, inputs) -> params``); integer inference:
``export_integer(params, calibrated_policy, graph) -> IntegerModel``,
``integer_apply(model, x)``.
"""
from jaxqfl.quant import calibrate, graph, rounding
from jaxqfl.quant.adaround import adaround
from jaxqfl.quant.bias_correction import bias_correction
from jaxqfl.quant.equalize import equalize
from jaxqfl.quant.integer import IntegerModel, bias_to_grid, export_integer, integer_apply
from jaxqfl.quant.calibrate import calibrated_policy
from jaxqfl.quant.static import static_uniform
from jaxqfl.quant.export import Exported, export
from jaxqfl.quant.floats import cast, round_float_stochastic
from jaxqfl.quant.learned import lsq, lsq_grid, lsq_step_grad, pact
from jaxqfl.quant.nonuniform import codebook, kmeans, kmeans_fit, natural_compression, nf4, nf4_table, power_of_two
from jaxqfl.quant.bit_family import BitFamily, bit_family
from jaxqfl.quant.policy import FIRST, LAST, PRESETS, Binding, Policy, Rule, bind, param_paths, preset, resolve
from jaxqfl.quant.qtensor import LearnedQuantizer, QTensor, Quantizer, static_bits
from jaxqfl.quant.uniform import binary, code_range, uniform

__all__ = [
    "rounding",
    "calibrate",
    "calibrated_policy",
    "static_uniform",
    "graph",
    "bias_correction",
    "equalize",
    "adaround",
    "bias_to_grid",
    "export_integer",
    "integer_apply",
    "IntegerModel",
    "QTensor",
    "Quantizer",
    "static_bits",
    "LearnedQuantizer",
    "uniform",
    "binary",
    "code_range",
    "cast",
    "round_float_stochastic",
    "power_of_two",
    "natural_compression",
    "codebook",
    "nf4",
    "nf4_table",
    "kmeans",
    "kmeans_fit",
    "lsq",
    "lsq_grid",
    "lsq_step_grad",
    "pact",
    "Rule",
    "Policy",
    "Binding",
    "BitFamily",
    "bit_family",
    "FIRST",
    "LAST",
    "PRESETS",
    "preset",
    "resolve",
    "bind",
    "param_paths",
    "export",
    "Exported",
]
