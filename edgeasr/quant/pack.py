"""Sub-byte weight storage: 4-bit codes two to a byte, 2-bit codes four to a byte.

A 4-bit model is only 8x smaller than float32 if its weights really take half a byte each, on disk
and in memory; int8 tensors holding 4-bit values would make it just 4x smaller. Codes are signed
integers in [-2^(b-1), 2^(b-1) - 1]; each is stored offset by 2^(b-1) (so unsigned), low bits
first. ``unpack_codes(pack_codes(c, b), b, c.numel())`` returns exactly ``c``.
"""

from __future__ import annotations

import torch

PACKABLE_BITS = (2, 4, 8)


def _check(bits: int) -> None:
    if bits not in PACKABLE_BITS:
        raise ValueError(f"can pack 2, 4 or 8-bit codes, not {bits}-bit")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed integer codes (any shape) -> flat uint8 tensor of ceil(n * bits / 8) bytes."""
    _check(bits)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    flat = codes.reshape(-1).to(torch.int16)
    if flat.numel() and (flat.min() < low or flat.max() > high):
        raise ValueError(f"codes outside the {bits}-bit range [{low}, {high}]")
    unsigned = (flat - low).to(torch.uint8)
    per_byte = 8 // bits
    pad = (-unsigned.numel()) % per_byte
    if pad:
        unsigned = torch.cat([unsigned, unsigned.new_zeros(pad)])
    groups = unsigned.view(-1, per_byte).to(torch.int32)
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    return (groups << shifts).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The inverse of ``pack_codes``: flat int8 tensor of ``count`` signed codes."""
    _check(bits)
    per_byte = 8 // bits
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() * per_byte < count:
        raise ValueError(f"packed weights hold {packed.numel() * per_byte} {bits}-bit codes, {count} expected")
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    values = (packed.to(torch.int32).unsqueeze(1) >> shifts) & (2**bits - 1)
    return (values.reshape(-1)[:count] - 2 ** (bits - 1)).to(torch.int8)


def packed_bytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take when packed."""
    _check(bits)
    return -(-count * bits // 8)
