"""edgeasr: efficient streaming speech recognition for small devices."""

__version__ = "0.1.0"
