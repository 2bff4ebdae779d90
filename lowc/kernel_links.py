"""Link every `lowc::qlinear` node of a compiled graph to the Triton source file that runs it.

Rendering a kernel file needs no GPU and compiles nothing; it writes the specialised source into
the kernel cache directory (`LOWC_CACHE_DIR`), where a person can open it. The path lands in
`node.meta["lowc_kernel"]`, which the IR text shows as `kernel=...`. Bit-plane formats have two
realizations chosen per batch size at run time, so their nodes list both files.
"""

from __future__ import annotations

import logging

import torch
import torch.fx as fx

from lowc.errors import KernelError
from lowc.ir import META_KERNEL

log = logging.getLogger("lowc.kernel_links")


def kernel_files_for_node(node: fx.Node) -> list[str]:
    from lowc.codegen import kernel_file_for, spec_for_qlinear
    from lowc.quant.spec import parse_format
    from lowc.runtime import bitplane_gemm

    fmt, out_dtype = node.args[4], node.args[5]
    if bitplane_gemm.is_bitplane_format(fmt):
        specs = [bitplane_gemm.kernel_spec(fmt, r, out_dtype) for r in bitplane_gemm.REALIZATIONS]
    else:
        x_dtype = torch.int8 if parse_format(fmt).act_bits < 16 else out_dtype
        specs = [spec_for_qlinear(fmt, x_dtype, out_dtype)]
    return [str(kernel_file_for(s)) for s in specs]


def link_kernel_files(gm: fx.GraphModule) -> int:
    """Stamp `lowc_kernel` on every qlinear node; returns how many were linked."""
    linked = 0
    for node in gm.graph.nodes:
        if node.target is not torch.ops.lowc.qlinear.default:
            continue
        try:
            node.meta[META_KERNEL] = "|".join(kernel_files_for_node(node))
            linked += 1
        except KernelError as e:  # the op still runs (reference on CPU); say why there is no file
            log.warning("no kernel file for %s: %s", node.name, e)
    return linked
