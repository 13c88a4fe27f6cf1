"""ecgfm: a JAX framework for ECG foundation models."""

__version__ = "0.1.0"
