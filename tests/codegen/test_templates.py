"""The SIMD-within-a-register arithmetic of the templates' inline PTX, emulated on 32-bit words.

The GPU unpacking runs as inline assembly that CI cannot execute (Triton's interpreter has no PTX).
These tests replay the assembly instruction by instruction in Python integer arithmetic, for every
input the formats can produce, and compare with the element-wise formula the interpreter runs: if
a lane could carry into its neighbour, or a mask or shift were wrong, they fail. The assembly text
itself is checked against these emulations by parsing it (so an edit to one without the other
fails here), and on the GPU by `pytest -m gpu`.
"""

import re

import torch

from lowc.codegen.render import _read_template

M32 = 0xFFFFFFFF


def asm_lines(template: str, function: str) -> list[str]:
    """The PTX instructions (no braces, no .reg) of every inline asm inside `function`."""
    _, body = _read_template(template)
    block = body[body.index(f"def {function}("):]
    block = block[: block.find("\n@triton.jit", 1) if "\n@triton.jit" in block[1:] else len(block)]
    lines = []
    for asm in re.findall(r'"""\{(.*?)\}"""', block, flags=re.S):
        lines += [ln.strip().rstrip(";") for ln in asm.strip().splitlines() if ln.strip() and not ln.strip().startswith(".reg")]
    return lines


def prmt_1100(x):
    """prmt.b32 r, x, 0, 0x1100: bytes (x.b0, x.b0, x.b1, x.b1)."""
    b0, b1 = x & 0xFF, (x >> 8) & 0xFF
    return b0 | (b0 << 8) | (b1 << 16) | (b1 << 24)


def all_words() -> torch.Tensor:
    return torch.arange(1 << 16, dtype=torch.int64)


def codes_of(words: torch.Tensor) -> torch.Tensor:
    """[W, 4] codes of each 16-bit word in canonical order (code j in bits 4j..4j+3)."""
    return torch.stack([(words >> (4 * j)) & 0xF for j in range(4)], dim=1)


def lanes_of(result: torch.Tensor) -> torch.Tensor:
    """[W, 4] signed bytes of 32-bit results (lane j = bits 8j..8j+7)."""
    b = torch.stack([(result >> (8 * j)) & 0xFF for j in range(4)], dim=1)
    return b - 256 * (b >= 128)


def test_u4_words_to_i8_assembly_is_the_emulated_sequence():
    assert asm_lines("common", "u4_words_to_i8") == [
        "prmt.b32 r, $1, 0, 0x1100",
        "shr.b32 t, r, 4",
        "and.b32 t, t, 0x0F000F00",
        "and.b32 r, r, 0x000F000F",
        "or.b32 r, r, t",
        "mad.lo.s32 r, r, $2, $3",
        "xor.b32 $0, r, 0x80808080",
    ]


def emulate_u4_words_to_i8(words, mul, add_x4):
    r = prmt_1100(words)
    t = (r >> 4) & 0x0F000F00
    r = (r & 0x000F000F) | t
    r = (r * mul + add_x4) & M32
    return r ^ 0x80808080


def edge_words() -> torch.Tensor:
    """Every word whose four codes are extremes or mid-range values (where carries would start)."""
    picks = torch.tensor([0, 1, 7, 8, 14, 15])
    grid = torch.cartesian_prod(picks, picks, picks, picks)
    return (grid * torch.tensor([1, 16, 256, 4096])).sum(dim=1)


def test_w4a8_group_simd_dequant_equals_elementwise_for_every_valid_scale():
    words = edge_words()
    q = codes_of(words)
    checked = 0
    for s1 in range(1, 17):
        for z in range(16):
            zs1 = z * s1
            expected = q * s1 - zs1
            valid = ((expected >= -128) & (expected <= 127)).all(dim=1)  # what the protective range allows
            got = lanes_of(emulate_u4_words_to_i8(words[valid], s1, (128 - zs1) * 0x01010101))
            assert torch.equal(got, expected[valid]), (s1, z)
            checked += int(valid.sum())
    assert checked > 50_000


def test_w4a8_channel_simd_dequant_equals_elementwise():
    words = edge_words()
    q = codes_of(words)
    for z in range(16):
        got = lanes_of(emulate_u4_words_to_i8(words, 1, (128 - z) * 0x01010101))
        assert torch.equal(got, q - z), z


def test_w4a4_simd_unpack_is_sixteen_times_the_signed_codes():
    assert asm_lines("qlinear_w4a4_outlier", "i4_words_to_i8x16") == [
        "prmt.b32 r, $1, 0, 0x1100",
        "shl.b32 t, r, 4",
        "and.b32 t, t, 0x00F000F0",
        "and.b32 r, r, 0xF000F000",
        "or.b32 $0, r, t",
    ]
    words = all_words()
    r = prmt_1100(words)
    got = lanes_of((r & 0xF000F000) | ((r << 4) & 0x00F000F0))
    codes = codes_of(words)
    signed = codes - 16 * (codes >= 8)
    assert torch.equal(got, 16 * signed)


def test_w4a16_simd_unpack_builds_magic_plus_code_halves():
    lines = asm_lines("qlinear_w4a16_group", "u4_bytes_to_halves")
    assert "mad.lo.u32 r, $1, 0x1001, 0" in lines and "and.b32 r, r, 0x000F000F" in lines
    assert {"or.b32 r, r, 0x43004300", "or.b32 r, r, 0x64006400"} <= set(lines)
    b = torch.arange(256, dtype=torch.int64)
    for magic_bits, magic, dtype in ((0x4300, 128.0, torch.bfloat16), (0x6400, 1024.0, torch.float16)):
        r = ((b * 0x1001) & 0x000F000F) | (magic_bits * 0x00010001)
        lo = (r & 0xFFFF).to(torch.int16).view(dtype).float()
        hi = (r >> 16).to(torch.int32).to(torch.int16).view(dtype).float()
        assert torch.equal(lo - magic, (b & 0xF).float()) and torch.equal(hi - magic, (b >> 4).float())
