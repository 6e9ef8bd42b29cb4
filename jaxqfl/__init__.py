"""jaxqfl: quantized federated learning, simulated on accelerators with JAX."""

__version__ = "0.1.0"
