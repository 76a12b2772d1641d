"""edgeasr: efficient streaming speech recognition for small devices."""

__version__ = "0.1.0"


def load_model(model="default", backend: str = "torch", **options):
    """A recognizer: ``.transcribe(path_or_array)`` and ``.stream()``; see ``edgeasr.api``."""
    from edgeasr.api import load_model as load

    return load(model, backend, **options)
