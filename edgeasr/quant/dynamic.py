"""Dynamic int8: torch's post-training quantization of Linear layers, the simplest baseline.

Weights become int8 (per tensor) once; activations are quantized on the fly per batch, so it
needs no calibration. It is applied when a model is loaded (``DecodeOptions.dynamic_int8``,
``--dynamic-int8``), not stored: the model file stays float. Convolutions, attention products and
the decoder's fused projections stay float.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn


def dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every nn.Linear replaced by a dynamic int8 Linear."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the size the model would take on disk."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())
