"""ecgfm: a JAX framework for ECG foundation models."""

__version__ = "0.1.0"


def load_encoder(path):
    """Loads an encoder written by `ecgfm export` (see `ecgfm.export.load_encoder`)."""
    from ecgfm.export import load_encoder as _load_encoder

    return _load_encoder(path)
