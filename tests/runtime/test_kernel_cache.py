"""Kernel cache: memory and disk levels, the full key, atomic concurrent builds, damage repair."""

import dataclasses
import json
import multiprocessing as mp

import pytest
import torch

from lowc.codegen.kernel_files import source_sha256
from lowc.codegen.spec import spec_for_qlinear
from lowc.runtime.kernel_cache import KernelCache

SPEC = spec_for_qlinear("w4a8_g128", torch.int8, torch.bfloat16)


def test_memory_hit_returns_the_same_module(tmp_path):
    cache = KernelCache(tmp_path)
    a = cache.get(SPEC, capability="sm_90")
    assert cache.get(SPEC, capability="sm_90") is a
    assert a.path.read_text().startswith('"""lowc generated kernel')
    assert callable(a.reference) and a.kernel is a.module.qlinear_kernel


def test_disk_hit_after_memory_is_cleared(tmp_path):
    cache = KernelCache(tmp_path)
    first = cache.get(SPEC, capability="sm_90")
    mtime = cache.manifest_path(SPEC, first.key).stat().st_mtime_ns
    cache.clear_memory()
    again = cache.get(SPEC, capability="sm_90")
    assert again is not first and again.path == first.path
    assert cache.manifest_path(SPEC, first.key).stat().st_mtime_ns == mtime  # read, not rewritten


def test_key_covers_version_template_spec_capability_and_triton(tmp_path):
    cache = KernelCache(tmp_path)
    key = cache.key_for(SPEC, capability="sm_90")
    assert set(dataclasses.asdict(key)) == {"lowc_version", "template_hash", "spec", "capability", "triton_version"}
    for field in dataclasses.asdict(key):
        changed = dataclasses.replace(key, **{field: "other"})
        assert changed.digest() != key.digest()
    a = cache.get(SPEC, capability="sm_90")
    b = cache.get(SPEC, capability="sm_80")
    assert cache.manifest_path(SPEC, a.key) != cache.manifest_path(SPEC, b.key)
    assert a.path == b.path  # the source does not depend on the GPU; the entry does


def test_truncated_source_is_detected_and_rebuilt(tmp_path):
    cache = KernelCache(tmp_path)
    entry = cache.get(SPEC, capability="sm_90")
    good = entry.path.read_text()
    entry.path.write_text(good[:500])
    fresh = KernelCache(tmp_path)
    rebuilt = fresh.get(SPEC, capability="sm_90")
    assert rebuilt.path.read_text() == good
    assert hasattr(rebuilt.module, "qlinear_kernel")


@pytest.mark.parametrize("damage", ["garbage", "empty", "wrong_sha", "other_key"])
def test_corrupted_manifest_is_detected_and_rebuilt(tmp_path, damage):
    cache = KernelCache(tmp_path)
    entry = cache.get(SPEC, capability="sm_90")
    manifest_path = cache.manifest_path(SPEC, entry.key)
    manifest = json.loads(manifest_path.read_text())
    if damage == "garbage":
        manifest_path.write_bytes(b"\x00{not json")
    elif damage == "empty":
        manifest_path.write_text("")
    elif damage == "wrong_sha":
        manifest["source_sha256"] = "0" * 64
        manifest_path.write_text(json.dumps(manifest))
    else:
        manifest["key"]["triton_version"] = "0.0"
        manifest_path.write_text(json.dumps(manifest))
    fresh = KernelCache(tmp_path)
    assert fresh._load_verified(SPEC, entry.key) is None
    rebuilt = fresh.get(SPEC, capability="sm_90")
    repaired = json.loads(manifest_path.read_text())
    assert repaired["source_sha256"] == source_sha256(rebuilt.path.read_text())
    assert repaired["key"] == dataclasses.asdict(entry.key)


def _build_many(root: str, rounds: int, barrier, errors) -> None:
    """One process: build the same entry over and over (fresh cache objects force disk work)."""
    try:
        barrier.wait()
        for _ in range(rounds):
            cache = KernelCache(root)
            entry = cache.get(SPEC, capability="sm_90")
            cache._rebuild(SPEC, entry.key)  # rewrite both files while the other process reads them
            manifest = json.loads(cache.manifest_path(SPEC, entry.key).read_text())
            if source_sha256(entry.path.read_text()) != manifest["source_sha256"]:
                errors.put("source and manifest disagree")
    except Exception as e:  # reported to the parent; a crash here would otherwise pass silently
        errors.put(repr(e))


def test_two_processes_building_the_same_entry_never_corrupt_it(tmp_path):
    ctx = mp.get_context("fork")
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_build_many, args=(str(tmp_path), 25, barrier, errors)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert reported == []
    cache = KernelCache(tmp_path)
    key = cache.key_for(SPEC, capability="sm_90")
    assert cache._load_verified(SPEC, key) is not None
    leftovers = [p.name for p in tmp_path.rglob("*.tmp")]
    assert leftovers == []


def test_scratch_buffers_are_zeroed_persistent_and_separate(tmp_path):
    cache = KernelCache(tmp_path)
    a = cache.scratch("partials", "cpu", torch.int32, 3000)
    assert a.numel() >= 3000 and int(a.abs().sum()) == 0
    assert cache.scratch("partials", "cpu", torch.int32, 2500) is a  # same size class, same buffer
    assert cache.scratch("tickets", "cpu", torch.int32, 3000) is not a
    assert cache.scratch("partials", "cpu", torch.float32, 3000) is not a
