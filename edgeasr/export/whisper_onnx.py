"""ONNX export of a Whisper-encoder model's streaming first pass: chunk graph with KV caches.

The torch ``WhisperEncoderStream`` runs its conv stem incrementally with buffers; a graph is
simpler with a window instead. Encoder frame j needs conv1 outputs 2j-1..2j+1, which need mel
frames 2j-2..2j+2, so a chunk of k encoder frames starting at frame s is a function of the
window of mel frames 2s-2 .. 2s+2k (2k + 3 frames; consecutive windows overlap by 3 and advance
by 2k). The convolutions run unpadded over the window; their zero pads at the ends of the
stream are supplied by the runtime: zero mel frames for conv1's, and a mask input that zeroes
the conv1 outputs standing for conv2's pads (position -1 and position N, which are zeros, not
conv1 of zero frames). Positions come from an ``offset`` input, and per-layer key/value caches
[1, H, L, D/H] go in and (cache + chunk) come out; the runtime trims them to the left context.

``encoder.onnx``: inputs ``mel`` [1, W, 80] (normalized inside), ``stem_mask`` [1, W - 2],
``offset`` [1] int64, ``key_cache.i`` / ``value_cache.i``; outputs ``encoded`` [1, k, D],
``ctc_log_probs`` [1, k, V], ``new_key_cache.i`` / ``new_value_cache.i``. The Whisper second pass
(full-context re-encoding and the decoder's joint search) is not exported: on ONNX Runtime the
model decodes with its first pass (CTC prefix beam with the LM and hotwords).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

OPSET = 17
FORMAT = "edgeasr-onnx-whisper-streaming"


class _WhisperChunk(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.encoder = model.encoder

    def forward(self, mel, stem_mask, offset, *caches):
        enc = self.encoder
        x = self.model.normalize(mel).transpose(1, 2)  # [1, 80, W]
        h1 = F.gelu(F.conv1d(x, enc.conv1.weight, enc.conv1.bias)) * stem_mask.unsqueeze(1)
        h2 = F.gelu(F.conv1d(h1, enc.conv2.weight, enc.conv2.bias, stride=2)).transpose(1, 2)  # [1, k, D]
        steps = torch.arange(h2.size(1), device=h2.device) + offset
        x = h2 + enc.positions.index_select(0, steps)
        new_caches = []
        for index, layer in enumerate(enc.layers):
            x, (keys, values) = layer(x, None, (caches[2 * index], caches[2 * index + 1]))
            new_caches += [keys, values]
        encoded = enc.norm(x)
        return (encoded, self.model.ctc_log_probs(encoded), *new_caches)


def cache_names(num_layers: int, prefix: str = "") -> list[str]:
    return [f"{prefix}{kind}_cache.{i}" for i in range(num_layers) for kind in ("key", "value")]


def export_whisper_onnx(packaged, out: Path, chunk: int, left: int, int8: bool) -> dict:
    """Write encoder.onnx (and encoder.int8.onnx), tokenizer/ and metadata.json; returns the metadata."""
    from edgeasr.export.onnx import _quantize_int8, stamp_metadata

    asr = packaged.model.eval()
    enc = asr.encoder
    config = enc.config
    heads, head_dim = config.num_heads, config.d_model // config.num_heads
    wrapper = _WhisperChunk(asr).eval()
    window = 2 * chunk + 3
    mel = torch.randn(1, window, config.input_dim)
    mask = torch.ones(1, window - 2)
    offset = torch.tensor([chunk], dtype=torch.long)
    caches = [torch.randn(1, heads, chunk, head_dim) for _ in range(2 * config.num_layers)]
    inputs = ["mel", "stem_mask", "offset", *cache_names(config.num_layers)]
    outputs = ["encoded", "ctc_log_probs", *cache_names(config.num_layers, "new_")]
    dynamic = {"mel": {1: "window"}, "stem_mask": {1: "stem"}, "encoded": {1: "frames"},
               "ctc_log_probs": {1: "frames"}}
    for name in cache_names(config.num_layers):
        dynamic[name] = {2: "cached"}
        dynamic["new_" + name] = {2: "cached_out"}
    path = out / "encoder.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (mel, mask, offset, *caches), str(path), input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    metadata = {
        "format": FORMAT,
        "version": 1,
        "chunk_size": chunk,
        "num_left_chunks": left,
        "max_left_frames": left * chunk if left >= 0 else -1,
        "window": window,
        "stride": 2 * chunk,
        "subsampling_rate": enc.subsampling_rate,
        "right_context": 0,
        "frame_shift_ms": 1000.0 * packaged.features.frame_shift,
        "features": packaged.features.to_dict(),
        "vocab_size": asr.config.vocab_size,
        "blank_id": asr.blank_id,
        "d_model": config.d_model,
        "num_layers": config.num_layers,
        "num_heads": heads,
        "max_frames": enc.max_frames,
        # kept for readers of the block-plan format: no per-layer cache table here
        "layers": [],
        "has_decoder": False,
        "source_quantization": None,
    }
    stamp_metadata(path, metadata)
    if int8:
        _quantize_int8(path, out / "encoder.int8.onnx", per_channel=False)
    return metadata
