"""Tile configs: validation, M buckets, table lookup order, nearest-shape fallback, tuning, merging."""

import json

import pytest
import torch

from lowc.codegen.spec import spec_for_qlinear
from lowc.errors import KernelError
from lowc.runtime.autotune import (
    SHIPPED_DIR, Autotuner, ConfigTable, TileConfig, candidate_configs, default_config, device_slug, entry_key, m_bucket,
)

SPEC = spec_for_qlinear("w4a8_g128", torch.int8, torch.bfloat16)
W4A4 = spec_for_qlinear("w4a4_g128_o128", torch.int8, torch.bfloat16)


def test_m_buckets_are_powers_of_two_capped():
    assert [m_bucket(m) for m in (1, 2, 3, 16, 17, 1000, 4096, 100000)] == [1, 2, 4, 16, 32, 1024, 4096, 8192]


def test_device_slugs():
    assert device_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert device_slug("NVIDIA H200") == "h200"
    assert device_slug("Some GPU 9000") == "some_gpu_9000"


def test_invalid_configs_name_the_problem():
    with pytest.raises(KernelError, match="power of two"):
        TileConfig(24, 64, 128).check(SPEC)
    with pytest.raises(KernelError, match="BK must equal the group"):
        TileConfig(16, 64, 256).check(W4A4)
    with pytest.raises(KernelError, match="unknown fields"):
        TileConfig.from_dict({"BM": 16, "BN": 64, "BK": 128, "BLOCK": 3})


@pytest.mark.parametrize("spec", [SPEC, W4A4, spec_for_qlinear("w4a16_g128", torch.bfloat16, torch.bfloat16)], ids=lambda s: s.fmt)
@pytest.mark.parametrize("m", [1, 16, 64, 256, 4096])
def test_defaults_and_candidates_are_valid(spec, m):
    assert default_config(spec, m, 4096, 4096).check(spec)
    cands = candidate_configs(spec, m, 4096, 4096)
    assert cands and all(c.check(spec) for c in cands)
    assert len(set(cands)) == len(cands)
    if m <= 16:
        assert any(c.SPLIT_K > 1 for c in cands)  # decode needs split-K candidates


def write_table(path, entries):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "device": "h200", "entries": entries}))


def test_lookup_order_user_then_shipped_then_nearest_then_default(tmp_path):
    shipped = tmp_path / "shipped"
    tuner = Autotuner(root=tmp_path / "cache", policy="off", shipped_dir=shipped)
    a, b, c = TileConfig(16, 64, 256, 4), TileConfig(16, 128, 256, 2), TileConfig(64, 64, 512, 1)
    write_table(shipped / "h200.json", {entry_key(SPEC, 1, 4096, 4096): {"config": a.to_dict()},
                                        entry_key(SPEC, 1, 28672, 4096): {"config": c.to_dict()}})
    assert tuner.config_for(SPEC, 1, 4096, 4096, "h200") == a
    tuner2 = Autotuner(root=tmp_path / "cache", policy="off", shipped_dir=shipped)
    tuner2.user_table("h200").update({entry_key(SPEC, 1, 4096, 4096): {"config": b.to_dict()}}, "h200")
    assert tuner2.config_for(SPEC, 1, 4096, 4096, "h200") == b  # the user's own tuning wins
    assert tuner2.config_for(SPEC, 1, 4096, 11008, "h200") == b  # nearest (N, K) of the same bucket
    assert tuner2.config_for(SPEC, 1, 24576, 4096, "h200") == c
    assert tuner2.config_for(SPEC, 64, 4096, 4096, "h200") == default_config(SPEC, 64, 4096, 4096)
    assert tuner2.config_for(SPEC, 1, 4096, 4096, "a100") == default_config(SPEC, 1, 4096, 4096)


def test_tuning_keeps_the_fastest_and_skips_failures(tmp_path):
    tuner = Autotuner(root=tmp_path, policy="miss", shipped_dir=tmp_path / "none")
    cands = [TileConfig(16, 64, 256, 1), TileConfig(16, 64, 256, 2), TileConfig(16, 128, 256, 1)]
    times = {cands[0]: 3e-6, cands[1]: 2e-6}

    def bench(cfg):
        if cfg not in times:
            raise RuntimeError("out of shared memory")
        return times[cfg]

    assert tuner.tune(SPEC, 1, 4096, 4096, "h200", bench, cands) == cands[1]
    stored = ConfigTable(tmp_path / "autotune" / "h200.json").load()
    assert stored[entry_key(SPEC, 1, 4096, 4096)]["us"] == 2.0
    fresh = Autotuner(root=tmp_path, policy="miss", shipped_dir=tmp_path / "none")
    assert fresh.config_for(SPEC, 1, 4096, 4096, "h200", bench=lambda c: 1 / 0) == cands[1]  # no re-tune


def test_table_updates_merge_and_survive_garbage(tmp_path):
    table = ConfigTable(tmp_path / "t.json")
    table.path.write_text("{not json")
    assert table.load() == {}
    table.update({"a": {"config": TileConfig(16, 64, 128).to_dict()}}, "h200")
    table.update({"b": {"config": TileConfig(16, 64, 256).to_dict()}}, "h200")
    assert set(table.load()) == {"a", "b"}
    assert table.get("a") == TileConfig(16, 64, 128)


@pytest.mark.parametrize("gpu", ["h100", "h200"])
def test_shipped_tables_cover_the_llama_shapes(gpu):
    table = ConfigTable(SHIPPED_DIR / f"{gpu}.json")
    entries = table.load()
    for fmt, x in (("w4a8_g128", torch.int8), ("w8a8", torch.int8), ("w4a16_g128", torch.bfloat16)):
        spec = spec_for_qlinear(fmt, x, torch.bfloat16)
        for n, k in ((4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336)):
            for m in (1, 16, 64, 256, 4096):
                key = entry_key(spec, m, n, k)
                assert key in entries, key
                assert table.get(key).check(spec)


def test_gemv_space_has_whole_k_programs_within_the_register_cap():
    """The decode tuner's whole-K programs (no split-K, no ticket): present for K = 4096, capped at
    32 code words per thread, and including the GEMV tiles the H200 table ships for M = 1 (at M = 2
    it ships the register-fragment kernel since session 10: that tile is in its own space)."""
    from lowc.runtime.autotune import gemv_candidates, mma_reg_candidates

    cands = gemv_candidates(SPEC, 1, 4096, 4096)
    whole = [c for c in cands if c.SPLIT_K == 1 and c.BK >= 4096]
    assert whole and all(c.GEMV == 1 and c.BN * c.BK // 8 <= 32 * 32 * c.num_warps for c in whole)
    shipped = ConfigTable(SHIPPED_DIR / "h200.json")
    for m, n in ((1, 4096), (1, 6144)):
        cfg = shipped.get(entry_key(SPEC, m, n, 4096))
        assert cfg is not None and cfg in gemv_candidates(SPEC, m, n, 4096), (m, n, cfg)
    cfg = shipped.get(entry_key(SPEC, 2, 4096, 4096))
    assert cfg is not None and cfg in mma_reg_candidates(SPEC, 2, 4096, 4096), cfg
