"""4-bit packing: two values per uint8 along the last dim, low nibble = even index.

byte[..., j] = (v[..., 2j] & 0xF) | ((v[..., 2j+1] & 0xF) << 4)

Unsigned values (0..15) are stored as is; signed values (-8..7) as their two's-complement nibble,
so -1 is 0xF and -8 is 0x8. This is lowc's canonical layout; kernels may repack at compile time.

One format stores its codes in another order, chosen for its kernels: `w4a8_g{G}` uses the
*nibble-split* order (`pack_uint4_split`), in which each 32-bit word of eight consecutive codes
holds codes 0..3 in its low nibbles and codes 4..7 in its high nibbles:

byte[..., 4w + b] = v[..., 8w + b] | (v[..., 8w + 4 + b] << 4)        b = 0..3

so `word & 0x0F0F0F0F` and `(word >> 4) & 0x0F0F0F0F` are four consecutive codes each, one per
byte lane, in natural order (docs/formats.md, "Nibble-split order").
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


def pack_uint4_split(values: torch.Tensor) -> torch.Tensor:
    """Pack values 0..15 in nibble-split order (module docstring) -> uint8 [..., n/2]; n % 8 == 0."""
    if values.shape[-1] % 8:
        raise QuantizationError(
            f"nibble-split packing needs a last dim that is a multiple of 8, got {values.shape[-1]}; "
            "pad K to the group first (w4a8_g groups are multiples of 8)"
        )
    if values.numel() and (int(values.min()) < 0 or int(values.max()) > 15):
        raise QuantizationError("pack_uint4_split: values outside 0..15 do not fit an unsigned nibble")
    v = values.to(torch.int16).unflatten(-1, (-1, 2, 4))  # [..., word, half, b]
    return (v[..., 0, :] | (v[..., 1, :] << 4)).flatten(-2).to(torch.uint8)


def unpack_uint4_split(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_uint4_split: uint8 [..., n/2] -> uint8 values 0..15 [..., n] in natural order."""
    if packed.dtype != torch.uint8:
        raise QuantizationError(f"packed 4-bit data must be uint8, got {packed.dtype}")
    if packed.shape[-1] % 4:
        raise QuantizationError(f"nibble-split data holds 4-byte words; last dim {packed.shape[-1]} is not a multiple of 4")
    b = packed.unflatten(-1, (-1, 4))  # [..., word, b]
    return torch.stack((b & 0xF, b >> 4), dim=-2).flatten(-3)
