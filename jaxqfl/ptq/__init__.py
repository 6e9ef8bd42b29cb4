"""jaxqfl.ptq: post-training quantization steps that need the engine's mesh (federated calibration)."""
from jaxqfl.ptq.federated_calibration import federated_calibrate, federated_histograms, federated_minmax

__all__ = ["federated_calibrate", "federated_minmax", "federated_histograms"]
