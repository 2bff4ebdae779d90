"""Reading the IR: a stable text form of a graph, a summary of what it computes, and a diff.

The text form is one line per node, `%name = target(args)  :: shape dtype  # pass=P [format=F]`,
so a person can see which pass created each node (`node.meta["lowc_pass"]`) and which packed format
a quantized linear carries (`node.meta["lowc_format"]`). Shapes come from export's fake values when
present (`node.meta["val"]`).
"""

from __future__ import annotations

import difflib
from collections import Counter

import torch
import torch.fx as fx

META_PASS = "lowc_pass"  # which pass created the node ("capture" for the captured graph)
META_FORMAT = "lowc_format"  # packed weight format of a lowc::qlinear node
META_KERNEL = "lowc_kernel"  # path of the generated kernel file, when codegen has run
META_SITE = "lowc_site"  # {"name", "layer", "role"} of the module a node came from (annotate pass)


def target_name(node: fx.Node) -> str:
    t = node.target
    if node.op in ("call_function", "call_method"):
        name = getattr(t, "__name__", None) if not isinstance(t, torch._ops.OpOverload) else None
        return str(t) if name is None else name
    return str(t)


def _fmt_arg(a) -> str:
    if isinstance(a, fx.Node):
        return f"%{a.name}"
    if isinstance(a, (list, tuple)):
        inner = ", ".join(_fmt_arg(x) for x in a)
        return f"[{inner}]" if isinstance(a, list) else f"({inner}{',' if len(a) == 1 else ''})"
    if isinstance(a, dict):
        return "{" + ", ".join(f"{k}: {_fmt_arg(v)}" for k, v in a.items()) + "}"
    if isinstance(a, float):
        return f"{a:.6g}"
    return repr(a)


def _fmt_val(node: fx.Node) -> str:
    v = node.meta.get("val")
    if isinstance(v, torch.Tensor):
        shape = ", ".join(str(s) for s in v.shape)
        return f"  :: [{shape}] {str(v.dtype).replace('torch.', '')}"
    return ""


def format_node(node: fx.Node) -> str:
    notes = [f"pass={node.meta.get(META_PASS, '?')}"]
    if META_SITE in node.meta:
        notes.append(f"site={node.meta[META_SITE]['name']}")
    if META_FORMAT in node.meta:
        notes.append(f"format={node.meta[META_FORMAT]}")
    if META_KERNEL in node.meta:
        notes.append(f"kernel={node.meta[META_KERNEL]}")
    if node.op == "placeholder":
        body = f"%{node.name} = input {node.target!r}"
    elif node.op == "output":
        body = f"return {_fmt_arg(node.args[0])}"
    elif node.op == "get_attr":
        body = f"%{node.name} = weight {node.target}"
    else:
        args = [_fmt_arg(a) for a in node.args] + [f"{k}={_fmt_arg(v)}" for k, v in node.kwargs.items()]
        body = f"%{node.name} = {target_name(node)}({', '.join(args)})"
    return f"{body}{_fmt_val(node)}  # {' '.join(notes)}"


def format_graph(gm: fx.GraphModule) -> str:
    return "\n".join(format_node(n) for n in gm.graph.nodes) + "\n"


def graph_diff(before: str, after: str, name: str = "pass") -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), f"{name}.before", f"{name}.after", n=1
    )
    return "".join(lines)


def summarize(gm: fx.GraphModule) -> dict:
    """Op counts, lowc ops, formats, and the weights (count, parameters, bytes by dtype)."""
    ops = Counter(target_name(n) for n in gm.graph.nodes if n.op == "call_function")
    lowc_ops = {k: v for k, v in ops.items() if k.startswith("lowc.")}
    formats = Counter(n.meta[META_FORMAT] for n in gm.graph.nodes if META_FORMAT in n.meta)
    by_pass = Counter(n.meta.get(META_PASS, "?") for n in gm.graph.nodes)
    weights = {}
    seen = set()
    for n in gm.graph.nodes:
        if n.op != "get_attr":
            continue
        t = _resolve(gm, n.target)
        if not isinstance(t, torch.Tensor) or id(t) in seen:
            continue
        seen.add(id(t))
        key = str(t.dtype).replace("torch.", "")
        w = weights.setdefault(key, {"tensors": 0, "elements": 0, "bytes": 0})
        w["tensors"] += 1
        w["elements"] += t.numel()
        w["bytes"] += t.numel() * t.element_size()
    return {
        "nodes": len(gm.graph.nodes),
        "ops": dict(ops.most_common()),
        "lowc_ops": lowc_ops,
        "formats": dict(formats),
        "nodes_by_pass": dict(by_pass),
        "weights": weights,
        "weight_bytes": sum(w["bytes"] for w in weights.values()),
    }


def summary_text(s: dict, top: int = 12) -> str:
    lines = [f"nodes: {s['nodes']}   weight bytes: {s['weight_bytes'] / 2**20:.1f} MiB"]
    lines.append("lowc ops: " + (", ".join(f"{k} x{v}" for k, v in sorted(s["lowc_ops"].items())) or "none"))
    if s["formats"]:
        lines.append("formats: " + ", ".join(f"{k} x{v}" for k, v in sorted(s["formats"].items())))
    lines.append("weights: " + ", ".join(
        f"{d}: {w['tensors']} tensors, {w['elements'] / 1e6:.2f}M elems" for d, w in sorted(s["weights"].items())
    ))
    lines.append("nodes by pass: " + ", ".join(f"{k} {v}" for k, v in sorted(s["nodes_by_pass"].items())))
    other = [(k, v) for k, v in s["ops"].items() if not k.startswith("lowc.")][:top]
    lines.append("top aten ops: " + ", ".join(f"{k.replace('aten.', '')} x{v}" for k, v in other))
    return "\n".join(lines)


def _resolve(gm: torch.nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
