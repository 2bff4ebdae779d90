"""Kernel source files: where they go, content addressing, repair of damaged files."""

import importlib.util

import torch

from lowc.codegen.kernel_files import cache_dir, kernel_file_for
from lowc.codegen.render import render
from lowc.codegen.spec import spec_for_qlinear

SPEC = spec_for_qlinear("w4a8_g128", torch.int8, torch.bfloat16)


def test_cache_dir_follows_lowc_cache_dir_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWC_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("LOWC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lowc"


def test_kernel_file_holds_the_rendered_source_and_is_stable(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWC_CACHE_DIR", str(tmp_path))
    path = kernel_file_for(SPEC)
    assert path.parent == tmp_path / "kernels" and path.name.startswith(SPEC.name)
    assert path.read_text() == render(SPEC)
    assert kernel_file_for(SPEC) == path
    other = kernel_file_for(spec_for_qlinear("w4a8_g64", torch.int8, torch.bfloat16))
    assert other != path


def test_damaged_file_is_rewritten(tmp_path):
    path = kernel_file_for(SPEC, root=tmp_path)
    full = path.read_text()
    path.write_text(full[: len(full) // 3])  # truncated, as by a crash in a non-atomic writer
    assert kernel_file_for(SPEC, root=tmp_path) == path
    assert path.read_text() == full


def test_kernel_file_imports_and_defines_kernel_and_reference(tmp_path):
    path = kernel_file_for(SPEC, root=tmp_path)
    mod_spec = importlib.util.spec_from_file_location("lowc_test_kernel_import", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    assert callable(module.reference) and hasattr(module, "qlinear_kernel")
    assert module.FORMAT == "w4a8_g128" and module.GROUP_SIZE.value == 128
