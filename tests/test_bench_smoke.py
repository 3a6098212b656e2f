"""End-to-end check of bench/bench_step.py in its --smoke mode (tiny shapes, 2 steps, CPU).

The real benchmark needs a GPU (see bench/README.md); this test only proves that every section runs and
that the markdown and JSON results carry the expected structure.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "bench_step.py"


def test_bench_smoke_writes_results(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    mds = sorted(tmp_path.glob("bench_step_*.md"))
    jsons = sorted(tmp_path.glob("bench_step_*.json"))
    assert len(mds) == 1 and len(jsons) == 1, list(tmp_path.iterdir())
    res = json.loads(jsons[0].read_text())

    for key in ("meta", "peak", "bmm_ceiling", "zo_steps", "bptt", "context_sweep", "targets", "notes"):
        assert key in res, key
    meta = res["meta"]
    for key in ("date", "gpu", "torch", "cuda", "command", "finished", "settings"):
        assert key in meta, key
    assert meta["finished"] is True and meta["smoke"] is True
    assert "--smoke" in meta["command"]

    assert res["peak"]["tflops"] > 0
    assert res["peak"]["sustained"] == {"status": "skipped", "note": "needs CUDA"}   # the sustained GEMM: CUDA only
    assert {r["D"] for r in res["bmm_ceiling"]} == {20, 50, 150, 300, 850}
    assert all(r["tflops"] > 0 and "tflops_pad64" in r for r in res["bmm_ceiling"])

    zo = res["zo_steps"]
    ok = [r for r in zo if r["status"] == "ok"]
    assert {r["probes"] for r in ok} == {2, 4}, zo
    paths = {r["path"] for r in ok}
    assert paths == {"stacked", "per-probe"}, paths          # both engine paths ran
    for r in ok:
        assert r["size"] == "tiny" and r["steps_timed"] == 2 and r["s_step"] > 0
        for key in ("tflops", "x_floor", "peak_frac", "models_per_pass", "peak_alloc_gib", "nvml_proc_gib",
                    "flops", "params"):
            assert key in r, key
        assert r["flops"] == 2 * r["params"] * r["B"] * r["T"] * 2 * r["probes"]

    kinds = {r["kind"]: r for r in res["bptt"]}
    assert set(kinds) == {"cudnn", "lstmmodel"}
    assert all(r["status"] == "ok" and r["s_step"] > 0 for r in kinds.values()), res["bptt"]

    sw = res["context_sweep"]
    assert [r["T"] for r in sw["rows"]] == [10, 70]
    assert all(r["status"] == "ok" and r["s_step"] > 0 for r in sw["rows"]), sw["rows"]
    assert sw["rows"][0]["method"].startswith("full") and sw["rows"][1]["method"].startswith("extrapolated")

    targets = res["targets"]
    assert len(targets) >= 12
    assert all(t["status"] in ("met", "missed", "not measured") for t in targets)

    md = mds[0].read_text()
    for heading in ("GEMM peak", "Recurrent bmm ceiling", "ZO step", "BPTT", "Context sweep", "Targets (issue 4)"):
        assert heading in md, heading
    # the final tables are printed to stdout as well
    assert "Targets (issue 4)" in proc.stdout


def test_sweep_keeps_a_faster_recorded_entry():
    """The kernel sweep replaces a tuning entry only when its best is faster than the recorded one
    measured under the same activation mode (a quick or budget-cut grid can miss the best config)."""
    pytest.importorskip("triton")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import step_kernel_sweep as sweep
    old = {"BD": 64, "ms": 1.6, "fast_act": True}
    assert sweep.keep_faster(old, {"BD": 32}, 1.8e-3, True) == (old, False)
    assert sweep.keep_faster(old, {"BD": 32}, 1.5e-3, True) == ({"BD": 32, "ms": 1.5, "fast_act": True}, True)
    # another activation mode, or an entry without a time: the new measurement is recorded
    assert sweep.keep_faster(old, {"BD": 32}, 1.8e-3, False)[1]
    assert sweep.keep_faster({"BD": 64}, {"BD": 32}, 1.8e-3, True)[1]
    # the pass shape (measured end to end by bench_step, not by the sweep) stays with a replaced entry
    kept = sweep.keep_faster(dict(old, models_per_pass=4, time_chunk=11), {"BD": 32}, 1.5e-3, True)[0]
    assert kept == {"BD": 32, "ms": 1.5, "fast_act": True, "models_per_pass": 4, "time_chunk": 11}
    # so do the chunk's first-step options (measured end to end by bench_first_steps and bench_step)
    chunk = {"first_gemv": True, "step1_table": True, "step1_rows": 16}
    kept = sweep.keep_faster(dict(old, **chunk), {"BD": 32}, 1.5e-3, True)[0]
    assert kept == {"BD": 32, "ms": 1.5, "fast_act": True, **chunk}
    # the record keys are not launch options: the loader drops them
    from models import lstm_fused
    assert set(lstm_fused.TUNING_NOTES) == {"ms", "fast_act"}


def test_sweep_grids():
    """The kernel sweep's grids: focus times every per-step config with and without prefetch; quick puts
    the recorded entry and its prefetch twin first; wres / ws / pp the recorded entry, then the
    weight-resident / warp-specialised kernel / its ping-pong form (every ring fitting the shared memory); all adds the four-dot, persistent, descriptor-epilogue, weight-resident and
    warp-specialised forms; small
    shapes always get the quick grid; an unknown grid name is an error."""
    pytest.importorskip("triton")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import step_kernel_sweep as sweep
    large = {"K": 2, "N": 220, "B": 1024, "Dk": 320, "BD": 64, "BK": 64}
    focus = sweep.grid_configs(large, "focus")
    assert len(focus) == len({tuple(sorted(c.items())) for c in focus})            # no duplicates
    assert {c["prefetch"] for c in focus} == {False, True}
    plain = [c for c in focus if "BK" not in c]
    assert sum(c["prefetch"] for c in plain) * 2 == len(plain)
    assert {c["BK"] for c in focus if "BK" in c} == {32}            # Dk 320: BK 64 by default, 32 the variant
    assert not any(c.get("tma_epi") or c.get("wres") or c.get("ws") for c in focus)
    xl = {"K": 1, "N": 350, "B": 1024, "Dk": 896, "BD": 64, "BK": 64}
    assert {c["BK"] for c in sweep.grid_configs(xl, "focus") if "BK" in c} == {32, 128}
    assert not any(c.get("wres") for c in sweep.grid_configs(xl, "all"))     # W tile over the shared memory
    assert all(c["one_dot"] and not c.get("persistent") for c in focus)
    assert {c["BD"] for c in focus} == {64, 32} and any(c.get("tma") for c in focus)
    rec = {"BD": 64, "BM": 128, "one_dot": True, "num_warps": 8, "num_stages": 3, "tma": False, "ms": 1.4}
    quick = sweep.grid_configs(large, "quick", rec)
    assert quick[0] == {"BD": 64, "BM": 128, "one_dot": True, "num_warps": 8, "num_stages": 3, "tma": False,
                        "prefetch": False}
    assert quick[1] == dict(quick[0], prefetch=True) and len(quick) < len(focus)
    wres = sweep.grid_configs(large, "wres", rec)
    assert wres[0]["BM"] == 128 and all(c["wres"] and 320 // c["BK"] <= 8 for c in wres[1:])
    full = sweep.grid_configs(large, "all")
    assert any(not c["one_dot"] for c in full) and any(c.get("persistent") for c in full)
    assert any(c.get("wres") for c in full) and all(c["tma"] for c in full if c.get("tma_epi"))
    assert any(c.get("tma_epi") for c in full) and len(full) == len({tuple(sorted(c.items())) for c in full})
    ws = sweep.grid_configs(large, "ws", rec)
    assert ws[0]["BM"] == 128 and ws[1:] and all(c["ws"] and c["BM"] == 64 and 320 % c["BK"] == 0 for c in ws[1:])
    assert all(c in full for c in ws[1:])
    pp = sweep.grid_configs(large, "pp", rec)
    assert pp[0]["BM"] == 128 and {(c["BD"], c["BK"]) for c in pp[1:]} == {(32, 32), (32, 64), (16, 32), (16, 64)}
    from models.lstm_fused import WS_SMEM_LIMIT, ws_shared_bytes
    for c in pp[1:]:
        assert c["ws"] and c["pingpong"] and c["one_dot"] and c["BM"] == 64 and 2 <= c["num_stages"] <= 32
        assert ws_shared_bytes(BD=c["BD"], BK=c["BK"], stages=c["num_stages"], prefetch=False, coop=False,
                               pingpong=True, Dk=320) <= WS_SMEM_LIMIT
        assert c in full
    assert sweep.step_entry(dict(pp[1], s=1e-3))["pingpong"] is True          # the entry reproduces the form
    ld = [c for c in pp[1:] if c.get("loader")]         # each also with the loader's warp, and that with TMA stores
    assert len(ld) == 2 * len(pp[1:]) // 3 and all(c["consumer_regs"] <= 224 for c in ld)
    assert sweep.step_entry(dict(ld[0], s=1e-3))["loader"] is True and not sweep.step_entry(pp[1])["loader"]
    tma_out = [c for c in ld if c.get("tma_out")]
    assert len(tma_out) == len(ld) // 2 and all({k: v for k, v in c.items() if k != "tma_out"} in ld for c in tma_out)
    assert sweep.step_entry(dict(tma_out[0], s=1e-3))["tma_out"] is True and not sweep.step_entry(ld[0])["tma_out"]
    tiny = {"K": 24, "N": 12, "B": 1024, "Dk": 32, "BD": 32, "BK": 32}
    assert sweep.grid_configs(tiny, "all") == sweep.grid_configs(tiny, "quick")
    with pytest.raises(ValueError, match="unknown grid"):
        sweep.grid_configs(large, "fast")


def test_ncu_step_refuses_bad_input_clearly():
    """bench/ncu_step.py (one preset's step kernel launched for Nsight Compute): a --config that is not a
    JSON object is a usage error naming the form, and without a GPU it says so and exits 2."""
    script = REPO / "bench" / "ncu_step.py"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    bad = subprocess.run([sys.executable, str(script), "--config", "{ws: true}"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--config is not JSON" in bad.stderr
    arr = subprocess.run([sys.executable, str(script), "--config", "[1]"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert arr.returncode == 2 and "JSON object" in arr.stderr
    nogpu = subprocess.run([sys.executable, str(script), "--size", "medium"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert nogpu.returncode == 2 and "needs a CUDA device" in nogpu.stderr


def test_ws_bitcheck_refuses_bad_input_clearly():
    """bench/ws_bitcheck.py (the Gluon step kernel against the Triton one, bit for bit): missing or
    non-numeric arguments print its usage and exit 2; without a GPU it says so and exits 2."""
    script = REPO / "bench" / "ws_bitcheck.py"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    for args in ([], ["3", "1", "2", "x", "64", "7"]):
        bad = subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode == 2 and "STAGES K N D B V" in bad.stderr
    nogpu = subprocess.run([sys.executable, str(script), "3", "1", "2", "64", "64", "7"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert nogpu.returncode == 2 and "needs a CUDA device" in nogpu.stderr


def test_first_steps_variants_checks_its_sizes_and_refuses_without_a_gpu():
    """bench/first_steps_variants.py: an unknown size is named; without a GPU it says so, nonzero."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    script = str(REPO / "bench" / "first_steps_variants.py")
    bad = subprocess.run([sys.executable, script, "--sizes", "huge"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "--sizes ['huge'] not among" in bad.stderr
    nogpu = subprocess.run([sys.executable, script, "--sizes", "large"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=120)
    assert nogpu.returncode != 0 and "needs a CUDA device" in nogpu.stderr


def test_ws_decompose_builds_its_variants_and_refuses_without_a_gpu(tmp_path):
    """bench/ws_decompose.py: every source edit still applies to the shipped Gluon kernel (a kernel
    change that breaks one is caught here, not on the GPU), the variant module imports with the
    kernel and its VARIANT switch; without a GPU the script says so and exits nonzero."""
    sys.path.insert(0, str(REPO / "bench"))
    import ws_decompose
    mod = ws_decompose.variant_module(tmp_path)
    src = (tmp_path / "ws_variants.py").read_text()
    assert hasattr(mod, "lstm_step_ws_kernel") and src.count("VARIANT") >= 12
    assert "if VARIANT != 1:\n                acc = warpgroup_mma(" in src
    for name, edits in ws_decompose.PROBES.items():     # each probe's edits apply and change the source
        probe = ws_decompose.variant_module(tmp_path, f"ws_probe_{name}", edits)
        psrc = (tmp_path / f"ws_probe_{name}.py").read_text()
        assert hasattr(probe, "lstm_step_ws_kernel") and psrc != src
    assert "tma.async_copy_global_to_shared(a_desc" not in (tmp_path / "ws_probe_few_a.py").read_text().split(
        "if pid_d == 0:")[1].split("if COOP:")[1].split("else:")[0]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    nogpu = subprocess.run([sys.executable, str(REPO / "bench" / "ws_decompose.py"), "--sizes", "large"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=120)
    assert nogpu.returncode != 0 and "needs a CUDA device" in nogpu.stderr
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "ws_decompose.py"), "--probes", "no_such"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unknown --probes ['no_such']" in bad.stderr


def test_profile_step_idle_gaps_finds_the_device_idle_intervals():
    """bench/profile_step.py's gap table: the idle intervals between device kernels (overlapping
    kernels merged), longest first with the kernels around them; host events are ignored."""
    from types import SimpleNamespace as NS
    import torch
    sys.path.insert(0, str(REPO / "bench"))
    from profile_step import busy_seconds, idle_gaps
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def ev(name, s, e, dev=cuda):
        return NS(name=name, device_type=dev, time_range=NS(start=s, end=e))
    evs = [ev("a", 0, 10), ev("b", 5, 40), ev("host", 40, 500, cpu), ev("c", 100, 110), ev("d", 115, 120),
           ev("e", 400, 410)]
    worst, n_long, total = idle_gaps(evs, top=2, min_us=20)
    assert worst == [(280, "d", "e"), (60, "b", "c")]
    assert n_long == 2 and total == 340
    assert busy_seconds(evs) == pytest.approx((40 + 10 + 5 + 10) * 1e-6)


def test_bench_predicts_setup_from_the_largest_model_measured():
    """The time-budget check's setup estimate scales the largest measured model's setup linearly (a
    per-parameter rate from a small model, whose setup is mostly fixed compile cost, predicted ~440 s
    for an xlarge setup that took 8 s), and the step time from the same size's measured row."""
    sys.path.insert(0, str(REPO / "bench"))
    import bench_step

    class B:
        res = {"zo_steps": [
            {"size": "tiny", "params": 2e6, "probes": 12, "s_step": 0.001, "setup_s": 4.0},
            {"size": "medium", "params": 1.06e7, "probes": 12, "s_step": 0.017, "setup_s": 4.0},
            {"size": "large", "params": 1.126e8, "probes": 12, "s_step": 0.15, "setup_s": 8.0},
            {"size": "large", "params": 1.126e8, "probes": 12, "s_step": 0.5, "setup_s": 1.0, "label": "other"}]}
    step, setup = bench_step.predict_zo(B, "xlarge", 12, 1.162e9)
    assert setup == pytest.approx(8.0 * 1.162e9 / 1.126e8 + 1.0)          # ~84 s, not ~440
    assert step == pytest.approx(0.15 * 1.162e9 / 1.126e8)
    step, setup = bench_step.predict_zo(B, "large", 64, 1.126e8)
    assert step == pytest.approx(0.15 * 64 / 12) and setup == pytest.approx(9.0)
    assert bench_step.predict_zo(type("E", (), {"res": {"zo_steps": []}}), "tiny", 12, 2e6) == (None, None)


def test_pp_decompose_builds_its_variants_and_refuses_without_a_gpu(tmp_path):
    """bench/pp_decompose.py: every variant's edits still apply, once each, to the shipped ping-pong
    kernel and change it, and the variant module imports; a stale edit is refused by name; an unknown
    variant is named; without a GPU the script says so, nonzero."""
    sys.path.insert(0, str(REPO / "bench"))
    import pp_decompose
    shipped = pp_decompose.SRC_PATH.read_text()
    for name, edits in pp_decompose.VARIANTS.items():
        mod = pp_decompose.variant_module(tmp_path, name, edits)
        assert hasattr(mod, "lstm_step_pp_kernel") and (tmp_path / f"pp_variant_{name}.py").read_text() != shipped
    with pytest.raises(SystemExit, match="the kernel source changed"):
        pp_decompose.variant_source([("no such line", "")])
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    script = str(REPO / "bench" / "pp_decompose.py")
    bad = subprocess.run([sys.executable, script, "--variants", "nope"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "unknown --variants ['nope']" in bad.stderr
    nogpu = subprocess.run([sys.executable, script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert nogpu.returncode != 0 and "needs a CUDA device" in nogpu.stderr


def test_bench_clock_summary_names_the_limits_and_samples_nothing_without_nvml():
    """bench_step's GPU-clock record: NVML's clock-limit reason bits decoded to names (idle and unknown bits
    left out), samples summarised (median and min SM clock, median power, every reason seen), and a
    sampler without NVML records nothing."""
    import torch
    sys.path.insert(0, str(REPO / "bench"))
    import bench_step
    assert bench_step.clock_limit_names(0x1) == []
    assert bench_step.clock_limit_names(0x4 | 0x40 | 0x1000) == ["SW power cap", "HW thermal"]
    got = bench_step.summarize_clocks([(1980, 650.0, 0x0), (1755, 700.0, 0x4), (1830, 690.5, 0x1)])
    assert got == {"sm_mhz_median": 1830, "sm_mhz_min": 1755, "power_w_median": 690.5,
                   "clock_limits": ["SW power cap"], "clock_samples": 3}
    assert bench_step.summarize_clocks([]) == {}
    no_nvml = bench_step.NVML(torch.device("cpu"))
    assert no_nvml.clocks() is None and bench_step.ClockSampler(no_nvml).start().stop() == {}
