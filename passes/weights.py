"""Reading and replacing the weight tensors behind `get_attr` nodes, without writing into them.

The compiled graph shares its weight tensors with the user's model, so a pass never modifies a
tensor in place: it computes a new tensor and points the graph at it. `set_arg_tensor` does that for
one use of a weight: when the `get_attr` node has no other user it rebinds the attribute itself,
otherwise (a tied weight read twice) it registers a new attribute for this use only, so the other
reader keeps the original.
"""

from __future__ import annotations

import itertools

import torch
import torch.fx as fx

from lowc.errors import PassError

_fresh = itertools.count()


def attr_tensor(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    """The tensor a `get_attr` node reads."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        raise PassError(f"expected a weight (get_attr) node, got {node!r}")
    obj = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


def arg_tensor(gm: fx.GraphModule, user: fx.Node, index: int) -> torch.Tensor | None:
    """The tensor behind `user.args[index]` (None when that argument is None)."""
    a = user.args[index] if index < len(user.args) else None
    return None if a is None else attr_tensor(gm, a)


def _bind(gm: fx.GraphModule, target: str, tensor: torch.Tensor) -> None:
    parent, _, leaf = target.rpartition(".")
    owner = gm.get_submodule(parent) if parent else gm
    old = getattr(owner, leaf, None)
    if isinstance(old, torch.nn.Parameter):
        setattr(owner, leaf, torch.nn.Parameter(tensor, requires_grad=False))
    elif hasattr(owner, leaf) and leaf in owner._buffers:
        owner._buffers[leaf] = tensor
    else:
        owner.register_buffer(leaf, tensor)


def new_attr(gm: fx.GraphModule, hint: str, tensor: torch.Tensor, before: fx.Node) -> fx.Node:
    """Register `tensor` under a fresh name derived from `hint`; a get_attr node placed before `before`."""
    base = hint.replace(".", "_")
    name = base
    while hasattr(gm, name):
        name = f"{base}_{next(_fresh)}"
    gm.register_buffer(name, tensor)
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(name)


def set_arg_tensor(gm: fx.GraphModule, user: fx.Node, index: int, tensor: torch.Tensor) -> None:
    """Make `user.args[index]` (a get_attr) read `tensor` instead, for this user only."""
    old = user.args[index]
    if not isinstance(old, fx.Node) or old.op != "get_attr":
        raise PassError(f"%{user.name} argument {index} is not a weight; cannot replace it")
    if len(old.users) == 1 and not _target_shared(gm, old):
        _bind(gm, str(old.target), tensor)
        return
    fresh = new_attr(gm, f"{old.target}_lowc", tensor, before=user)
    args = list(user.args)
    args[index] = fresh
    user.args = tuple(args)


def _target_shared(gm: fx.GraphModule, node: fx.Node) -> bool:
    return any(n is not node and n.op == "get_attr" and n.target == node.target for n in gm.graph.nodes)
