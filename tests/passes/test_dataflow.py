"""dataflow: linear groups, their producers, and the networkx view."""

import torch
import torch.fx as fx

from lowc.capture import capture
from lowc.passes.annotate import annotate
from lowc.passes.dataflow import dataflow_graph, head_linear, linear_groups, upstream_linears
from lowc.tiny_models import tiny_model

aten = torch.ops.aten


def test_groups_and_producers_of_a_llama_layer():
    gm = capture(tiny_model("qwen2", layers=2, hidden=64, heads=4, kv_heads=2))
    annotate(gm, None)
    groups = linear_groups(gm)
    kinds = [(g.name, g.producer.kind) for g in groups]
    assert kinds[:4] == [("q_proj+k_proj+v_proj (layer 0)", "norm"), ("o_proj (layer 0)", "heads"),
                         ("gate_proj+up_proj (layer 0)", "norm"), ("down_proj (layer 0)", "gated")]
    assert kinds[-1] == ("lm_head", "norm") and len(groups) == 9
    o = groups[1]
    assert o.producer.node.meta["lowc_site"]["role"] == "v_proj" and o.producer.slots == 32
    assert o.slot.tolist()[:16] == list(range(16)) and o.slot.tolist()[16:32] == list(range(16))  # GQA
    assert groups[3].producer.extra["gate"].meta["lowc_site"]["role"] == "gate_proj"
    assert head_linear(gm) is groups[-1].linears[0]
    g = dataflow_graph(gm)
    assert g.nodes[f"group:{groups[0].input.name}"]["channels"] == 64
    assert sorted(g.successors(f"group:{groups[0].input.name}")) == sorted(n.name for n in groups[0].linears)


def test_attention_inputs_trace_to_their_projections():
    gm = capture(tiny_model("llama", layers=1))
    annotate(gm, None)
    attn = next(n for n in gm.graph.nodes if n.target is torch.ops.lowc.attention.default)
    roles = [{n.meta["lowc_site"]["role"] for n in upstream_linears(attn.args[i])} for i in range(3)]
    assert roles == [{"q_proj"}, {"k_proj"}, {"v_proj"}]


def test_an_activation_with_another_reader_has_no_producer():
    root = torch.nn.Module()
    root.n = torch.nn.Parameter(torch.ones(8))
    root.w = torch.nn.Parameter(torch.randn(8, 8))
    g = fx.Graph()
    x = g.placeholder("x")
    y = g.call_function(torch.ops.lowc.rms_norm.default, (x, g.get_attr("n"), 1e-5))
    lin = g.call_function(aten.linear.default, (y, g.get_attr("w")))
    g.output(g.call_function(aten.add.Tensor, (lin, y)))  # y is read by the add too: no fold
    (group,) = linear_groups(fx.GraphModule(root, g))
    assert group.producer is None and group.linears == [lin]
