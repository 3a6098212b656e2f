"""How many probe models share a pass, how long a time chunk is, and the measured kernel configs."""
from __future__ import annotations

import json

import pytest
import torch

import models
from models import auto_models_per_pass, auto_time_chunk, preset, stacked_model_bytes
from models import lstm_backends, lstm_fused

GIB = 1 << 30


@pytest.fixture
def fake_h200(monkeypatch):
    """A CUDA device with 139 GiB free on which `auto` resolves to the fused backend (no GPU needed)."""
    monkeypatch.setattr(models, "available_memory_bytes", lambda device: 139 * GIB)
    monkeypatch.setitem(lstm_backends._AUTO_CHOICE, ("cuda", torch.bfloat16), "fused")


@pytest.mark.parametrize("size,want_m", [("tiny", 24), ("small", 24), ("large", 2), ("xlarge", 1)])
def test_models_per_pass_follows_work_and_memory(fake_h200, size, want_m):
    cfg = preset(size, dtype="bfloat16")
    m = auto_models_per_pass(cfg, device="cuda", batch_size=1024, time_chunk=11, wanted=24)
    assert m == want_m
    # never more than wanted, never more than fits
    assert auto_models_per_pass(cfg, device="cuda", batch_size=1024, time_chunk=11, wanted=3) <= 3


def test_models_per_pass_splits_probes_evenly(fake_h200):
    cfg = preset("medium", dtype="bfloat16")
    m = auto_models_per_pass(cfg, device="cuda", batch_size=1024, time_chunk=11, wanted=24)
    assert 1 < m < 24 and m % 2 == 0 and 24 % m == 0        # whole probes per pass, equal passes


def test_models_per_pass_respects_memory(monkeypatch):
    monkeypatch.setitem(lstm_backends._AUTO_CHOICE, ("cuda", torch.bfloat16), "fused")
    cfg = preset("tiny", dtype="bfloat16")
    one = stacked_model_bytes(cfg, batch_size=1024, time_chunk=11)
    monkeypatch.setattr(models, "available_memory_bytes", lambda device: 4 * 5 * one)   # 25% holds 5 models
    assert auto_models_per_pass(cfg, device="cuda", batch_size=1024, time_chunk=11, wanted=24) == 4


def test_time_chunk_small_for_big_models(fake_h200):
    assert auto_time_chunk(preset("xlarge", dtype="bfloat16"), device="cuda", batch_size=1024, models=1, T=11) == 1
    assert auto_time_chunk(preset("tiny", dtype="bfloat16"), device="cuda", batch_size=1024, models=24, T=11) == 11
    tc = auto_time_chunk(preset("medium", dtype="bfloat16"), device="cuda", batch_size=1024, models=1, T=10_000)
    assert 1 <= tc < 10_000                                  # a fixed chunk: memory flat in T


def test_stacked_bytes_counts_padding_and_states(fake_h200):
    cfg = preset("large", dtype="bfloat16")
    b11 = stacked_model_bytes(cfg, batch_size=1024, time_chunk=11)
    b1 = stacked_model_bytes(cfg, batch_size=1024, time_chunk=1)
    Dk = lstm_fused.step_tiles(300)[0]
    # ten more steps of hidden states (bf16) and of logits with the loss temporaries (3 x fp32)
    assert b11 - b1 == 10 * 1024 * 220 * Dk * 2 + 10 * 1024 * 100 * 4 * 3
    assert b1 > models.param_count(cfg) * 2                  # parameters plus the padded working set


def test_tuning_lookup(tmp_path, monkeypatch):
    key = lstm_fused.tuning_key("NVIDIA H200", 320, 1024, 440)
    assert key == "NVIDIA H200|Dk=320|B>=256"
    f = tmp_path / "t.json"
    f.write_text(json.dumps({key: {"BD": 64, "BM": 128, "one_dot": True, "num_warps": 8, "num_stages": 3}}))
    monkeypatch.setenv("ZO_STEP_TUNING", str(f))
    monkeypatch.setattr(lstm_fused, "_TUNING", None)
    assert lstm_fused._tuning()[key]["one_dot"] is True
    # no CUDA device: the heuristic, whatever the file says
    assert lstm_fused.default_step_config(1024, 64, Dk=320, heads=440, device="cpu")["one_dot"] is False
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    monkeypatch.setenv("ZO_STEP_TUNING", str(bad))
    monkeypatch.setattr(lstm_fused, "_TUNING", None)
    with pytest.raises(ValueError, match="unreadable"):
        lstm_fused._tuning()
    monkeypatch.setattr(lstm_fused, "_TUNING", None)


