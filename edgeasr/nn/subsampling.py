"""Convolutional front-end that shortens the feature sequence by 2, 4, 6 or 8.

Each output frame t reads a fixed window of input frames starting at ``rate * t`` and spanning
``right_context + 1`` frames. Streaming feeds overlapping windows of
``(chunk - 1) * rate + right_context + 1`` frames, advancing ``chunk * rate`` frames each time, and
gets exactly the full-sequence output frames.
"""

from __future__ import annotations

import torch
from torch import nn

# rate -> (kernel, stride) of the two conv layers
#: 2: 20 ms frames from a 10 ms front end, the frame rate of Whisper's encoder (a student distilled
#: from it must emit its frames; edgeasr.model.asr.ASRModel.set_teacher)
_LAYOUTS = {2: ((3, 1), (3, 2)), 4: ((3, 2), (3, 2)), 6: ((3, 2), (5, 3)), 8: ((3, 2), (3, 2), (3, 2))}


class ConvSubsampling(nn.Module):
    def __init__(self, in_dim: int, d_model: int, rate: int = 4, channels: int | None = None) -> None:
        super().__init__()
        if rate not in _LAYOUTS:
            raise ValueError(f"subsampling rate must be one of {sorted(_LAYOUTS)}, got {rate}")
        channels = channels or d_model
        layers: list[nn.Module] = []
        freq = in_dim
        in_ch = 1
        for kernel, stride in _LAYOUTS[rate]:
            layers += [nn.Conv2d(in_ch, channels, kernel, stride), nn.ReLU()]
            freq = (freq - kernel) // stride + 1
            in_ch = channels
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(channels * freq, d_model)
        self.rate = rate
        # Input frames beyond the first that one output frame reads.
        context = 0
        step = 1
        for kernel, stride in _LAYOUTS[rate]:
            context += (kernel - 1) * step
            step *= stride
        self.right_context = context

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for kernel, stride in _LAYOUTS[self.rate]:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return torch.clamp(lengths, min=0)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B, T, F] -> ([B, T', D], lengths [B])."""
        h = self.conv(feats.unsqueeze(1))  # [B, C, T', F']
        batch, channels, time, freq = h.shape
        h = self.out(h.transpose(1, 2).reshape(batch, time, channels * freq))
        return h, self.output_lengths(lengths)
