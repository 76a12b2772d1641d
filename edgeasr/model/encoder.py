"""The one encoder: subsampling, then a per-layer block plan, then a final LayerNorm.

Variants are config, not forks: ``blocks: [conv, conv, performer, performer, ...]`` (or
``num_blocks`` of one kind, ``block_kind``) picks each layer's kind from
``edgeasr.model.blocks.BLOCKS``; ``final_norm: none`` drops the last LayerNorm (FusionFormer).

Two ways to run it, which give the same numbers (the tests hold them to 1e-4):
- ``forward``: whole padded batch under a chunk mask (training; offline decoding).
- ``forward_chunk`` / ``EncoderStream``: one chunk at a time with explicit caches (streaming).
With a limited left context the caches are trimmed every chunk, so memory is bounded however
long the stream runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from edgeasr.model.blocks import BLOCKS
from edgeasr.model.dynamic import DynamicCompute, DynamicConfig, GateCounter, GateRecord, module_costs
from edgeasr.nn.mask import attention_mask, padding_mask
from edgeasr.nn.subsampling import ConvSubsampling


@dataclass
class EncoderConfig:
    input_dim: int = 80
    d_model: int = 256
    num_heads: int = 4
    d_ff: int = 1024
    num_blocks: int = 12
    #: Per-layer plan; overrides num_blocks when given, e.g. [conv, conv, conformer, conformer].
    blocks: list[str] = field(default_factory=list)
    #: The kind of every layer when no plan is given.
    block_kind: str = "conformer"
    #: Random features per head of Performer attention (its state is m x d_head + m per head).
    performer_features: int = 64
    #: "layer" (LayerNorm on the encoder output) or "none" (FusionFormer: no LayerNorm anywhere).
    final_norm: str = "layer"
    kernel_size: int = 15
    causal: bool = True
    subsampling_rate: int = 4
    #: Channels of the convolutional subsampling (default: d_model). Its second 2-D convolution
    #: costs channels^2 x 9 per frequency bin and frame: at d_model 192 that is ~13 M MACs per
    #: frame, more than all blocks of a small encoder; 32 channels cost ~0.3 M.
    subsampling_channels: int | None = None
    dropout: float = 0.1
    attention_dropout: float = 0.0
    #: Dynamic compute (edgeasr.model.dynamic.DynamicConfig as a dict): I3D dynamic depth or
    #: compute-amortized frame skipping; None = every module runs on every frame.
    dynamic: dict | None = None

    def plan(self) -> list[str]:
        return list(self.blocks) if self.blocks else [self.block_kind] * self.num_blocks

    @classmethod
    def from_dict(cls, config: dict) -> "EncoderConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown encoder option(s): {', '.join(sorted(unknown))}")
        result = cls(**config)
        if result.final_norm not in ("layer", "none"):
            raise ValueError(f"encoder final_norm must be 'layer' or 'none', not '{result.final_norm}'")
        unknown_kinds = [kind for kind in result.plan() if kind not in BLOCKS]
        if unknown_kinds:
            raise ValueError(f"unknown block kind '{unknown_kinds[0]}' (known: {', '.join(BLOCKS)})")
        if result.dynamic is not None:
            DynamicConfig.from_dict(result.dynamic)
            if set(result.plan()) != {"conformer"}:
                raise ValueError("dynamic compute gates conformer blocks; use block_kind conformer")
        return result

    def to_dict(self) -> dict:
        return asdict(self)


class Encoder(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.subsampling = ConvSubsampling(config.input_dim, config.d_model, config.subsampling_rate,
                                           config.subsampling_channels)
        self.scale = math.sqrt(config.d_model)
        layers = []
        for kind in config.plan():
            if kind not in BLOCKS:
                raise ValueError(f"unknown block kind '{kind}' (known: {', '.join(BLOCKS)})")
            layers.append(BLOCKS[kind].from_config(config))
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(config.d_model) if config.final_norm == "layer" else nn.Identity()
        self.dynamic = None
        if config.dynamic is not None:
            self.dynamic = DynamicCompute(DynamicConfig.from_dict(config.dynamic), config.d_model, len(layers),
                                          module_costs(config.d_model, config.d_ff))
        #: Gates of the last full-sequence pass (dynamic compute): the training cost reads them.
        self.last_gates: GateRecord | None = None

    @property
    def output_dim(self) -> int:
        return self.config.d_model

    @property
    def subsampling_rate(self) -> int:
        """Feature frames per encoder frame."""
        return self.subsampling.rate

    def stream(self, chunk_size: int, num_left_chunks: int = -1) -> "EncoderStream":
        """A streaming session over this encoder (the encoder interface every kind implements)."""
        return EncoderStream(self, chunk_size, num_left_chunks)

    def forward(
        self,
        feats: torch.Tensor,
        lengths: torch.Tensor,
        chunk_size: int = 0,
        num_left_chunks: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B, T, F] -> (encoded [B, T', D], lengths [B]); chunk_size 0 = full context."""
        x, lengths = self.subsampling(feats, lengths)
        x = x * self.scale
        frames = padding_mask(lengths, x.size(1))
        mask = attention_mask(lengths, x.size(1), chunk_size, num_left_chunks)
        if self.dynamic is None:
            for layer in self.layers:
                x, _, _ = layer(x, mask, frames)
            return self.norm(x), lengths
        record = GateRecord(frame_mask=frames)
        upfront = self.dynamic.upfront(x, frames)
        for index, layer in enumerate(self.layers):
            if upfront is None:
                gates, probs = self.dynamic.local(index, x, frames)
            else:
                gates, probs = upfront[0][index], upfront[1][index]
            record.gates.append(gates)
            record.probabilities.append(probs)
            x, _, _ = layer(x, mask, frames, gates=self.dynamic.by_module(gates))
        self.last_gates = record
        return self.norm(x), lengths

    def forward_chunk(
        self,
        window: torch.Tensor,
        att_caches: list[torch.Tensor],
        cnn_caches: list[torch.Tensor],
        max_left_frames: int = -1,
        dynamic_state: dict | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Encode one chunk from its feature window, given and returning per-layer caches.

        ``window`` [B, W, F] is the feature window of exactly this chunk (see EncoderStream).
        ``max_left_frames`` >= 0 keeps only that many encoder frames of attention history.
        ``dynamic_state`` (dynamic compute): a dict the stream keeps; utterance-level gates are
        decided on the first chunk and stored in it, and ``dynamic_state["last"]`` records this
        chunk's gates (per stream, so concurrent streams never share it).
        """
        lengths = torch.full((window.size(0),), window.size(1), dtype=torch.long)
        x, _ = self.subsampling(window, lengths)
        x = x * self.scale
        batch, t_chunk, _ = x.shape
        frames = torch.ones(batch, t_chunk, dtype=torch.bool)
        new_att, new_cnn = [], []
        decided = None
        if self.dynamic is not None:
            dynamic_state = {} if dynamic_state is None else dynamic_state
            decided = dynamic_state.get("gates")
            if decided is None:
                upfront = self.dynamic.upfront(x, frames)
                decided = upfront[0] if upfront is not None else [None] * len(self.layers)
                if not self.dynamic.config.frame_level:
                    dynamic_state["gates"] = decided
            dynamic_state["last"] = GateRecord(frame_mask=frames)
        for index, layer in enumerate(self.layers):
            att_cache = att_caches[index] if att_caches else None
            cnn_cache = cnn_caches[index] if cnn_caches else None
            t_cache = layer.cached_frames(att_cache)
            mask = torch.ones(batch, t_chunk, t_cache + t_chunk, dtype=torch.bool)
            if decided is None:
                x, att_cache, cnn_cache = layer(x, mask, frames, att_cache, cnn_cache)
            else:
                if decided[index] is None:  # I3D local: decided at this layer on the first chunk
                    decided[index] = self.dynamic.local(index, x, frames)[0]
                dynamic_state["last"].gates.append(decided[index])
                gates = self.dynamic.by_module(decided[index])
                x, att_cache, cnn_cache = layer(x, mask, frames, att_cache, cnn_cache, gates=gates)
            att_cache = layer.trim_cache(att_cache, max_left_frames)
            new_att.append(att_cache)
            new_cnn.append(cnn_cache)
        return self.norm(x), new_att, new_cnn


class EncoderStream:
    """Feeds feature frames of any count into the encoder chunk by chunk.

    Keeps the feature frames not yet consumed and the per-layer caches. ``accept`` returns the
    encoder frames of every chunk completed; ``finish`` encodes what remains (a final, shorter
    chunk), so the last words are never dropped.
    """

    def __init__(self, encoder: Encoder, chunk_size: int, num_left_chunks: int = -1) -> None:
        if chunk_size <= 0:
            raise ValueError("streaming needs a chunk size of at least 1 encoder frame")
        self.encoder = encoder
        self.chunk_size = chunk_size
        rate = encoder.subsampling.rate
        self.window = (chunk_size - 1) * rate + encoder.subsampling.right_context + 1
        self.stride = chunk_size * rate
        self.max_left_frames = -1 if num_left_chunks < 0 else num_left_chunks * chunk_size
        self.gate_counter = GateCounter() if encoder.dynamic is not None else None
        if encoder.dynamic is not None:
            encoder.dynamic.check_stream(chunk_size)
        self.reset()

    def reset(self) -> None:
        """Start a new segment: buffered frames, caches and gate decisions are dropped."""
        self.pending = torch.zeros(0, self.encoder.config.input_dim)
        self.att_caches: list[torch.Tensor] = []
        self.cnn_caches: list[torch.Tensor] = []
        #: Dynamic compute: the utterance's gate decisions, and per chunk what ran.
        self.dynamic_state: dict = {}
        self.frames_encoded = 0

    def state_bytes(self) -> int:
        """Bytes of the model's streaming state now: attention and convolution caches.

        The input buffer (feature frames of a chunk not yet complete, less than one window) is
        not counted: it depends on where the audio stopped, not on the model.
        """
        tensors = [*self.att_caches, *self.cnn_caches]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _run(self, window: torch.Tensor) -> torch.Tensor:
        out, self.att_caches, self.cnn_caches = self.encoder.forward_chunk(
            window.unsqueeze(0), self.att_caches, self.cnn_caches, self.max_left_frames,
            self.dynamic_state if self.encoder.dynamic is not None else None,
        )
        if self.gate_counter is not None:  # this stream's own record: safe with concurrent streams
            self.gate_counter.update(self.dynamic_state["last"])
        self.frames_encoded += out.size(1)
        return out[0]

    @torch.no_grad()
    def accept(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [T, F] -> encoder frames [T', D] of the chunks now complete (maybe none)."""
        self.pending = torch.cat([self.pending, feats], dim=0)
        outputs = []
        while self.pending.size(0) >= self.window:
            outputs.append(self._run(self.pending[: self.window]))
            self.pending = self.pending[self.stride :]
        if not outputs:
            return torch.zeros(0, self.encoder.output_dim)
        return torch.cat(outputs, dim=0)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """Encode the remaining frames as a last, shorter chunk."""
        remaining = self.pending
        self.pending = self.pending[:0]
        if remaining.size(0) < self.encoder.subsampling.right_context + 1:
            return torch.zeros(0, self.encoder.output_dim)
        return self._run(remaining)