def test_committed_tuning_file_is_valid():
    monkey = lstm_fused._TUNING
    try:
        lstm_fused._TUNING = None
        import os
        os.environ.pop("ZO_STEP_TUNING", None)
        tab = lstm_fused._tuning()
    finally:
        lstm_fused._TUNING = monkey
    for key, cfg in tab.items():
        Dk = int(key.split("Dk=")[1].split("|")[0])
        assert Dk % cfg["BD"] == 0 and cfg["BM"] in (16, 32, 64, 128, 256)
        # launch options of the per-step kernel (keyword arguments of lstm_step_), the other forms'
        # keys, and the sweep's records of what it measured
        import inspect
        step_opts = {n for n, p in inspect.signature(lstm_fused.lstm_step_).parameters.items()
                     if p.kind == p.KEYWORD_ONLY} - {"K", "N", "Dk"}
        assert {"BD", "BM", "one_dot", "num_warps", "num_stages"} <= set(cfg), key
        assert set(cfg) <= (step_opts | {"seq", "split", "persist"} | set(lstm_fused.CHUNK_KEYS)
                            | set(lstm_fused.TUNING_NOTES) | set(lstm_fused.PASS_KEYS)), key
        assert all(isinstance(cfg[k], int) and cfg[k] > 0 for k in lstm_fused.PASS_KEYS if k in cfg), key
        if cfg.get("ws"):       # a warp-specialised entry the launcher would accept (it checks the same)
            BK = cfg.get("BK", cfg["BD"])
            assert cfg["BM"] == 64 and Dk % BK == 0 and BK % 16 == 0, key
            assert not cfg.get("stage_out") or cfg.get("prefetch"), key
            assert not cfg.get("one_dot") or 4 * cfg["BD"] <= 256, key
            assert lstm_fused.ws_shared_bytes(BD=cfg["BD"], BK=BK, stages=cfg["num_stages"],
                                              prefetch=bool(cfg.get("prefetch")), coop=bool(cfg.get("coop")),
                                              pingpong=bool(cfg.get("pingpong")), Dk=Dk) <= lstm_fused.WS_SMEM_LIMIT, key
            if cfg.get("pingpong"):     # the ping-pong form's own constraints (_lstm_step_pp checks the same)
                assert cfg["one_dot"] and cfg["BD"] in (16, 32), key
                assert not any(cfg.get(k) for k in lstm_fused.COOP_FORM_KEYS), key
        seq = cfg.get("seq")
        if seq is not None:   # the whole-chunk kernel: only for heads of at most SEQ_MAX_DK, a power of two
            assert Dk <= lstm_fused.SEQ_MAX_DK and Dk & (Dk - 1) == 0, key
            assert {"BM", "num_warps"} <= set(seq) <= {"BM", "num_warps", "prefetch"}, key
        assert cfg.get("split", False) in (True, False), key
        persist = cfg.get("persist")
        if persist is not None:
            assert {"BD", "BM", "num_warps", "num_stages"} <= set(persist) <= {"BD", "BM", "BK", "num_warps",
                                                                          "num_stages"}, key
            assert Dk % persist["BD"] == 0, key


def test_a_measured_pass_shape_replaces_the_heuristics_within_the_memory_bounds(tmp_path, monkeypatch):
    """A tuning entry's models_per_pass and time_chunk (measured end to end) replace the FLOP rule and the
    chunk rule for that GPU and head size; the probes wanted, T and the memory fit still bound them; the
    entry's other keys stay launch options and these two never reach the kernel's launch."""
    key = lstm_fused.tuning_key("NVIDIA H200", 320, 1024, 440)
    f = tmp_path / "t.json"
    f.write_text(json.dumps({key: {"BD": 64, "BM": 128, "one_dot": True, "num_warps": 8, "num_stages": 3,
                                   "models_per_pass": 4, "time_chunk": 11}}))
    monkeypatch.setenv("ZO_STEP_TUNING", str(f))
    monkeypatch.setattr(lstm_fused, "_TUNING", None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(models, "_fused_chunk", lambda *_: True)
    monkeypatch.setattr(models, "available_memory_bytes", lambda *_: 100 << 30)
    cfg = models.preset("large", vocab_size=100, input_size=100, dtype="bfloat16")
    dev = torch.device("cuda", 0)
    assert lstm_fused.pass_tuning(Dk=320, B=1024, device=dev) == {"models_per_pass": 4, "time_chunk": 11}
    assert lstm_fused.pass_tuning(Dk=320, B=1024, device="cpu") == {}
    assert models.auto_models_per_pass(cfg, device=dev, batch_size=1024, time_chunk=11, wanted=24) == 4
    assert models.auto_models_per_pass(cfg, device=dev, batch_size=1024, time_chunk=11, wanted=2) == 2
    assert models.auto_time_chunk(cfg, device=dev, batch_size=1024, models=4, T=64) == 11
    assert models.auto_time_chunk(cfg, device=dev, batch_size=1024, models=4, T=5) == 5
    # little free memory: the fit bounds the measured count
    monkeypatch.setattr(models, "available_memory_bytes", lambda *_: 3 << 30)
    assert models.auto_models_per_pass(cfg, device=dev, batch_size=1024, time_chunk=11, wanted=24) < 4
    # another head size has no measured shape: the heuristics (large at M = 4 gets 1 step a chunk)
    monkeypatch.setattr(lstm_fused, "_TUNING", {})
    assert models.auto_time_chunk(cfg, device=dev, batch_size=1024, models=4, T=64) == 1
    monkeypatch.setattr(lstm_fused, "_TUNING", None)
