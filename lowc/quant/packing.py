"""4-bit packing: two values per uint8 along the last dim, low nibble = even index.

byte[..., j] = (v[..., 2j] & 0xF) | ((v[..., 2j+1] & 0xF) << 4)

Unsigned values (0..15) are stored as is; signed values (-8..7) as their two's-complement nibble,
so -1 is 0xF and -8 is 0x8. This is lowc's canonical layout; kernels may repack at compile time.
"""

from __future__ import annotations

import torch

from lowc.errors import QuantizationError


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """Pack integer values in -8..15 (signed or unsigned nibbles) two per byte -> uint8 [..., n/2]."""
    if values.shape[-1] % 2:
        raise QuantizationError(
            f"pack_int4 needs an even last dim, got {values.shape[-1]}; pad K first (formats pad to the group)"
        )
    if values.numel() and (int(values.min()) < -8 or int(values.max()) > 15):
        raise QuantizationError("pack_int4: values outside -8..15 do not fit a nibble")
    nib = values.to(torch.int16) & 0xF
    return (nib[..., 0::2] | (nib[..., 1::2] << 4)).to(torch.uint8)


def unpack_uint4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4 for unsigned nibbles: uint8 [..., n/2] -> uint8 values 0..15 [..., n]."""
    if packed.dtype != torch.uint8:
        raise QuantizationError(f"packed 4-bit data must be uint8, got {packed.dtype}")
    low = packed & 0xF
    high = packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4 for signed nibbles: uint8 [..., n/2] -> int8 values -8..7 [..., n]."""
    nib = unpack_uint4(packed).to(torch.int8)
    return nib - ((nib >= 8).to(torch.int8) << 4)
