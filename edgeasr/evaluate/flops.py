"""FLOPs of streaming inference, and where the time goes (LayerNorm's share, FusionFormer's motive).

FLOPs come from torch's own counter (``FlopCounterMode``: matrix products and convolutions, the
operations that dominate), plus LayerNorm counted by hand at 8 FLOPs per element (mean, centre,
square, variance, normalize, scale, shift and the reduction adds), since torch's counter skips it.
Element-wise activations and additions are not counted; they are a small share of FLOPs here.

Time shares are measured two ways at 1 thread on real streaming chunks:
- profiler: the self CPU time of LayerNorm kernels over the total under ``torch.profiler``;
- ablation: the same chunks with every LayerNorm replaced by the identity; the time saved over the
  total. This one has no profiler overhead and shows what removing LayerNorm would buy.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgeasr.model.encoder import EncoderStream

LAYER_NORM_FLOPS_PER_ELEMENT = 8


def _stream_chunks(model, feats: torch.Tensor, chunk_size: int) -> None:
    stream = EncoderStream(model.encoder, chunk_size)
    encoded = stream.accept(model.normalize(feats))
    encoded = torch.cat([encoded, stream.finish()], dim=0)
    model.ctc_log_probs(encoded)


@torch.no_grad()
def streaming_flops(model, feats: torch.Tensor, chunk_size: int) -> dict[str, int]:
    """FLOPs to stream ``feats`` [T, F] through encoder + CTC head: {"total", "layer_norm"}."""
    norm_elements = 0

    def count(module, inputs, output):
        nonlocal norm_elements
        norm_elements += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.LayerNorm)]
    try:
        with FlopCounterMode(display=False) as counter:
            _stream_chunks(model, feats, chunk_size)
    finally:
        for hook in hooks:
            hook.remove()
    norm_flops = LAYER_NORM_FLOPS_PER_ELEMENT * norm_elements
    return {"total": int(counter.get_total_flops()) + norm_flops, "layer_norm": norm_flops}


def chunk_windows(model, feats: torch.Tensor, chunk_size: int) -> list[torch.Tensor]:
    stream = EncoderStream(model.encoder, chunk_size)
    windows = []
    pending = model.normalize(feats)
    while pending.size(0) >= stream.window:
        windows.append(pending[: stream.window].unsqueeze(0))
        pending = pending[stream.stride :]
    return windows


@torch.no_grad()
def _time_stream(model, windows: list[torch.Tensor]) -> float:
    att, cnn = [], []
    started = time.perf_counter()
    for window in windows:
        out, att, cnn = model.encoder.forward_chunk(window, att, cnn)
        model.ctc_log_probs(out)
    return time.perf_counter() - started


def without_layer_norm(model) -> nn.Module:
    """A copy of ``model`` with every LayerNorm replaced by the identity (for timing only)."""
    clone = copy.deepcopy(model)
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, nn.Identity())
    return clone.eval()


@torch.no_grad()
def layer_norm_share(model, feats_list: list[torch.Tensor], chunk_size: int = 16, repeats: int = 5) -> dict:
    """LayerNorm's share of streaming time (profiler and ablation) and of FLOPs, for one model."""
    windows = [w for feats in feats_list for w in chunk_windows(model, feats, chunk_size)]
    ablated = without_layer_norm(model)
    _time_stream(model, windows[:4])  # warm-up
    _time_stream(ablated, windows[:4])
    full_times, ablated_times = [], []
    for _ in range(repeats):  # interleaved so both see the same machine load
        full_times.append(_time_stream(model, windows))
        ablated_times.append(_time_stream(ablated, windows))
    full, without = statistics.median(full_times), statistics.median(ablated_times)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _time_stream(model, windows)
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events)
    norm_self = sum(e.self_cpu_time_total for e in events if "layer_norm" in e.key)

    flops = {"total": 0, "layer_norm": 0}
    for feats in feats_list:
        counted = streaming_flops(model, feats, chunk_size)
        flops = {k: flops[k] + counted[k] for k in flops}
    return {
        "chunk_size": chunk_size,
        "chunks": len(windows),
        "time_share_profiler": round(norm_self / total_self, 4) if total_self else 0.0,
        "time_share_ablation": round(max(0.0, full - without) / full, 4) if full else 0.0,
        "flops_share": round(flops["layer_norm"] / flops["total"], 6) if flops["total"] else 0.0,
        "seconds_with": round(full, 4),
        "seconds_without": round(without, 4),
    }
