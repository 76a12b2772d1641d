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
``ctc_log_probs`` [1, k, V], ``new_key_cache.i`` / ``new_value_cache.i``.

The second pass (``whisper_rescoring``: each segment re-encoded with full context, then the joint
CTC/Whisper-decoder beam search of ``edgeasr.decoding.joint_whisper``, which is numpy and runs
unchanged over either backend) takes three more graphs:

- ``encoder_full.onnx``: ``mel`` [1, N, 80] (a segment's log-mel, normalized inside) ->
  ``encoded`` [1, (N+1)//2, D], ``ctc_log_probs`` [1, (N+1)//2, V]; the torch encoder's full
  context forward with zero conv pads;
- ``decoder_cross.onnx``: ``encoded`` -> per-layer cross-attention ``cross_key.i`` /
  ``cross_value.i`` [1, H, T, D/H], once per segment;
- ``decoder_step.onnx``: ``tokens`` [B, U], ``offset`` [1] (position of the first),
  ``token_bias`` [V] (0, or -inf for tokens never proposed), ``top_k`` [1], the cross
  keys/values (batch 1, shared by the beams) and ``self_key_cache.i`` / ``self_value_cache.i``
  [B, H, L, D/H] -> the last position's ``top_log_probs`` / ``top_tokens`` [B, k] and
  ``eot_log_prob`` [B] (log-softmax under the bias) and the caches with these tokens.
  The token table is stored in float16 (the source weights are float16: lossless); the output
  projection is its own [D, V] initializer so that int8 quantization reaches it.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
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


class _WhisperFullEncoder(nn.Module):
    """A whole segment with full context, as ``WhisperEncoder.forward(feats, lengths, 0, -1)``
    does for one unpadded utterance."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.encoder = model.encoder

    def forward(self, mel):
        enc = self.encoder
        x = self.model.normalize(mel).transpose(1, 2)
        x = F.gelu(enc.conv1(x))
        x = F.gelu(enc.conv2(x)).transpose(1, 2)
        x = x + enc.positions.index_select(0, torch.arange(x.size(1), device=x.device))
        for layer in enc.layers:
            x, _ = layer(x, None)
        encoded = enc.norm(x)
        return encoded, self.model.ctc_log_probs(encoded)


class _DecoderCross(nn.Module):
    def __init__(self, decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, encoded):
        return tuple(t for pair in self.decoder.cross_keys_values(encoded) for t in pair)


def _proposals(logits, token_bias, top_k, eot: int):
    """What the joint search needs of a step, from logits [B, V]: the ``top_k`` best tokens'
    log-probabilities under ``token_bias`` (0 allowed, -inf never proposed) and end-of-text's
    (selection over 51,864 tokens in numpy costs more than the step's layers)."""
    log_probs = (logits + token_bias).log_softmax(dim=-1)
    values, indices = log_probs.topk(int(top_k) if isinstance(top_k, int) else top_k, dim=-1)
    return values, indices, log_probs[:, eot]


class _DecoderStep(nn.Module):
    """``WhisperDecoder._run`` for new tokens at ``offset``, caches in and out, last logits."""

    def __init__(self, decoder) -> None:
        super().__init__()
        self.decoder = decoder
        self.register_buffer("table", decoder.embed.weight.detach().half())
        self.register_buffer("projection", decoder.embed.weight.detach().T.contiguous())

    def forward(self, tokens, offset, token_bias, top_k, *tensors):
        dec = self.decoder
        layers = len(dec.layers)
        cross, caches = tensors[: 2 * layers], tensors[2 * layers :]
        steps = torch.arange(tokens.size(1), device=tokens.device) + offset
        x = self.table.index_select(0, tokens.reshape(-1)).float().reshape(tokens.size(0), tokens.size(1), -1)
        x = x + dec.positions.index_select(0, steps)
        keys = torch.arange(caches[0].size(2) + tokens.size(1), device=tokens.device)
        mask = (keys[None, :] <= steps[:, None]).unsqueeze(0)  # [1, U, L + U]: causal
        new_caches = []
        for index, layer in enumerate(dec.layers):
            x, (k, v) = layer(x, mask, (cross[2 * index], cross[2 * index + 1]), None,
                              (caches[2 * index], caches[2 * index + 1]))
            new_caches += [k, v]
        logits = dec.norm(x[:, -1]) @ self.projection
        top, tokens_out, eot = _proposals(logits, token_bias, top_k, dec.config.eot_id)
        return (top, tokens_out, eot, *new_caches)


def export_whisper_second_pass(packaged, out: Path, int8: bool, int4: bool = False, per_channel: bool = False,
                               int4_encoder: bool = False, gptq_codes: dict | None = None) -> dict:
    """Write encoder_full.onnx, decoder_cross.onnx, decoder_step.onnx (and their int8 twins) and
    whisper/ (tokenizer); returns the metadata entries they add. ``int4``: 4-bit decoder graphs
    (onnxruntime's quantizer); ``int4_encoder``: encoder_full.int4.onnx from the model's own
    4-bit codes; ``gptq_codes``: GPTQ codes (``edgeasr.quant.gptq.whisper_codes``) for the 4-bit
    graphs' products, decoder and full-context encoder, in place of round-to-nearest."""
    import shutil

    from edgeasr.export.int4 import write_int4_graph
    from edgeasr.export.onnx import _quantize_int4, _quantize_int8

    asr = packaged.model.eval()
    dec = asr.whisper_decoder
    if dec is None:
        return {}
    enc_config, dec_config = asr.encoder.config, dec.config
    layers, heads = dec_config.num_layers, dec_config.num_heads
    head_dim = dec_config.d_model // heads
    frames, batch = 40, 2  # batch 2 with batch-1 cross keys: the shared-keys attention is traced
    mel = torch.randn(1, 2 * frames, enc_config.input_dim)
    encoded = torch.randn(1, frames, enc_config.d_model)
    cross = [torch.randn(1, heads, frames, head_dim) for _ in range(2 * layers)]
    caches = [torch.randn(batch, heads, 3, head_dim) for _ in range(2 * layers)]
    tokens = torch.zeros(batch, 1, dtype=torch.long)
    offset = torch.tensor([3], dtype=torch.long)
    token_bias = torch.zeros(dec_config.vocab_size)
    top_k = torch.tensor([5], dtype=torch.long)
    cross_names = [f"cross_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]
    graphs = [
        ("encoder_full.onnx", _WhisperFullEncoder(asr), (mel,), ["mel"], ["encoded", "ctc_log_probs"],
         {"mel": {1: "mel_frames"}, "encoded": {1: "frames"}, "ctc_log_probs": {1: "frames"}}),
        ("decoder_cross.onnx", _DecoderCross(dec), (encoded,), ["encoded"], cross_names,
         {"encoded": {1: "frames"}, **{n: {2: "frames"} for n in cross_names}}),
        ("decoder_step.onnx", _DecoderStep(dec), (tokens, offset, token_bias, top_k, *cross, *caches),
         ["tokens", "offset", "token_bias", "top_k", *cross_names, *cache_names(layers, "self_")],
         ["top_log_probs", "top_tokens", "eot_log_prob", *cache_names(layers, "new_self_")],
         {"tokens": {0: "beams", 1: "steps"}, "top_log_probs": {0: "beams", 1: "k"}, "top_tokens": {0: "beams", 1: "k"},
          "eot_log_prob": {0: "beams"},
          **{n: {2: "frames"} for n in cross_names},
          **{n: {0: "beams", 2: "cached"} for n in cache_names(layers, "self_")},
          **{n: {0: "beams", 2: "cached_out"} for n in cache_names(layers, "new_self_")}}),
    ]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for name, module, args, inputs, outputs, dynamic in graphs:
            torch.onnx.export(module.eval(), args, str(out / name), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
            if int8:
                _quantize_int8(out / name, out / name.replace(".onnx", ".int8.onnx"),
                               per_channel=per_channel and name == "encoder_full.onnx")
            if int4 and name.startswith("decoder"):
                _quantize_int4(out / name, out / name.replace(".onnx", ".int4.onnx"), gptq_codes)
            if int4_encoder and name == "encoder_full.onnx":
                write_int4_graph(out / name, out / "encoder_full.int4.onnx", gptq_codes)
    shutil.copy2(packaged.whisper_dir / "tokenizer.json", out / "whisper_tokenizer.json")
    tokens_info = packaged.whisper_tokens
    return {
        "second_pass": "whisper",
        "whisper_prompt": list(packaged.whisper_prompt),
        "whisper_eot": tokens_info.eot,
        "whisper_vocab_size": dec_config.vocab_size,
        "whisper_max_positions": dec_config.max_positions,
        "whisper_layers": layers,
        "whisper_heads": heads,
        "whisper_d_model": dec_config.d_model,
        **({"int4_decoder_rounding": "gptq" if gptq_codes else "round_to_nearest"} if int4 else {}),
    }


def cache_names(num_layers: int, prefix: str = "") -> list[str]:
    return [f"{prefix}{kind}_cache.{i}" for i in range(num_layers) for kind in ("key", "value")]


def export_whisper_onnx(packaged, out: Path, chunk: int, left: int, int8: bool, second_pass: bool = True,
                        int4: bool = False, gptq_codes: dict | None = None) -> dict:
    """Write encoder.onnx (and encoder.int8.onnx), the second pass's graphs when the model has
    Whisper's decoder, tokenizer/ and metadata.json; returns the metadata."""
    from edgeasr.export.int4 import linear_fingerprint, write_int4_graph
    from edgeasr.export.onnx import _quantize_int8, float_twin, stamp_metadata

    source_quantization = packaged.model.config.quantization
    # GPTQ codes for the encoder's layers (``whisper_codes(..., encoder=True)``) make its graphs 4-bit too
    encoder_codes = bool(gptq_codes) and any(linear_fingerprint(m.weight) in gptq_codes
                                             for m in packaged.model.encoder.modules() if isinstance(m, nn.Linear))
    four_bit = int4 and (has_4bit_weights(packaged.model) or encoder_codes)
    if source_quantization is not None:
        # the graphs compute with the quantized model's rounded weights (see float_twin)
        packaged = replace(packaged, model=float_twin(packaged.model))
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
        "source_quantization": source_quantization,
        # encoder*.int4.onnx: the model's own 4-bit codes (or GPTQ's) as MatMulNBits (edgeasr.export.int4)
        "int4_encoder": four_bit,
        **({"int4_encoder_rounding": "gptq"} if int4 and encoder_codes else {}),
    }
    stamp_metadata(path, metadata)
    # a quantized model's 8-bit weights are on a per-channel grid: int8 per channel keeps them
    per_channel = source_quantization is not None
    if int8:
        _quantize_int8(path, out / "encoder.int8.onnx", per_channel=per_channel)
    if four_bit:
        write_int4_graph(path, out / "encoder.int4.onnx", gptq_codes)
    if second_pass:
        metadata.update(export_whisper_second_pass(packaged, out, int8, int4, per_channel=per_channel,
                                                   int4_encoder=four_bit, gptq_codes=gptq_codes))
    metadata["weights_files"] = share_graph_weights(out)
    return metadata


#: graphs of one precision that share a weights file (edgeasr.export.shared_weights)
SHARED_GRAPHS = ("encoder", "encoder_full", "decoder_cross", "decoder_step")


def share_graph_weights(out: Path) -> list[str]:
    """Per precision, the encoder and decoder graphs' large tensors in one file, each once: the two
    encoder graphs hold the same weights, a tied 4-bit token table and projection the same codes."""
    from edgeasr.export.shared_weights import share_weights

    written = []
    for suffix in (".onnx", ".int8.onnx", ".int4.onnx"):
        graphs = [out / f"{name}{suffix}" for name in SHARED_GRAPHS if (out / f"{name}{suffix}").exists()]
        if graphs:
            data_name = f"weights{suffix[: -len('.onnx')]}.bin"
            share_weights(graphs, data_name)
            written.append(data_name)
    return written


def has_4bit_weights(asr) -> bool:
    """Whether any layer of a (quantized) model holds 4-bit weights."""
    from edgeasr.quant.qat import quantized_layers

    return asr.config.quantization is not None and any(
        spec.weight_bits == 4 for spec in quantized_layers(asr).values())
