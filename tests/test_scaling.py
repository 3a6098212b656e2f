"""bench/run_scaling.sh (dry run, and a tiny real run on gloo) and bench/scaling_report.py on synthetic runs."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "run_scaling.sh"
sys.path.insert(0, str(ROOT / "bench"))
import scaling_report


def _env():
    env = dict(os.environ)
    for v in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OUT", "CUDA_VISIBLE_DEVICES",
              "PYTHON"):
        env.pop(v, None)
    return env


def _dry(*args):
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, env=_env(),
                          timeout=60, cwd=ROOT, check=False)


def _flag(cmd: str, name: str) -> str:
    m = re.search(rf"{name} (\S+)", cmd)
    assert m, (name, cmd)
    return m.group(1)


# ---------------------------------------------------------------------------------------------- dry run
def test_dry_run_prints_one_torchrun_per_size_and_world():
    r = _dry("--gpus", "4")
    assert r.returncode == 0, r.stderr
    cmds = [line for line in r.stdout.splitlines() if "torchrun" in line]
    assert len(cmds) == 6, r.stdout                       # large and xlarge, each on 1, 2, 4 (8 > --gpus 4)
    worlds = [int(re.search(r"--nproc_per_node=(\d+) distributed_rge\.py", c).group(1)) for c in cmds]
    assert worlds == [1, 2, 4, 1, 2, 4]
    for c, hidden, heads in zip(cmds, ["66000"] * 3 + ["297500"] * 3, ["220"] * 3 + ["350"] * 3):
        assert "torchrun --standalone --nproc_per_node=" in c
        assert _flag(c, "--hidden_size") == hidden and _flag(c, "--num_heads") == heads
        assert _flag(c, "--meta_perturbations") == "12" and _flag(c, "--batch_size") == "1024"
        assert _flag(c, "--input_size") == "100" and _flag(c, "--min_seq_len") == "10"
        assert _flag(c, "--dtype") == "bfloat16" and _flag(c, "--max_iters") == "8"       # 3 warm-up + 5 timed
        assert "--task lm --tokenizer char" in c and _flag(c, "--mode") == "test"
        assert _flag(c, "--verbose") == "true" and _flag(c, "--sync_check_iters") == "1000000"
        assert _flag(c, "--metrics_out").endswith("/metrics.jsonl")
        assert _flag(c, "--summary_out").endswith("/summary.rank{rank}.json")
    assert "NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1" in r.stdout
    assert "bench/scaling_report.py" in r.stdout


def test_dry_run_worlds_iters_and_errors():
    r = _dry("--gpus", "2", "--sizes", "xlarge,large", "--worlds", "4,2,1", "--warmup", "3,xlarge=1",
             "--iters", "5,xlarge=2")
    assert r.returncode == 0, r.stderr
    cmds = [line for line in r.stdout.splitlines() if "torchrun" in line]
    assert [int(re.search(r"nproc_per_node=(\d+)", c).group(1)) for c in cmds] == [2, 1, 2, 1]  # as given, 4 > 2 dropped
    assert [_flag(c, "--max_iters") for c in cmds] == ["3", "3", "8", "8"]
    assert [_flag(c, "--hidden_size") for c in cmds] == ["297500", "297500", "66000", "66000"]
    for bad, msg in ((["--sizes", "huge"], "unknown size huge"), (["--iters", "0"], "--iters 0"),
                     (["--worlds", "8"], "no world size"), (["--bogus"], "unknown argument")):
        r = _dry("--gpus", "4", *bad)
        assert r.returncode == 2 and msg in r.stderr, (bad, r.stderr)


# ---------------------------------------------------------------------------------------------- report
def _write_run(root: Path, size, world, times, *, warmup=3, checksums=None, status="ok", rc=0, cut=False,
               per_gpu=12, peak=4 * 2 ** 30):
    d = root / f"{size}_w{world}"
    d.mkdir(parents=True)
    run = {"name": d.name, "size": size, "world": world, "warmup": warmup, "iters": len(times) - warmup,
           "probes_per_gpu": per_gpu, "params": 112606100, "status": status, "rc": rc, "wall_s": 20.0,
           "cmd": f"torchrun --standalone --nproc_per_node={world} distributed_rge.py --hidden_size 66000"}
    (d / "run.json").write_text(json.dumps(run))
    lines, el = [], 0.0
    for i, t in enumerate(times):
        el += t
        b = 0 if world == 1 else per_gpu * 8 * world
        lines.append(json.dumps({"step": i, "step_time_s": t, "elapsed_s": el, "n_total": per_gpu * world,
                                 "world_size": world, "bytes_communicated": b, "bytes_sent": per_gpu * 8 * (world > 1),
                                 "peak_mem_bytes": peak, "probe_eval_s": 0.9 * t, "all_gather_s": 1e-4,
                                 "update_s": 0.05 * t, "batch_s": 1e-3}))
    text = "\n".join(lines) + "\n"
    if cut:
        text += '{"step": 99, "step_ti'            # a line cut off by a killed run
    (d / "metrics.jsonl").write_text(text)
    for rk, c in enumerate(checksums if checksums is not None else [1.25] * world):
        (d / f"summary.rank{rk}.json").write_text(json.dumps(
            {"rank": rk, "checksum": c, "checksum_hex": float(c).hex(), "params": 112606100,
             "peak_mem_bytes": peak + 2 ** 30, "run_s": el + 2.0, "process_s": el + 10.0, "imports_s": 3.0,
             "comm_init_s": 1.0, "trainer_init_s": 4.0, "models_per_pass": 1, "device_name": "NVIDIA H200"}))
    return d


def _synthetic(root: Path) -> Path:
    raw = root / "zo_scaling_x"
    raw.mkdir()
    (raw / "env.json").write_text(json.dumps({
        "date": "2026-11-28T12:00:00", "gpu_info": [f"{i}, NVIDIA H200, 143771 MiB, 580.159.04" for i in range(4)],
        "torch": "2.11.0", "git_commit": "abc", "git_dirty": False, "script": "bench/run_scaling.sh --gpus 4",
        "task": "lm", "batch": 1024, "min_seq_len": 10, "dtype": "bfloat16", "probes_per_gpu": 12, "cpus": 64,
        "env": {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}}))
    warm = [9.0, 1.5, 1.2]                                   # slower warm-up steps, excluded from the median
    _write_run(raw, "large", 1, warm + [1.0, 1.02, 0.98, 1.0, 5.0])          # median of timed: 1.0
    _write_run(raw, "large", 2, warm + [1.1, 1.1, 1.1, 1.2, 1.0])            # 1.1
    _write_run(raw, "large", 4, warm + [1.25, 1.3, 1.2, 1.25, 1.25], checksums=[1.25, 1.25, 1.25 + 2 ** -40, 1.25])
    _write_run(raw, "xlarge", 1, [30.0, 4.0, 4.0], warmup=1)
    _write_run(raw, "xlarge", 2, [30.0, 4.1], warmup=1, checksums=[], status="timeout", rc=124, cut=True)
    d = raw / "xlarge_w4"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"size": "xlarge", "world": 4, "warmup": 1, "iters": 2,
                                            "probes_per_gpu": 12, "status": "skipped", "rc": -1,
                                            "reason": "predicted 60 s, 20 s of the 140 s budget left"}))
    return raw


def test_report_efficiency_bytes_and_checksums(tmp_path):
    raw = _synthetic(tmp_path)
    assert scaling_report.main([str(raw), "--out", str(tmp_path / "rep"), "--quiet"]) == 0
    rep = json.loads((tmp_path / "rep.json").read_text())
    rows = {(r["size"], r["world"]): r for r in rep["rows"]}
    assert [(r["size"], r["world"]) for r in rep["rows"]] == [("large", 1), ("large", 2), ("large", 4),
                                                               ("xlarge", 1), ("xlarge", 2), ("xlarge", 4)]
    l1, l2, l4 = rows["large", 1], rows["large", 2], rows["large", 4]
    assert l1["s_per_step"] == pytest.approx(1.0) and l2["s_per_step"] == pytest.approx(1.1)
    assert l4["s_per_step"] == pytest.approx(1.25)
    # speed-up N*T1/TN (the "efficiency"), efficiency T1/TN, throughput probes/s
    assert l1["speedup"] == pytest.approx(1.0) and l1["efficiency"] == pytest.approx(1.0)
    assert l2["speedup"] == pytest.approx(2 / 1.1) and l2["efficiency"] == pytest.approx(1 / 1.1)
    assert l4["speedup"] == pytest.approx(3.2) and l4["efficiency"] == pytest.approx(0.8)
    assert l4["probes_total"] == 48 and l4["probes_per_s"] == pytest.approx(48 / 1.25)
    assert l4["speedup"] == pytest.approx(l4["probes_per_s"] / l1["probes_per_s"])
    assert l1["bytes_per_step"] == 0 and l4["bytes_per_step"] == 12 * 8 * 4 and l4["bytes_sent_per_step"] == 96
    assert l1["checksums_equal"] is True and l2["checksums_equal"] is True
    assert l4["checksums_equal"] is False and l4["checksums"].startswith("NO")
    assert l1["peak_gib_steps_rank0"] == pytest.approx(4.0)
    assert l1["final_check_and_checkpoint_s"] == pytest.approx(2.0)
    x1, x2, x4 = rows["xlarge", 1], rows["xlarge", 2], rows["xlarge", 4]
    assert x1["s_per_step"] == pytest.approx(4.0) and x1["steps_timed"] == 2
    assert x2["status"] == "timeout" and x2["steps_recorded"] == 2 and x2["steps_timed"] == 1
    assert x2["speedup"] == pytest.approx(2 * 4.0 / 4.1)
    assert x2["checksums_equal"] is None and x2["checksums"].startswith("not confirmed (0 of 2")
    assert x4["status"] == "skipped" and x4["s_per_step"] is None and x4["speedup"] is None
    md = (tmp_path / "rep.md").read_text()
    assert "N·T₁/T_N" in md and "T₁/T_N" in md and "ideal N" in md        # the definitions are stated
    assert "4 x NVIDIA H200" in md and "2026-11-28" in md
    assert "| large | 112,606,100 | 4 | 48 | 1.250 s | 38.4 | 3.200x | 0.800 | 384 (sent 96) | NO" in md
    assert "replica checksums differ** in: large on 4 GPU(s)" in md
    assert "skipped for the time budget: xlarge on 4 GPU(s)" in md
    assert "torchrun --standalone --nproc_per_node=4 distributed_rge.py" in md
    # the script's tarball gives the same report
    tgz = tmp_path / "raw.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(raw, arcname=raw.name)
    assert scaling_report.main([str(tgz), "--out", str(tmp_path / "rep2"), "--quiet"]) == 0
    assert json.loads((tmp_path / "rep2.json").read_text())["rows"] == rep["rows"]


def test_report_without_runs_is_an_error(tmp_path, capsys):
    assert scaling_report.main([str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no run.json" in capsys.readouterr().err


def test_summary_path():
    import distributed_rge
    assert distributed_rge.summary_path("/d/summary.rank{rank}.json", 3) == "/d/summary.rank3.json"
    assert distributed_rge.summary_path("/d/s.json", 1) == "/d/s.rank1.json"
    assert distributed_rge.summary_path("/d/s", 0) == "/d/s.rank0.json"


# ---------------------------------------------------------------------------------------------- real run
@pytest.mark.slow
def test_tiny_real_run_on_gloo(tmp_path):
    """The whole pipeline on CPU: 1 and 2 gloo processes, a tiny model (about 15 s on 2 cores)."""
    env = _env()
    env.update(TMPDIR=str(tmp_path), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--sizes", "tiny", "--task", "copy", "--batch", "4",
                        "--probes", "2", "--gpus", "2", "--warmup", "1", "--iters", "2", "--dtype", "float32",
                        "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, env=env, timeout=120, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(os.listdir(tmp_path / "out"))
    assert len(files) == 4 and [f for f in files if f.endswith(".md")], files
    rep = json.loads((tmp_path / "out" / next(f for f in files if f.endswith(".json"))).read_text())
    rows = {r["world"]: r for r in rep["rows"]}
    assert set(rows) == {1, 2} and all(r["status"] == "ok" for r in rows.values())
    assert rows[2]["checksums_equal"] is True and len(set(rows[2]["checksum_values"])) == 1
    assert len(rows[2]["checksum_values"]) == 2
    assert rows[2]["probes_total"] == 4 and rows[2]["bytes_per_step"] == 4 * 2 * 4   # [4, 2] fp32 table
    assert rows[2]["steps_timed"] == 2 and rows[2]["speedup"] is not None
    ckpt = rep["env"]["checkpoint_dir"]
    assert ckpt and not os.path.exists(ckpt)                   # the trainer's checkpoints are removed
    assert sorted(p.name for p in (tmp_path / "work" / "tiny_w2").iterdir()) == [
        "log.txt", "metrics.jsonl", "run.json", "summary.rank0.json", "summary.rank1.json"]
