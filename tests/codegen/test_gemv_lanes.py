"""The lane arithmetic of the GEMV decode path's inline PTX (common.py: `u4_nibble_lanes`,
`dot8_u4_i8`) on words in w4a8_g's nibble-split order, emulated on 32-bit words.

The GPU runs `dp4a`, which the interpreter cannot execute; these tests replay the
assembly in Python integers and check that, for random and extreme words, the eight products of a
code word with its eight activations sum exactly to sum_i code_i * x_i. The asm text is parsed, so an
edit to it without the emulation fails here; the GPU tests (`pytest -m gpu`) check the kernel itself.
"""

import re

import torch

from lowc.codegen.render import _read_template
from lowc.quant.packing import pack_uint4_split


def asm_of(function: str) -> list[str]:
    """The PTX lines (no braces, no .reg) of every inline asm inside `function` of common.py."""
    _, body = _read_template("common")
    block = body[body.index(f"def {function}("):]
    block = block[: block.index("\n@triton.jit", 1)] if "\n@triton.jit" in block[1:] else block
    lines = []
    for asm in re.findall(r'asm="""\{(.*?)\}"""|asm="([^"]*)"', block, flags=re.S):
        text = asm[0] or asm[1]
        lines += [ln.strip().rstrip(";") for ln in text.strip().splitlines()
                  if ln.strip() and not ln.strip().startswith(".reg")]
    return lines


def byte(x, i):
    return (x >> (8 * i)) & 0xFF


def dp4a_u32_s32(a, b, c):
    """dp4a.u32.s32: c + sum_i unsigned byte i of a * signed byte i of b."""
    signed = lambda v: v - 256 * (v >= 128)  # noqa: E731
    return c + sum(byte(a, i) * signed(byte(b, i)) for i in range(4))


def test_assembly_is_the_emulated_sequence():
    assert asm_of("dot8_u4_i8") == ["dp4a.u32.s32 t, $1, $3, 0", "dp4a.u32.s32 $0, $2, $4, t"]


def words_and_activations(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, 8), generator=g)
    x = torch.randint(-128, 128, (n, 8), generator=g)
    extremes = torch.tensor([[15] * 8, [0] * 8, [15, 0] * 4])
    xs = torch.tensor([[-128] * 8, [127] * 8, [-128, 127] * 4])
    codes = torch.cat([codes, extremes.repeat_interleave(3, 0)])
    x = torch.cat([x, xs.repeat(3, 1)])
    return codes, x


def test_eight_products_per_word_are_exact():
    codes, x = words_and_activations()
    for c, v in zip(codes.tolist(), x.tolist()):
        packed = pack_uint4_split(torch.tensor(c)).tolist()  # the format's own packing, four bytes
        word = sum(b << (8 * i) for i, b in enumerate(packed))  # little-endian int32 load
        lo, hi = word & 0x0F0F0F0F, (word >> 4) & 0x0F0F0F0F  # u4_nibble_lanes
        xa = sum((b & 0xFF) << (8 * i) for i, b in enumerate(v[:4]))
        xb = sum((b & 0xFF) << (8 * i) for i, b in enumerate(v[4:]))
        got = dp4a_u32_s32(hi, xb, dp4a_u32_s32(lo, xa, 0))
        assert got == sum(q * b for q, b in zip(c, v))
        ones = 0x01010101  # the kernel's per-group sum of x uses the same instruction
        assert dp4a_u32_s32(ones, xb, dp4a_u32_s32(ones, xa, 0)) == sum(v)
