"""The series harness: CLI parsing, bad input, learning on CPU, metrics, the --unittest table."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import rge_series_experiments as cli
from train.series import SeriesConfig, run_series

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--device", "cpu", "--hidden_size", "16", "--num_heads", "2", "--input_size", "8",
         "--micro_batch_size", "4", "--seq_length", "3", "--verbose", "false"]


def run_cli(args, capsys):
    rc = cli.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("args, needle", [
    (["--task", "nope"], "unknown task"),
    (["--hidden_size", "30", "--num_heads", "4"], "not divisible"),
    (["--task", "lm_char", "--text_path", "/nonexistent/file.txt"], "does not exist"),
    (["--antithetic_sampling", "true"], "--fd_rge true"),
    (["--micro_batch_size", "4", "--macro_batch_size", "6"], "not a multiple"),
])
def test_bad_values_give_clear_errors(args, needle, capsys):
    rc, out, err = run_cli(SMALL + ["--max_iterations", "1"] + args, capsys)
    assert rc == 2
    assert needle in err
    assert "Traceback" not in err


@pytest.mark.parametrize("args", [["--hidden_size", "-3"], ["--num_perturbations", "0"],
                                  ["--learning_rate_and_epsilon", "0"], ["--learning_rate_and_epsilon", "-1"],
                                  ["--use_bptt", "maybe"], ["--use_adaptive_step", "true"]])
def test_argparse_rejects(args, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(SMALL + args)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_unittest_alias_and_string_booleans():
    p = cli.build_parser()
    assert p.parse_args(["--unittest"]).unit_test is True
    assert p.parse_args(["--unit_test", "true"]).unit_test is True
    assert p.parse_args(["--use_bptt", "false"]).use_bptt is False
    assert p.parse_args(["--use_bptt", "True"]).use_bptt is True
    assert p.parse_args(["--distribution", "rad"]).distribution == "rademacher"


def _cfg(**kw):
    base = dict(device="cpu", hidden_size=16, num_heads=2, input_size=8, micro_batch_size=4, macro_batch_size=4,
                seq_length=3, max_iterations=30, learning_rate=0.3, num_perturbations=16, verbose=False,
                overfit_to_one_batch=True, log_interval=5)
    base.update(kw)
    return SeriesConfig(**base)


def test_cd_rge_loss_falls(tmp_path):
    path = tmp_path / "m.jsonl"
    s = run_series(_cfg(metrics_out=str(path)), out=open(os.devnull, "w"))
    assert s["last_loss"] < s["first_loss"] - 0.05
    recs = [json.loads(l) for l in path.read_text().splitlines()]
    assert recs[0]["step"] == 0 and recs[-1]["step"] == 29
    for k in ("train_loss", "lr", "step_time_s", "peak_mem_bytes", "elapsed_s"):
        assert k in recs[0]


def test_stacked_probes_equal_one_at_a_time():
    a = run_series(_cfg(max_iterations=4, models_per_pass=1), out=open(os.devnull, "w"))
    b = run_series(_cfg(max_iterations=4, models_per_pass=32), out=open(os.devnull, "w"))
    c = run_series(_cfg(max_iterations=4, models_per_pass=6), out=open(os.devnull, "w"))
    assert a["last_loss"] == pytest.approx(b["last_loss"], rel=1e-6, abs=1e-6)
    assert a["last_loss"] == pytest.approx(c["last_loss"], rel=1e-6, abs=1e-6)


def test_bptt_loss_falls():
    s = run_series(_cfg(use_bptt=True, learning_rate=1.0, max_iterations=30), out=open(os.devnull, "w"))
    assert s["last_loss"] < s["first_loss"] - 0.2


def test_fd_rge_and_adam_run():
    s = run_series(_cfg(fd_rge=True, max_iterations=10, learning_rate=0.1), out=open(os.devnull, "w"))
    assert s["steps"] == 10 and s["last_loss"] < s["first_loss"]
    s = run_series(_cfg(use_adam=True, learning_rate=0.02, max_iterations=20), out=open(os.devnull, "w"))
    assert s["last_loss"] < s["first_loss"]


def test_dnc_zo_runs_and_learns():
    s = run_series(_cfg(model_type="DNC", hidden_size=16, num_heads=1, memory_size=8, head_size=8,
                        max_iterations=15, num_perturbations=8, use_adam=True, learning_rate=0.02),
                   out=open(os.devnull, "w"))
    assert s["last_loss"] < s["first_loss"]


def test_validation_and_samples_printed(tmp_path):
    import io
    buf = io.StringIO()
    run_series(_cfg(overfit_to_one_batch=False, max_iterations=3, log_interval=1, verbose=True, val_batch_size=4,
                    metrics_out=str(tmp_path / "m.jsonl")), out=buf)
    text = buf.getvalue()
    assert "Iter=0, train_loss=" in text and "val_loss=" in text and "pred:" in text
    rec = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    assert 0.0 <= rec["val_accuracy"] <= 1.0


def test_save_model_writes_self_describing_checkpoint(tmp_path):
    from train.checkpoint import load_checkpoint
    run_series(_cfg(max_iterations=2, save_model=True, checkpoint_dir=str(tmp_path)), out=open(os.devnull, "w"))
    ck = load_checkpoint(str(tmp_path))
    assert ck["model_args"]["hidden_size"] == 16 and ck["step"] == 2 and "master" in ck["optimizer_state"]


def test_short_unittest_table(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "ut"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "rge_series_experiments.py"), "--unittest",
                           "--device", "cpu", "--unittest_sizes", "tiny", "--unittest_optimizers", "bptt,cd4",
                           "--unittest_iters", "3", "--unittest_batch_size", "8", "--unittest_out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = json.loads((out / "unittest_table.json").read_text())
    assert [r["optimizer"] for r in table["rows"]] == ["BPTT-SGD", "CD-RGE@4"]
    assert all(r["status"] == "ok" and r["s_per_step"] > 0 and r["peak_mem_bytes"] > 0 for r in table["rows"])
    assert "| tiny | 150,740 | CD-RGE@4 |" in (out / "unittest_table.md").read_text()


def test_cuda_graphs_refused_on_cpu():
    """--cuda_graphs needs CUDA: refused before anything runs, and the wrapper refuses CPU tensors."""
    import pytest
    import torch
    from tasks import Batch
    from train.graphs import GraphedStackedLoss
    from train.series import SeriesConfig
    with pytest.raises(ValueError, match="cuda_graphs"):
        SeriesConfig(device="cpu", cuda_graphs=True).validate()
    with pytest.raises(ValueError, match="cuda_graphs loss"):
        SeriesConfig(device="cpu", cuda_graphs="loss").validate()
    SeriesConfig(device="cpu").validate()                       # auto (the default) is off on CPU
    SeriesConfig(device="cpu", cuda_graphs="false").validate()
    b = Batch(inputs=torch.zeros(2, 3, dtype=torch.long), targets=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="CUDA"):
        GraphedStackedLoss(lambda P, bt: torch.zeros(1))({}, b)
