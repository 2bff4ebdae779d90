"""Rendering: deterministic, valid Python, constants folded in, hash follows the template text."""

import ast

import pytest
import torch

from lowc.codegen import render as render_mod
from lowc.codegen.render import render, template_hash
from lowc.codegen.spec import spec_for_qlinear
from lowc.errors import KernelError

SPECS = [
    spec_for_qlinear("w4a8_g128", torch.int8, torch.bfloat16),
    spec_for_qlinear("w4a8_pc", torch.int8, torch.float16),
    spec_for_qlinear("w8a8", torch.int8, torch.int32),
    spec_for_qlinear("w4a16_g128", torch.float16, torch.float32),
    spec_for_qlinear("w4a4_g128_o128", torch.int8, torch.bfloat16),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_rendered_module_is_valid_python_with_the_spec_constants(spec):
    src = render(spec)
    assert src == render(spec)  # deterministic
    tree = ast.parse(src)
    assigned = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert {"GROUP_SIZE", "W_BITS", "A_BITS", "N_OUTLIERS", "DOT_DTYPE", "RAW_ACCUMULATOR", "FORMAT"} <= assigned
    assert {"qlinear_kernel", "reference", "splitk_reduce", "tile_coords"} <= functions
    assert f"GROUP_SIZE = tl.constexpr({spec.group_size})" in src
    assert f"FORMAT = {spec.fmt!r}" in src
    assert template_hash(spec) in src and spec.name in ast.get_docstring(tree)


def test_template_hash_changes_with_the_template_text(monkeypatch):
    spec = SPECS[0]
    before = template_hash(spec)
    doc, body = render_mod._read_template(spec.template)
    original = render_mod._read_template
    monkeypatch.setattr(
        render_mod, "_read_template", lambda name: (doc, body + "\n# edited\n") if name == spec.template else original(name)
    )
    render_mod._templates_hash.cache_clear()  # hashes are memoized per process (templates are package data)
    try:
        assert template_hash(spec) != before
        assert "# edited" in render(spec)
    finally:
        render_mod._templates_hash.cache_clear()


def test_distinct_templates_have_distinct_hashes():
    assert len({template_hash(s) for s in SPECS}) == len({s.template for s in SPECS})


def test_missing_template_is_a_kernel_error():
    with pytest.raises(KernelError, match="does not exist"):
        render_mod._read_template("no_such_template")
