"""bench/run_smoke_7b.sh (the paper's 7B smoke test): dry run (commands, parameter count, memory estimate),
the report on synthetic runs, a tiny real 1-process CPU run with a local tokenizer; distributed_rge --lstm_backend."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "run_smoke_7b.sh"
PAPER_PARAMS = 6_914_405_668          # "Model has 6914405668 parameters" in the paper's smoke-test output


def _env(**extra):
    env = dict(os.environ)
    for v in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OUT", "CUDA_VISIBLE_DEVICES",
              "PYTHON"):
        env.pop(v, None)
    env.update(extra)
    return env


def _sh(*args, timeout=120, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=_env(**env),
                          timeout=timeout, cwd=ROOT, check=False)


def _flag(cmd: str, name: str) -> str:
    m = re.search(rf"(?:^| ){re.escape(name)} (\S+)", cmd)
    assert m, (name, cmd)
    return m.group(1)


# ---------------------------------------------------------------------------------------------- dry run
@pytest.mark.parametrize("gpus,launcher", [(4, "torchrun"), (8, "launch")])
def test_dry_run_prints_both_launchers_and_the_paper_parameter_count(gpus, launcher):
    from models import ModelConfig, estimate_memory_bytes, param_count
    from tasks.tokenizers import PAPER_SPECIALS

    r = _sh("--dry-run", "--gpus", str(gpus), "--launcher", launcher, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    main = [l for l in lines if "distributed_rge.py --task" in l and not l.startswith("#")]
    other = [l[2:] for l in lines if l.startswith("# OMP_NUM_THREADS=") and "distributed_rge.py --task" in l]
    assert len(main) == 1 and len(other) == 1, r.stdout
    torchrun_cmd, launch_cmd = (main[0], other[0]) if launcher == "torchrun" else (other[0], main[0])
    assert re.search(rf"\btorchrun --standalone --nproc_per_node={gpus} distributed_rge\.py ", torchrun_cmd)
    assert re.search(rf"python3 -m torch\.distributed\.launch --nproc_per_node={gpus} --master_port=29501 "
                     rf"distributed_rge\.py ", launch_cmd)
    for c in (torchrun_cmd, launch_cmd):
        assert c.startswith("OMP_NUM_THREADS=")
        assert "--task lm --tokenizer hf --tokenizer_path " in c and "--model_type LSTM --mode test" in c
        assert _flag(c, "--tokenizer_path").endswith("/.cache/bpe_vocab50257")
        assert _flag(c, "--hidden_size") == "131072" and _flag(c, "--num_heads") == "256"
        assert _flag(c, "--input_size") == "100" and _flag(c, "--batch_size") == "1"
        assert _flag(c, "--min_seq_len") == "10" and _flag(c, "--meta_perturbations") == str(96 // gpus)
        assert _flag(c, "--learning_rate") == "0.01" and _flag(c, "--adam") == "false"
        assert _flag(c, "--lstm_backend") == "torch" and _flag(c, "--dtype") == "bfloat16"
        assert _flag(c, "--device") == "cuda" and _flag(c, "--max_iters") == "40"
        assert _flag(c, "--metrics_out").endswith("/metrics.jsonl")
        assert _flag(c, "--summary_out").endswith("/summary.rank{rank}.json")
    assert f"{gpus} GPU(s), {96 // gpus} probes per GPU = 96 per step" in r.stdout   # the paper's 96 per step
    assert "NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1" in r.stdout
    assert "python -m torch.distributed.launch --nproc_per_node=8 distributed_rge.py --tokenizer hf " \
           "--model_type LSTM" in r.stdout                                      # the paper's line, for reference

    est = json.loads(next(l for l in lines if l.startswith("# estimate: "))[len("# estimate: "):])
    vocab = 50257 + len(PAPER_SPECIALS)                    # GPT-2's ids + <bos>, <eos>, <pad>: the paper's 50,260
    cfg = ModelConfig(model_type="LSTM", vocab_size=vocab, input_size=100, hidden_size=131072, num_heads=256,
                      dtype="bfloat16", backend="torch")
    assert est["vocab_model"] == vocab == 50260
    assert est["params"] == param_count(cfg) == PAPER_PARAMS
    assert est["check_fits_estimate_bytes"] == estimate_memory_bytes(cfg, batch_size=1, time_chunk=64, zo=True,
                                                                     master_bytes=4)
    assert 38.5 < est["theta_bytes"] / 2**30 < 38.8                  # bf16 weights + fp32 master, 6 bytes/param
    assert "parameters (models.param_count): 6,914,405,668 (the paper's count)" in r.stdout
    assert "38.8 GiB" in r.stdout


def test_dry_run_rejects_bad_options():
    r = _sh("--dry-run", "--gpus", "4", "--launcher", "mpirun", timeout=30)
    assert r.returncode == 2 and "--launcher must be torchrun or launch" in r.stderr
    r = _sh("--dry-run", "--gpus", "4", "--hidden", "1000", "--heads", "3", timeout=30)
    assert r.returncode == 2 and "not divisible" in r.stderr


# ---------------------------------------------------------------------------------------------- --lstm_backend
def test_distributed_rge_lstm_backend_flag_reaches_the_model_config():
    import distributed_rge
    from models.lstm_backends import BACKENDS
    from train.distributed import DistConfig

    assert tuple(distributed_rge.LSTM_BACKENDS) == tuple(BACKENDS)
    p = distributed_rge.build_parser()
    args = p.parse_args(["--lstm_backend", "torch", "--hidden_size", "64"])
    cfg = distributed_rge.config_from_args(args)
    cfg = dataclasses.replace(cfg, device="cpu")               # what main() does: the backend survives
    cfg.validate()
    assert isinstance(cfg, DistConfig) and cfg.model_config(100).backend == "torch"
    assert cfg.model_config(100).hidden_size == 64 and dataclasses.asdict(cfg)["hidden_size"] == 64
    args = p.parse_args([])
    assert args.lstm_backend == "auto"
    plain = distributed_rge.config_from_args(args)
    assert type(plain) is DistConfig and plain.model_config(100).backend == "auto"
    with pytest.raises(SystemExit):
        p.parse_args(["--lstm_backend", "cudnn"])


# ---------------------------------------------------------------------------------------------- report
def _raw_run(d: Path, *, world=4, losses=(10.8, 4.2, 0.6, 0.05), checksums=None, summaries=True,
             status="ok", rc=0):
    d.mkdir(parents=True)
    (d / "env.json").write_text(json.dumps({"date": "2026-12-01T10:00:00", "gpu_info": [
        f"{i}, NVIDIA H200, 143771 MiB, 580.159.04" for i in range(world)], "torch": "2.11.0", "world": world,
        "launcher": "torchrun", "probes_per_gpu": 12, "git_commit": "abc", "git_dirty": False}))
    est = {"params": PAPER_PARAMS, "vocab_model": 50260, "check_fits_estimate_bytes": 41618576288,
           "predicted_peak_with_checksum_bytes": 146889293528}
    (d / "prepare.json").write_text(json.dumps({"estimate": est, "tokenizer": {"vocab_size": 50257, "learned": 50257,
                                                "placeholders": 0, "sources": ["x"]}, "tokenizer_s": 0.5}))
    (d / "run.json").write_text(json.dumps({"status": status, "rc": rc, "world": world, "wall_s": 200.0,
                                            "cmd": "torchrun ...", "checkpoint_bytes": 41486434008}))
    (d / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i, "train_loss": loss, "step_time_s": 5.0 if i == 0 else 2.0 + 0.1 * i,
                    "probe_eval_s": 0.8, "update_s": 1.2, "elapsed_s": 10.0 * (i + 1),
                    "peak_mem_bytes": 42 * 2**30}) + "\n" for i, loss in enumerate(losses)))
    if summaries:
        checksums = checksums or ["0x1.8p+14"] * world
        for r in range(world):
            (d / f"summary.rank{r}.json").write_text(json.dumps({
                "rank": r, "device": f"cuda:{r}", "device_name": "NVIDIA H200", "params": PAPER_PARAMS,
                "checksum_hex": checksums[r], "peak_mem_bytes": int(137.0 * 2**30), "s_per_step": 2.2,
                "finished": losses[-1] < 0.1, "steps_run": len(losses), "imports_s": 4.0, "comm_init_s": 1.0,
                "trainer_init_s": 70.0, "run_s": 100.0, "process_s": 180.0, "models_per_pass": 1}))
    (d / "nvsmi.csv").write_text("".join(f"{i}, {1000 + i}, 143771\n{i}, {141000 - i}, 143771\n" for i in range(world)))
    return d


def _report(raw, out, folder):
    """--report on a raw folder (or a _raw.tgz holding `folder`): writes <out>/smoke7b_<folder>.md/.json."""
    r = subprocess.run(["bash", str(SCRIPT), "--report", str(raw), "--out", str(out)], capture_output=True,
                       text=True, env=_env(), timeout=60, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return (json.loads((out / f"smoke7b_{folder}.json").read_text()),
            (out / f"smoke7b_{folder}.md").read_text())


def test_report_reached_equal_checksums_and_memory(tmp_path):
    res, md = _report(_raw_run(tmp_path / "run1"), tmp_path / "out", "run1")
    assert res["reached_target"] is True and res["steps_to_target"] == 3
    assert res["first_loss"] == 10.8 and res["final_loss"] == 0.05 and res["steps_recorded"] == 4
    assert res["s_per_step_median"] == pytest.approx(2.2) and res["first_step_s"] == 5.0
    assert res["checksums_equal"] is True and res["summaries"] == 4 and res["world"] == 4
    assert res["params"] == PAPER_PARAMS and res["probes_per_step"] == 48
    assert [x["peak_gib"] for x in res["ranks"]] == [137.0] * 4 and res["peak_gib_steps_rank0"] == 42.0
    assert res["nvidia_smi"]["3"]["max_used_mib"] == 140997.0
    assert res["final_check_and_checkpoint_s"] == pytest.approx(60.0)
    assert "| steps to train loss < 0.1 | 3 | 6 |" in md and "| parameters | 6,914,405,668 | 6,914,405,668 |" in md
    assert "| replica checksums equal | True (4 of 4 ranks reported) |" in md
    assert "| 3 | NVIDIA H200 (cuda:3) | 137.00 GiB | 137.7 of 140.4 GiB |" in md

    # the same from the tarball the device call brings back
    tgz = tmp_path / "smoke7b_x_raw.tgz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(tmp_path / "run1", arcname="run1")
    again, _ = _report(tgz, tmp_path / "out2", "run1")
    assert again["steps_to_target"] == 3 and again["checksums_equal"] is True


def test_report_not_reached_mismatch_and_cut_runs(tmp_path):
    res, md = _report(_raw_run(tmp_path / "a", losses=(10.8, 9.0, 7.5), checksums=["0x1p+0"] * 3 + ["0x1.1p+0"]),
                      tmp_path / "out", "a")
    assert res["reached_target"] is False and res["steps_to_target"] is None and res["final_loss"] == 7.5
    assert res["checksums_equal"] is False
    assert "not reached in 3 steps" in md
    res, md = _report(_raw_run(tmp_path / "b", summaries=False, status="timeout", rc=124), tmp_path / "out", "b")
    assert res["status"] == "timeout" and res["checksums_equal"] is None and res["ranks"] == []
    assert res["steps_to_target"] == 3 and res["peak_gib_steps_rank0"] == 42.0     # what rank 0 logged per step
    assert "no summaries" in md and "**timeout** (exit 124)" in md


# ---------------------------------------------------------------------------------------------- tiny real run
@pytest.mark.slow
def test_tiny_real_run_on_cpu_with_a_local_tokenizer(tmp_path):
    """One process (world 1), a 303-id local BPE, a tiny LSTM, CD-RGE + Adam until loss < 0.1: the whole
    pipeline (tokenizer build, token cache, trainer, report, tarball) without a GPU in ~15 s."""
    out = tmp_path / "out"
    r = _sh("--device", "cpu", "--dtype", "float32", "--vocab", "300", "--hidden", "32", "--heads", "4",
            "--input", "16", "--batch", "2", "--seq", "4", "--probes", "16", "--lr", "0.1", "--max-iters", "150",
            "--budget-s", "110", "--tokenizer-dir", str(tmp_path / "tok"), "--work", str(tmp_path / "work"),
            "--ckpt-dir", str(tmp_path / "ck"), "--out", str(out), "--", "--adam", "true", "--verbose", "false",
            timeout=150, TMPDIR=str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 4 and {Path(f).suffix for f in files} == {".md", ".json", ".log", ".tgz"}, files
    res = json.loads(next(out.glob("smoke7b_*.json")).read_text())
    assert res["status"] == "ok" and res["rc"] == 0 and res["world"] == 1
    assert res["vocab_model"] == 303 and res["tokenizer"]["vocab_size"] == 300
    assert res["params"] == res["params_predicted"]
    assert res["reached_target"] is True and res["final_loss"] < 0.1 and res["steps_to_target"] < 150
    assert res["checksums_equal"] is True and res["ranks"][0]["finished"] is True
    assert "--lstm_backend torch" in res["command"] and "--tokenizer hf --tokenizer_path" in res["command"]
    assert (tmp_path / "tok" / "tokenizer.json").is_file() and (tmp_path / "ck" / "latest.pt").is_file()
    with tarfile.open(next(out.glob("*_raw.tgz"))) as t:
        names = {Path(n).name for n in t.getnames()}
    assert {"metrics.jsonl", "summary.rank0.json", "run.json", "prepare.json", "env.json", "log.txt"} <= names
