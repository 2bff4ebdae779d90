"""Experiment: W4A8 g128 with a "split-nibble" weight packing, against the shipped kernel.

The shipped packing keeps two neighbouring K values per byte (low nibble = even k). Unpacking a
16-bit word into four INT8 K values in natural order then costs a byte spread (prmt, shift, two
masks, or) before the group's multiply-add, about 7 instructions per 4 weights, and ncu puts the
M = 16 tensor-core kernel at 3.4 issued instructions per weight with 46% of issue slots busy.

Split-nibble packing, per block of 64 K values: byte i (0..31) holds k = i in its low nibble and
k = 32 + i in its high nibble. A 32-bit word then yields four consecutive K values of the block's
first half with one AND and four of its second half with a shift and an AND, each already in byte
lanes; the group's multiply-add and the XOR finish them (7 instructions per 8 weights). The tile is
consumed as two half-K dots: x's matching halves are gathered by address, nothing is interleaved.

Runs on the GPU (timing, same-run ratios) and under TRITON_INTERPRET=1 on CPU (exactness only):
    python bench/w4a8_nibble_split.py --json OUT/split.json
    TRITON_INTERPRET=1 python bench/w4a8_nibble_split.py --check-only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANT_SOURCE = '''

@triton.jit
def split_nibble_kernel(
    x_ptr, sx_ptr, qw_ptr, s1_ptr, zs1_ptr, s0_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KW, stride_xm, stride_w32,
    HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, W_AS_B: tl.constexpr,
):
    pid_n, pid_m = tile_coords(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rn = pid_n * BN + tl.arange(0, BN)
    rm = pid_m * BM + tl.arange(0, BM)
    rn_ld = rn % N
    rm_ld = rm % M
    rw = tl.arange(0, BK // 8)
    rj = tl.arange(0, BK // 2)
    k_lo = (rj // 32) * 64 + rj % 32  # K offset in the tile of half-tile element j (low nibbles)
    n_groups = KW // GROUP_SIZE
    qw32 = qw_ptr.to(tl.pointer_type(tl.int32))
    k_first, k_last = split_range(tl.program_id(1), tl.cdiv(KW, BK), SPLIT_K)
    if W_AS_B:
        acc_t = tl.zeros((BM, BN), dtype=tl.int32)
    else:
        acc = tl.zeros((BN, BM), dtype=tl.int32)
    s1, c = group_params(s1_ptr, zs1_ptr, rn_ld, k_first, n_groups, BK)
    for kt in range(k_first, k_last):
        x_row = x_ptr + rm_ld[:, None] * stride_xm + kt * BK
        x_lo = tl.load(x_row + k_lo[None, :])
        x_hi = tl.load(x_row + (k_lo + 32)[None, :])
        words = tl.load(qw32 + rn_ld[:, None] * stride_w32 + kt * (BK // 8) + rw[None, :])
        s1_next, c_next = group_params(s1_ptr, zs1_ptr, rn_ld, kt + 1, n_groups, BK)
        mul = expand_groups(s1, BN, BK // 8)
        add_x4 = expand_groups(c * 0x01010101, BN, BK // 8)
        r_lo = ((words & 0x0F0F0F0F) * mul + add_x4) ^ -0x7F7F7F80  # 0x80808080 as int32
        r_hi = (((words >> 4) & 0x0F0F0F0F) * mul + add_x4) ^ -0x7F7F7F80  # 0x80808080 as int32
        w_lo = unpack_byte_lanes(r_lo, BN, BK // 2)
        w_hi = unpack_byte_lanes(r_hi, BN, BK // 2)
        if W_AS_B:
            acc_t = tl.dot(x_lo, tl.trans(w_lo), acc_t, out_dtype=tl.int32)
            acc_t = tl.dot(x_hi, tl.trans(w_hi), acc_t, out_dtype=tl.int32)
        else:
            acc = tl.dot(w_lo, tl.trans(x_lo), acc, out_dtype=tl.int32)
            acc = tl.dot(w_hi, tl.trans(x_hi), acc, out_dtype=tl.int32)
        s1, c = s1_next, c_next
    if W_AS_B:
        acc = tl.trans(acc_t)
    if SPLIT_K == 1:
        epilogue(acc, sx_ptr, s0_ptr, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)
    else:
        offs = rm[None, :] * N + rn[:, None]
        mask = (rn[:, None] < N) & (rm[None, :] < M)
        tile_id = pid_m * tl.cdiv(N, BN) + pid_n
        acc, is_last = splitk_reduce(acc, ws_ptr, cnt_ptr, tile_id, offs, mask, SPLIT_K)
        if is_last:
            epilogue(acc, sx_ptr, s0_ptr, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)


@triton.jit
def pair_split_kernel(
    x_ptr, sx_ptr, qw_ptr, s1_ptr, zs1_ptr, s0_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KW, stride_xm, stride_w32,
    HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, W_AS_B: tl.constexpr,
):
    pid_n, pid_m = tile_coords(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rn = pid_n * BN + tl.arange(0, BN)
    rm = pid_m * BM + tl.arange(0, BM)
    rn_ld = rn % N
    rm_ld = rm % M
    rw = tl.arange(0, BK // 8)
    rk = tl.arange(0, BK)
    n_groups = KW // GROUP_SIZE
    qw32 = qw_ptr.to(tl.pointer_type(tl.int32))
    k_first, k_last = split_range(tl.program_id(1), tl.cdiv(KW, BK), SPLIT_K)
    if W_AS_B:
        acc_t = tl.zeros((BM, BN), dtype=tl.int32)
    else:
        acc = tl.zeros((BN, BM), dtype=tl.int32)
    s1, c = group_params(s1_ptr, zs1_ptr, rn_ld, k_first, n_groups, BK)
    for kt in range(k_first, k_last):
        x = tl.load(x_ptr + rm_ld[:, None] * stride_xm + kt * BK + rk[None, :])
        words = tl.load(qw32 + rn_ld[:, None] * stride_w32 + kt * (BK // 8) + rw[None, :])
        s1_next, c_next = group_params(s1_ptr, zs1_ptr, rn_ld, kt + 1, n_groups, BK)
        mul = expand_groups(s1, BN, BK // 8)
        add_x4 = expand_groups(c * 0x01010101, BN, BK // 8)
        r_lo = ((words & 0x0F0F0F0F) * mul + add_x4) ^ -0x7F7F7F80  # 0x80808080 as int32
        r_hi = (((words >> 4) & 0x0F0F0F0F) * mul + add_x4) ^ -0x7F7F7F80
        w8 = unpack_byte_lanes(tl.join(r_lo, r_hi).reshape(BN, BK // 4), BN, BK)
        if W_AS_B:
            acc_t = tl.dot(x, tl.trans(w8), acc_t, out_dtype=tl.int32)
        else:
            acc = tl.dot(w8, tl.trans(x), acc, out_dtype=tl.int32)
        s1, c = s1_next, c_next
    if W_AS_B:
        acc = tl.trans(acc_t)
    if SPLIT_K == 1:
        epilogue(acc, sx_ptr, s0_ptr, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)
    else:
        offs = rm[None, :] * N + rn[:, None]
        mask = (rn[:, None] < N) & (rm[None, :] < M)
        tile_id = pid_m * tl.cdiv(N, BN) + pid_n
        acc, is_last = splitk_reduce(acc, ws_ptr, cnt_ptr, tile_id, offs, mask, SPLIT_K)
        if is_last:
            epilogue(acc, sx_ptr, s0_ptr, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)
'''


def load_module(out_dtype):
    """The rendered w4a8_g128 module (shared helpers, epilogue) with the variant kernel appended."""
    import torch

    from lowc.codegen.render import render
    from lowc.codegen.spec import spec_for_qlinear

    src = render(spec_for_qlinear("w4a8_g128", torch.int8, out_dtype)) + VARIANT_SOURCE
    path = Path(tempfile.mkdtemp(prefix="lowc_split_")) / f"split_nibble_{str(out_dtype)[6:]}.py"
    path.write_text(src)
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def split_pack(qweight):
    """Canonical [N, Kp/2] (low nibble = even k) -> split-nibble [N, Kp/2] (module docstring)."""
    import torch

    n = qweight.shape[0]
    q = torch.stack([qweight & 0xF, qweight >> 4], dim=-1).reshape(n, -1)  # codes, natural K order
    blocks = q.reshape(n, -1, 2, 32)  # [N, Kp/64, half, i]
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, -1).contiguous()


def pair_pack(qweight):
    """Canonical -> pair-split: in each 8-code (32-bit) word, byte b holds k = b (low nibble) and
    k = 4 + b (high nibble), so the low nibbles are K values 0..3 of the word and the high 4..7."""
    n = qweight.shape[0]
    q = torch_codes(qweight).reshape(n, -1, 2, 4)  # [N, words, half, b]
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, -1).contiguous()


def torch_codes(qweight):
    import torch

    return torch.stack([qweight & 0xF, qweight >> 4], dim=-1).reshape(qweight.shape[0], -1)


def launch_split(mod, cfg, x, sx, weight_split, out, ws, tickets, kernel="split_nibble_kernel"):
    qw, s1, zs1, s0 = weight_split
    m, k = x.shape
    n = qw.shape[0]
    kw = qw.shape[1] * 2
    bm, bn, bk, split, warps, stages, w_as_b = cfg
    grid = (-(-m // bm) * -(-n // bn), split)
    getattr(mod, kernel)[grid](
        x, sx, qw, s1, zs1, s0, out, out, ws, tickets, m, n, k, kw, x.stride(0), kw // 8,
        HAS_BIAS=False, BM=bm, BN=bn, BK=bk, SPLIT_K=split, GROUP_M=8, W_AS_B=w_as_b,
        num_warps=warps, num_stages=stages,
    )


def configs_for(m):
    if m <= 16:
        out = []
        for bn, bk, stages in ((32, 256, 4), (32, 512, 3), (64, 256, 4), (64, 512, 3), (128, 256, 4), (16, 512, 3)):
            for split in (1, 2, 4):
                out.append((16, bn, bk, split, 4, stages, True))
        out += [(16, 16, 512, s, 1, 3, True) for s in (1, 2)] + [(16, 32, 512, s, 2, 3, True) for s in (1, 2)]
        return out
    if m <= 32:
        return [(32, bn, bk, s, 4, st, True) for bn, bk, st in ((32, 256, 4), (64, 256, 4), (64, 512, 3)) for s in (1, 2)]
    return [(64, bn, bk, s, w, st, False) for bn, w in ((64, 4), (128, 4), (128, 8)) for bk, st in ((128, 4), (256, 3))
            for s in (1, 2)] + [(64, 64, 512, 2, 4, 3, False)]


VARIANTS = {"split": ("split_pack", "split_nibble_kernel"), "pair": ("pair_pack", "pair_split_kernel")}


def packed_for(variant, weight):
    return [globals()[VARIANTS[variant][0]](weight[0])] + list(weight[1:])


def check(mod, device, shapes, ms):
    """Each variant's INT32 accumulator equals lowc.quant's exact integer GEMM."""
    import torch

    from lowc.codegen.spec import spec_for_qlinear
    from lowc.quant import quantize_activation, quantize_weight
    from lowc.runtime.gemm import default_cache

    raw = default_cache().get(spec_for_qlinear("w4a8_g128", torch.int8, torch.int32))
    bad = []
    for n, k in shapes:
        w = torch.randn(n, k, device=device) * 0.02
        packed = quantize_weight(w, "w4a8_g128").tensors()
        for m in ms:
            xq, sx = quantize_activation(torch.randn(m, k, device=device), "w4a8_g128")
            ref = raw.reference(xq, sx, packed, None, torch.int32)
            for variant, (_, kernel) in VARIANTS.items():
                wv = packed_for(variant, packed)
                for cfg in configs_for(m)[:3]:
                    if k % cfg[2] or (device == "cpu" and cfg[4] != 4):
                        continue
                    out = torch.empty(m, n, dtype=torch.int32, device=device)
                    ws = torch.zeros(m * n, dtype=torch.int32, device=device)
                    tickets = torch.zeros(-(-m // cfg[0]) * -(-n // cfg[1]), dtype=torch.int32, device=device)
                    launch_split(mod, cfg, xq, sx, wv, out, ws, tickets, kernel)
                    if not torch.equal(out, ref):
                        bad.append((variant, n, k, m, cfg, (out - ref).abs().max().item()))
                    if device == "cpu":
                        break  # one config per point is enough for the interpreter
    return bad


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--ms", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    if args.check_only or not torch.cuda.is_available():
        mod = load_module(torch.int32)
        bad = check(mod, "cpu", [(40, 256), (24, 512)], [3, 16])
        print("interpreter check:", "OK" if not bad else bad)
        return 1 if bad else 0

    from gemm import Rotating, copies_for, make_weight, make_x, timed

    from lowc.runtime.gemm import qlinear_triton

    t0 = time.time()
    bad = check(load_module(torch.int32), "cuda", [(4096, 4096), (1000, 1024)], [4, 16, 64])
    print(f"exactness (INT32 accumulator vs reference): {'OK' if not bad else bad[:5]}", flush=True)
    mod = load_module(torch.bfloat16)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    shapes = [(4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336)]
    rows = []
    for n, k in shapes:
        w0 = make_weight("w4a8_g128", n, k, seed=1)
        copies = copies_for(sum(t.nbytes for t in w0), l2)
        weights = [w0] + [[t.clone() for t in w0] for _ in range(copies - 1)]
        wb = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(n * k * 2, l2))]
        for m in args.ms:
            x, sx = make_x("w4a8_g128", m, k, seed=2)
            xb = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            bf16 = timed(Rotating(lambda b: xb @ b.t(), [(b,) for b in wb]), eager_rep=0)[0]
            shipped_fn = Rotating(lambda w: qlinear_triton(x, sx, w, None, "w4a8_g128", torch.bfloat16),
                                  [(w,) for w in weights])
            shipped = timed(shipped_fn, eager_rep=0)[0]
            y_ref = qlinear_triton(x, sx, weights[0], None, "w4a8_g128", torch.bfloat16)
            row = dict(n=n, k=k, m=m, bf16_us=bf16, shipped_us=shipped)
            for variant, (_, kernel) in VARIANTS.items():
                vw = [packed_for(variant, w) for w in weights]
                best, times = None, {}
                for cfg in configs_for(m):
                    if k % cfg[2]:
                        continue
                    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
                    ws = torch.zeros(m * n, dtype=torch.int32, device="cuda")
                    tickets = torch.zeros(-(-m // cfg[0]) * -(-n // cfg[1]), dtype=torch.int32, device="cuda")
                    try:
                        launch_split(mod, cfg, x, sx, vw[0], out, ws, tickets, kernel)
                        torch.cuda.synchronize()
                    except Exception as e:  # out of resources etc.
                        print(f"  {variant} {cfg}: {type(e).__name__}", flush=True)
                        continue
                    if not torch.equal(out, y_ref):
                        print(f"  {variant} {cfg}: output differs from the shipped kernel's", flush=True)
                        continue
                    fn = Rotating(lambda w: launch_split(mod, cfg, x, sx, w, out, ws, tickets, kernel),
                                  [(w,) for w in vw])
                    t = timed(fn, eager_rep=0)[0]
                    times[str(cfg)] = t
                    if best is None or t < best[0]:
                        best = (t, cfg)
                row[variant] = dict(us=best[0], cfg=best[1], all=times)
            rows.append(row)
            print(f"{n}x{k} M={m}: bf16 {bf16:.1f} shipped {shipped:.1f} ({bf16 / shipped:.2f}x) "
                  + " ".join(f"{v} {row[v]['us']:.1f} ({bf16 / row[v]['us']:.2f}x) {row[v]['cfg']}" for v in VARIANTS)
                  + f" [{time.time() - t0:.0f}s]", flush=True)
            if args.json:
                os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
                Path(args.json).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), exact=not bad,
                                                           rows=rows, date=time.strftime("%Y-%m-%d")), indent=1))
    print("\n| N x K | M | BF16 us | shipped us (x BF16) | " + " | ".join(f"{v} us (x BF16)" for v in VARIANTS) + " |")
    for r in rows:
        print(f"| {r['n']}x{r['k']} | {r['m']} | {r['bf16_us']:.1f} | {r['shipped_us']:.1f} ({r['bf16_us'] / r['shipped_us']:.2f}) | "
              + " | ".join(f"{r[v]['us']:.1f} ({r['bf16_us'] / r[v]['us']:.2f})" for v in VARIANTS) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
