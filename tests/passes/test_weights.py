"""weights: replacing a weight never writes into the old tensor and never touches another reader."""

import torch
import torch.fx as fx

from lowc.passes.weights import attr_tensor, set_arg_tensor

aten = torch.ops.aten


def graph_with_shared_weight():
    root = torch.nn.Module()
    root.w = torch.nn.Parameter(torch.randn(4, 4))
    root.v = torch.nn.Parameter(torch.randn(4, 4))
    g = fx.Graph()
    x = g.placeholder("x")
    w = g.get_attr("w")
    a = g.call_function(aten.linear.default, (x, w))
    b = g.call_function(aten.linear.default, (x, w))  # tied: one get_attr, two readers
    c = g.call_function(aten.linear.default, (x, g.get_attr("v")))
    g.output((a, b, c))
    return fx.GraphModule(root, g), root, (a, b, c)


def test_shared_weight_gets_a_new_attribute_for_one_reader():
    gm, root, (a, b, c) = graph_with_shared_weight()
    old = attr_tensor(gm, a.args[1])
    before = old.clone()
    set_arg_tensor(gm, a, 1, old * 2)
    assert torch.equal(attr_tensor(gm, b.args[1]), before) and torch.equal(attr_tensor(gm, a.args[1]), before * 2)
    assert a.args[1] is not b.args[1] and torch.equal(old, before)  # nothing written in place


def test_private_weight_is_rebound_and_stays_a_parameter():
    gm, root, (a, b, c) = graph_with_shared_weight()
    old = attr_tensor(gm, c.args[1])
    set_arg_tensor(gm, c, 1, torch.zeros(4, 4))
    assert isinstance(gm.v, torch.nn.Parameter) and torch.equal(gm.v, torch.zeros(4, 4))
    assert root.v is not gm.v and not torch.equal(old, torch.zeros(4, 4))
