"""jaxqfl.models: models as ``Model(init, apply)`` pairs of pure functions.

    init(key, sample_x) -> params
    apply(params, x, *, key=None) -> outputs [B, num_outputs]

Every factory takes ``policy`` (a ``jaxqfl.quant`` policy, its preset name, or
``None`` for float) and then trains with quantization-aware fake quantization.
"""
from jaxqfl.models.centroids import centroids
from jaxqfl.models.capture import layer_inputs
from jaxqfl.models.core import Model, from_flax, from_functions
from jaxqfl.models.nnx_module import from_nnx
from jaxqfl.models.intercept import quantize_model
from jaxqfl.models.graphs import cnn_graph, mlp_graph
from jaxqfl.models.layers import QATLayers, QConv, QDense
from jaxqfl.models.qat import qat_model
from jaxqfl.models.resnet import ResNet, resnet20
from jaxqfl.models.sequence import CharLSTM, Transformer, char_lstm, transformer
from jaxqfl.models.zoo import CNN, MLP, cnn, linear_regression, logistic_regression, mlp

__all__ = [
    "Model",
    "from_flax",
    "from_functions",
    "from_nnx",
    "quantize_model",
    "mlp",
    "cnn",
    "logistic_regression",
    "linear_regression",
    "centroids",
    "resnet20",
    "char_lstm",
    "transformer",
    "ResNet",
    "CharLSTM",
    "Transformer",
    "MLP",
    "CNN",
    "QDense",
    "QConv",
    "QATLayers",
    "qat_model",
    "layer_inputs",
    "mlp_graph",
    "cnn_graph",
]
