"""Tests for the one-command reproductions (scripts/reproduce_figure1.sh, reproduce_table2.sh) and
the report generator (scripts/report.py).

The scripts are checked through --dry-run (the grid read by sourcing each script), plus one
three-step end-to-end run per script; report.py is checked on small hand-made JSON lines whose
expected numbers are worked out in the comments.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
BASH = shutil.which("bash") or "/bin/bash"
FIG1 = "reproduce_figure1.sh"
TAB2 = "reproduce_table2.sh"
HARNESS_LINE = "python rge_series_experiments.py "


# ------------------------------------------------------------------ helpers --

def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZORNN_")}
    env.update(extra)
    return env


def run_sh(script: str, *args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(SCRIPTS / script), *args], check=False, env=env or _env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def dry_run(script: str, *args: str) -> tuple[list[str], list[str]]:
    """(harness command lines, report command lines) of a dry run."""
    res = run_sh(script, "--dry-run", *args)
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stdout.splitlines() if l.strip()]
    for line in lines:
        assert line.startswith(("#", HARNESS_LINE, "python scripts/report.py ")), line
    return ([l for l in lines if l.startswith(HARNESS_LINE)],
            [l for l in lines if l.startswith("python scripts/report.py ")])


def grid(script: str, scale: str, sizes: str = "") -> dict:
    """The grid variables of a script at a scale, read by sourcing it."""
    names = ["CD_PROBES", "FD_PROBES", "CD_ADAM_PROBES", "ZO_LRS", "ZO_ADAM_LRS", "BPTT_SGD_LRS",
             "BPTT_ADAM_LRS", "TASKS", "SIZES"]
    body = [f"source {SCRIPTS / script}", f"SIZES_OVERRIDE={sizes!r}", f"define_grid {scale}"]
    body += [f'if declare -p {n} >/dev/null 2>&1; then echo "{n}=${{{n}[*]+${{{n}[*]}}}}"; fi' for n in names]
    body += ['echo "MAX_ITERS=$MAX_ITERS"']
    out = subprocess.run([BASH, "-c", "\n".join(body)], env=_env(), capture_output=True, text=True,
                         check=True).stdout
    return {k: v.split() for k, _, v in (l.partition("=") for l in out.splitlines())}


def per_point(g: dict) -> int:
    return ((len(g["CD_PROBES"]) + len(g["FD_PROBES"])) * len(g["ZO_LRS"])
            + len(g["CD_ADAM_PROBES"]) * len(g["ZO_ADAM_LRS"])
            + len(g["BPTT_SGD_LRS"]) + len(g["BPTT_ADAM_LRS"]))


def flag(cmd: str, name: str) -> str | None:
    m = re.search(rf"(?:^|\s){re.escape(name)} (\S+)", cmd)
    return m.group(1) if m else None


def variant(cmd: str) -> str:
    if flag(cmd, "--use_bptt") == "true":
        return "bptt_adam" if flag(cmd, "--use_adam") == "true" else "bptt_sgd"
    kind = "fd" if flag(cmd, "--fd_rge") == "true" else "cd"
    return f"{kind}{flag(cmd, '--num_perturbations')}" + ("adam" if flag(cmd, "--use_adam") == "true" else "")


def _load_report():
    spec = importlib.util.spec_from_file_location("zornn_report", SCRIPTS / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


report = _load_report()


# ------------------------------------------------------------- figure 1 dry --

@pytest.mark.parametrize("scale", ["cpu", "paper"])
def test_figure1_dry_run_grid(scale):
    g = grid(FIG1, scale)
    cmds, reports = dry_run(FIG1, "--scale", scale)
    assert len(cmds) == per_point(g)
    assert len(reports) == 1 and f"--figure1 results/figure1/{scale}" in reports[0]
    assert "--tag " + scale in reports[0] and "--report results/REPORT.md" in reports[0]
    by_variant: dict[str, set] = {}
    for c in cmds:
        assert flag(c, "--task") == "copy" and flag(c, "--model_type") == "DNC"
        assert flag(c, "--overfit_to_one_batch_flag") == "true"
        assert flag(c, "--num_heads") == "1"
        name = Path(flag(c, "--metrics_out")).name
        assert flag(c, "--metrics_out") == f"results/figure1/{scale}/{name}" and name.endswith(".jsonl")
        assert flag(c, "--summary_out") == f"results/figure1/{scale}/{name[:-6]}.summary.json"
        assert f"lr{flag(c, '--learning_rate_and_epsilon')}" in name
        by_variant.setdefault(variant(c), set()).add(flag(c, "--learning_rate_and_epsilon"))
    expected = {f"cd{p}": set(g["ZO_LRS"]) for p in g["CD_PROBES"]}
    expected.update({f"fd{p}": set(g["ZO_LRS"]) for p in g["FD_PROBES"]})
    expected.update({f"cd{p}adam": set(g["ZO_ADAM_LRS"]) for p in g["CD_ADAM_PROBES"]})
    expected.update({"bptt_sgd": set(g["BPTT_SGD_LRS"]), "bptt_adam": set(g["BPTT_ADAM_LRS"])})
    assert by_variant == expected


def test_figure1_paper_scale_is_the_papers_setting():
    cmds, _ = dry_run(FIG1, "--scale", "paper")
    assert len(cmds) == 5 * 4   # CD-RGE@512, CD-RGE@96, FD-RGE@96, BPTT-SGD, BPTT-Adam x 4 lrs
    for c in cmds:
        for f, v in [("--device", "cuda"), ("--hidden_size", "1024"), ("--memory_size", "1024"),
                     ("--head_size", "1024"), ("--input_size", "32"), ("--seq_length", "100"),
                     ("--micro_batch_size", "1"), ("--macro_batch_size", "1")]:
            assert flag(c, f) == v, (f, c)
        assert "--threads" not in c
    assert {variant(c) for c in cmds} == {"cd512", "cd96", "fd96", "bptt_sgd", "bptt_adam"}
    zo = {flag(c, "--learning_rate_and_epsilon") for c in cmds if "bptt" not in variant(c)}
    assert zo == {"0.1", "0.01", "0.001", "0.0001"}


def test_figure1_cpu_scale_is_small():
    cmds, _ = dry_run(FIG1)   # --scale cpu is the default
    assert cmds
    for c in cmds:
        assert flag(c, "--device") == "cpu" and flag(c, "--threads") == "1"
        assert int(flag(c, "--hidden_size")) <= 32 and int(flag(c, "--max_iterations")) <= 500


def test_options_out_only_max_iters_device(tmp_path):
    out = tmp_path / "o"
    cmds, reports = dry_run(FIG1, "--out", str(out), "--only", "bptt", "--max-iters", "7",
                            "--device", "cuda:1", "--report", str(tmp_path / "R.md"))
    g = grid(FIG1, "cpu")
    assert len(cmds) == len(g["BPTT_SGD_LRS"]) + len(g["BPTT_ADAM_LRS"])
    for c in cmds:
        assert flag(c, "--metrics_out").startswith(str(out) + "/")
        assert flag(c, "--max_iterations") == "7" and flag(c, "--device") == "cuda:1"
    assert f"--figure1 {out}" in reports[0] and f"--report {tmp_path / 'R.md'}" in reports[0]
    cmds, reports = dry_run(FIG1, "--no-report", "--only", "cdrge32_lr0.3", "--only", "fdrge")
    assert reports == [] and {variant(c) for c in cmds} == {"cd32", "fd8"}


@pytest.mark.parametrize("script", [FIG1, TAB2])
@pytest.mark.parametrize("args, message", [
    (["--scale", "huge"], "--scale must be cpu or paper"),
    (["--jobs", "0"], "--jobs"),
    (["--max-iters", "x"], "--max-iters"),
    (["--bogus"], "unknown option"),
    (["--out"], "needs a value"),
])
def test_bad_arguments_exit_2(script, args, message):
    res = run_sh(script, "--dry-run", *args)
    assert res.returncode == 2
    assert message in res.stderr and "Usage" in res.stderr


@pytest.mark.parametrize("script", [FIG1, TAB2])
def test_help_and_empty_filter(script):
    res = run_sh(script, "--help")
    assert res.returncode == 0 and "Usage" in res.stdout and "--scale cpu|paper" in res.stdout
    res = run_sh(script, "--dry-run", "--only", "no_such_run")
    assert res.returncode == 1 and "no run name contains" in res.stderr


def test_figure1_rejects_sizes():
    res = run_sh(FIG1, "--dry-run", "--sizes", "tiny")
    assert res.returncode == 2 and "reproduce_table2.sh only" in res.stderr


# --------------------------------------------------------------- table 2 dry --

@pytest.mark.parametrize("scale, sizes", [("cpu", ""), ("paper", ""), ("paper", "tiny,small,medium")])
def test_table2_dry_run_grid(scale, sizes):
    g = grid(TAB2, scale, sizes)
    extra = ["--sizes", sizes] if sizes else []
    cmds, reports = dry_run(TAB2, "--scale", scale, *extra)
    assert len(cmds) == len(g["TASKS"]) * len(g["SIZES"]) * per_point(g)
    assert len(reports) == 1 and f"--table2 results/table2/{scale}" in reports[0]
    assert {flag(c, "--task") for c in cmds} == set(g["TASKS"])
    for c in cmds:
        assert flag(c, "--model_type") == "LSTM"
        assert flag(c, "--overfit_to_one_batch_flag") == "false"
        assert flag(c, "--val_interval") == flag(c, "--log_interval")
        assert int(flag(c, "--head_size")) * int(flag(c, "--num_heads")) == int(flag(c, "--hidden_size"))
        assert flag(c, "--metrics_out").startswith(f"results/table2/{scale}/t2_{scale}_{flag(c, '--task')}_")


def test_table2_paper_scale_is_the_papers_setting():
    cmds, _ = dry_run(TAB2, "--scale", "paper")
    assert len(cmds) == 4 * 2 * (2 * 4 + 4 + 4)   # tasks x sizes x (CD-RGE@96,512 x 4 lrs + BPTT-SGD/Adam x 4)
    assert {flag(c, "--task") for c in cmds} == {"copy", "sort", "reverse", "add"}
    assert {flag(c, "--hidden_size") for c in cmds} == {"240", "1600"}
    assert {variant(c) for c in cmds} == {"cd96", "cd512", "bptt_sgd", "bptt_adam"}
    for c in cmds:
        assert flag(c, "--seq_length") == "20" and flag(c, "--device") == "cuda"
        assert flag(c, "--input_size") == "100"
    cmds, _ = dry_run(TAB2, "--scale", "paper", "--sizes", "medium", "--only", "_add_")
    assert {flag(c, "--hidden_size") for c in cmds} == {"9600"} and {flag(c, "--task") for c in cmds} == {"add"}


def test_table2_cpu_scale_compares_cdrge32_and_bptt_on_copy_and_reverse():
    cmds, _ = dry_run(TAB2)
    assert {flag(c, "--task") for c in cmds} == {"copy", "reverse"}
    kinds = {variant(c) for c in cmds}
    assert "cd32" in kinds and {"bptt_sgd", "bptt_adam"} & kinds
    for c in cmds:
        assert flag(c, "--device") == "cpu" and flag(c, "--threads") == "1"


# ------------------------------------------------------------ end to end --

@pytest.mark.parametrize("script, only, kind", [
    (FIG1, "bptt_adam_lr0.01", "figure1"),
    (TAB2, "copy_mini_bptt_adam_lr0.01", "table2"),
])
def test_end_to_end_three_steps_then_skip(script, only, kind, tmp_path):
    out, rep = tmp_path / "out", tmp_path / "rep" / "REPORT.md"
    rep.parent.mkdir()
    rep.write_text("# Mine\n\nhand-written intro\n")
    args = ["--only", only, "--max-iters", "3", "--out", str(out), "--logs", str(tmp_path / "logs"),
            "--report", str(rep), "--no-report"]
    env = _env(ZORNN_PYTHON=sys.executable)
    res = run_sh(script, *args, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    names = [p.name for p in out.glob("*.jsonl")]
    assert len(names) == 1 and only in names[0]
    records = [json.loads(l) for l in (out / names[0]).read_text().splitlines()]
    assert records[-1]["step"] == 2 and records[-1]["optimizer"] == "BPTT-Adam"
    assert (out / names[0].replace(".jsonl", ".summary.json")).exists()
    info = json.loads((out / "run_info.json").read_text())
    assert info["runs_executed"] == 1 and info["runs_failed"] == 0 and info["scale"] == "cpu"
    assert len(info["invocations"]) == 1 and info["invocations"][0]["command"].startswith(f"scripts/{script} ")
    assert (tmp_path / "logs" / names[0].replace(".jsonl", ".log")).exists()
    # the report from the saved lines, no rerun
    assert report.main([f"--{kind}", str(out), "--tag", "cpu", "--report", str(rep), "--no-plots"]) == 0
    text = rep.read_text()
    assert text.startswith("# Mine\n\nhand-written intro\n") and f"BEGIN GENERATED: {kind}-cpu" in text
    assert "Produced by `scripts/" in text
    # a second invocation skips the finished run and leaves run_info.json alone
    res = run_sh(script, *args, env=env)
    assert res.returncode == 0 and "skip" in res.stdout and "1 skipped" in res.stdout
    assert json.loads((out / "run_info.json").read_text()) == info
    # --force reruns it; the invocation is appended
    res = run_sh(script, *args, "--force", env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    info2 = json.loads((out / "run_info.json").read_text())
    assert len(info2["invocations"]) == 2 and info2["wall_s_total"] >= info["wall_s_total"]


# ----------------------------------------------------------- report data --

def write_jsonl(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def fig1_dir(tmp_path):
    d = tmp_path / "figure1" / "cpu"
    d.mkdir(parents=True)
    base = {"task": "copy", "model_type": "DNC", "params": 3481, "context_len": 14}

    def run(name, opt, lr, losses, dt):
        write_jsonl(d / f"{name}.jsonl",
                    [dict(base, step=10 * i, train_loss=l, lr=lr, optimizer=opt, step_time_s=dt,
                          elapsed_s=round(10 * i * dt + dt, 6)) for i, l in enumerate(losses)])
        (d / f"{name}.summary.json").write_text("{}")

    # CD-RGE@96, lr 0.1: below 0.1 first at the record of step 30 (0.1 itself at step 20 is not below)
    run("f_cd96_lr0.1", "CD-RGE@96", 0.1, [3.0, 1.0, 0.1, 0.09, 0.05], 0.5)
    # lr 0.01 never gets there; lr 0.3 gets there later (step 40): 0.1 wins
    run("f_cd96_lr0.01", "CD-RGE@96", 0.01, [3.0, 2.5, 2.0, 1.5, 1.2], 0.5)
    run("f_cd96_lr0.3", "CD-RGE@96", 0.3, [3.0, 2.0, 1.0, 0.5, 0.08], 0.5)
    # BPTT-SGD reaches 0.1 at step 60 (0.01 s/step)
    run("f_sgd_lr0.01", "BPTT-SGD", 0.01, [3.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.07], 0.01)
    # FD-RGE@96 never reaches: best lr by lowest loss (0.6 at lr 0.001 beats 0.9 at lr 0.01)
    run("f_fd96_lr0.01", "FD-RGE@96", 0.01, [3.0, 0.9, 1.0], 0.25)
    run("f_fd96_lr0.001", "FD-RGE@96", 0.001, [3.0, 2.0, 0.6], 0.25)
    (d / "f_fd96_lr0.01.failed").write_text("exit status 1\n")
    return d


def test_figure1_best_rows(fig1_dir):
    runs = report.load([fig1_dir])
    best = {r["optimizer"]: r for r in report.figure1_best(runs, 0.1)}
    assert [r["optimizer"] for r in report.figure1_best(runs, 0.1)] == ["CD-RGE@96", "FD-RGE@96", "BPTT-SGD"]
    cd = best["CD-RGE@96"]
    assert cd["lr"] == 0.1 and cd["steps_to_threshold"] == 30
    assert cd["seconds_to_threshold"] == pytest.approx(15.5)     # 30 * 0.5 + 0.5
    assert cd["first_loss"] == 3.0 and cd["best_loss"] == 0.05 and cd["last_step"] == 40
    assert cd["lrs_tried"] == [0.3, 0.1, 0.01] and cd["status"] == "ok"
    assert best["BPTT-SGD"]["steps_to_threshold"] == 60
    fd = best["FD-RGE@96"]
    assert fd["lr"] == 0.001 and fd["steps_to_threshold"] is None and fd["best_loss"] == 0.6
    assert report.figure1_run_row(runs["f_fd96_lr0.01"], 0.1)["status"] == "failed"


def test_figure1_section_markdown_and_plots(fig1_dir, tmp_path):
    rep = tmp_path / "out" / "REPORT.md"
    assert report.main(["--figure1", str(fig1_dir), "--report", str(rep)]) == 0
    text = rep.read_text()
    assert "BEGIN GENERATED: figure1-cpu" in text and "END GENERATED: figure1-cpu" in text
    assert "NOT the paper's scale" in text
    assert "| CD-RGE@96 | 0.1 | 0.3, 0.1, 0.01 | 3 | 0.05 | 30 | 15.5 s | 0.5 s | 41 | ok |" in text
    assert "| BPTT-SGD | 0.01 | 0.01 | 3 | 0.07 | 60 |" in text
    assert "best zeroth-order CD-RGE@96 30, best BPTT BPTT-SGD 60 (BPTT/ZO step ratio 2.00)" in text
    assert "`f_fd96_lr0.01` | FD-RGE@96 | 0.01 |" in text and "| failed |" in text
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib not installed")
    for name in ["figure1_cpu_loss_vs_step.png", "figure1_cpu_loss_vs_time.png"]:
        png = rep.parent / "figures" / name
        assert png.read_bytes().startswith(b"\x89PNG")
        assert f"](figures/{name})" in text


@pytest.fixture
def table2_dir(tmp_path):
    d = tmp_path / "table2" / "cpu"
    d.mkdir(parents=True)

    def run(name, task, opt, lr, vals, params=5415):
        # vals: (step, elapsed_s, token acc, seq acc)
        write_jsonl(d / f"{name}.jsonl",
                    [{"step": s, "elapsed_s": t, "train_loss": 2.0 - a, "val_loss": 3.0 - a,
                      "val_accuracy": a, "val_seq_accuracy": q, "lr": lr, "optimizer": opt, "task": task,
                      "model_type": "LSTM", "params": params, "step_time_s": 0.1}
                     for s, t, a, q in vals])

    run("t2_copy_mini_cd32_lr0.1", "copy", "CD-RGE@32", 0.1,
        [(0, 1.0, 0.1, 0.0), (10, 10.0, 0.3, 0.0), (20, 20.0, 0.5, 0.25)])
    run("t2_copy_mini_cd32_lr0.3", "copy", "CD-RGE@32", 0.3,       # worse final accuracy: not chosen
        [(0, 1.0, 0.1, 0.0), (10, 10.0, 0.4, 0.0), (20, 20.0, 0.45, 0.0)])
    run("t2_copy_mini_adam_lr0.01", "copy", "BPTT-Adam", 0.01,
        [(0, 0.1, 0.2, 0.0), (10, 1.0, 0.4, 0.0), (20, 2.0, 0.6, 0.5), (30, 3.0, 0.7, 0.6)])
    run("t2_reverse_mini_adam_lr0.01", "reverse", "BPTT-Adam", 0.01, [(0, 0.1, 0.05, 0.0), (10, 1.0, 0.2, 0.1)])
    return d


def test_table2_equal_step_and_equal_time(table2_dir):
    runs = report.load([table2_dir])
    groups = dict(report.table2_groups(runs))
    assert list(groups) == ["copy / LSTM mini (5,415 params)", "reverse / LSTM mini (5,415 params)"]
    g = report.table2_group(groups["copy / LSTM mini (5,415 params)"])
    # S = min(last validated step) = min(20, 30) = 20; W = min(last elapsed) = min(20.0, 3.0) = 3.0
    assert g["equal_step"] == 20 and g["equal_time"] == pytest.approx(3.0)
    rows = {r["optimizer"]: r for r in g["rows"]}
    assert [r["optimizer"] for r in g["rows"]] == ["CD-RGE@32", "BPTT-Adam"]
    cd, bp = rows["CD-RGE@32"], rows["BPTT-Adam"]
    assert cd["lr"] == 0.1 and cd["lrs_tried"] == [0.3, 0.1]
    assert (cd["step_acc"], cd["step_seq_acc"]) == (0.5, 0.25)      # its step-20 validation
    assert (bp["step_acc"], bp["step_seq_acc"]) == (0.6, 0.5)       # step 20, not its step 30
    assert (cd["time_acc"], cd["time_step"]) == (0.1, 0)            # by 3 s the ZO run had only step 0
    assert (bp["time_acc"], bp["time_seq_acc"], bp["time_step"]) == (0.7, 0.6, 30)
    assert (bp["final_acc"], bp["final_step"]) == (0.7, 30)


def test_table2_section_markdown_and_plots(table2_dir, tmp_path):
    rep = tmp_path / "REPORT.md"
    assert report.main(["--table2", str(table2_dir), "--report", str(rep)]) == 0
    text = rep.read_text()
    assert "BEGIN GENERATED: table2-cpu" in text and "NOT the paper's scale" in text
    assert ("| copy / LSTM mini (5,415 params) | CD-RGE@32 | 0.1 | 0.3, 0.1 | 20 | 50.0% | 25.0% | 3 s | 0 "
            "| 10.0% | 0.0% |") in text
    assert "|  | BPTT-Adam | 0.01 | 0.01 | 20 | 60.0% | 50.0% | 3 s | 30 | 70.0% | 60.0% |" in text
    assert "| reverse / LSTM mini (5,415 params) | BPTT-Adam | 0.01 | 0.01 | 10 | 20.0% | 10.0% | 1 s | 10 |" in text
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib not installed")
    pngs = sorted((tmp_path / "figures").glob("table2_cpu_*.png"))
    assert [p.name for p in pngs] == ["table2_cpu_copy_lstm_mini_5_415_params.png",
                                      "table2_cpu_reverse_lstm_mini_5_415_params.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)


# ------------------------------------------------------------------ markers --

def test_report_keeps_hand_written_text_and_replaces_only_its_section(fig1_dir, table2_dir, tmp_path):
    rep = tmp_path / "REPORT.md"
    rep.write_text("# Report\n\nintro by hand\n\n"
                   f"{report.begin_marker('figure1-cpu')}\nSTALE FIGURE 1\n{report.end_marker('figure1-cpu')}\n\n"
                   "## Discussion\n\nhand-written discussion\n\n"
                   f"{report.begin_marker('figure1-paper')}\npaper section, other tag\n"
                   f"{report.end_marker('figure1-paper')}\n\nclosing words\n")
    args = ["--figure1", str(fig1_dir), "--report", str(rep), "--no-plots"]
    assert report.main(args) == 0
    once = rep.read_text()
    assert "STALE FIGURE 1" not in once and "| CD-RGE@96 | 0.1 |" in once
    for kept in ["# Report\n\nintro by hand\n\n", "## Discussion\n\nhand-written discussion\n",
                 "paper section, other tag", "closing words\n"]:
        assert kept in once
    assert once.index("intro by hand") < once.index("| CD-RGE@96 |") < once.index("## Discussion")
    assert once.count("BEGIN GENERATED: figure1-cpu") == 1
    assert report.main(args) == 0
    assert rep.read_text() == once                               # regenerating is idempotent
    assert report.main(["--table2", str(table2_dir), "--report", str(rep), "--no-plots"]) == 0
    both = rep.read_text()
    assert both.startswith(once) and "BEGIN GENERATED: table2-cpu" in both   # a new section is appended


def test_report_refuses_unmatched_marker(fig1_dir, tmp_path):
    rep = tmp_path / "REPORT.md"
    rep.write_text(f"text\n{report.begin_marker('figure1-cpu')}\nno end marker\n")
    with pytest.raises(ValueError, match="unmatched marker"):
        report.main(["--figure1", str(fig1_dir), "--report", str(rep), "--no-plots"])
    assert rep.read_text() == f"text\n{report.begin_marker('figure1-cpu')}\nno end marker\n"


def test_report_with_no_runs_fails(tmp_path):
    assert report.main(["--figure1", str(tmp_path), "--report", str(tmp_path / "R.md"), "--no-plots"]) == 1
    assert not (tmp_path / "R.md").exists()


# ------------------------------------------------- GPU batch (gpu_batch_reproduce.sh) --

GPU_BATCH = "gpu_batch_reproduce.sh"
PLAN_RE = re.compile(r"^# lane (\d+) GPU (\d+) \| t\+(\d+)s \| cap (\d+)s \| tier (\d+) \| (figure1|table2) \| (\S+)$")
LANE_RE = re.compile(r"^# lane (\d+) GPU (\d+): (\d+) run\(s\), (\d+) s of (\d+) s")
T2_TIER0 = {f"t2_paper_{task}_{size}_{v}"
            for task in ("copy", "sort", "reverse", "add") for size in ("tiny", "small")
            for v in ("cdrge96_lr0.01", "cdrge512_lr0.01", "bptt_adam_lr0.001")}
FIG1_TIER0 = {"fig1_paper_cdrge512_lr0.01", "fig1_paper_cdrge96_lr0.01", "fig1_paper_fdrge96_lr0.01",
              "fig1_paper_bptt_sgd_lr0.0001", "fig1_paper_bptt_adam_lr0.001"}
FIG1_CAPS = {"cdrge512": 90, "cdrge96": 75, "fdrge96": 60, "bptt_sgd": 60, "bptt_adam": 60}


def gpu_plan(*args: str, env: dict | None = None) -> tuple[dict, dict, str]:
    """({run: (lane, gpu, start, cap, tier, experiment, command)}, {lane: (gpu, n, busy)}, stdout) of a dry run."""
    res = run_sh(GPU_BATCH, "--dry-run", *args, env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    plan, lanes = {}, {}
    for i, line in enumerate(lines):
        m = PLAN_RE.match(line)
        if m:
            lane, gpu, start, cap, tier, exp, name = m.groups()
            assert name not in plan
            plan[name] = (int(lane), gpu, int(start), int(cap), int(tier), exp, lines[i + 1])
        m = LANE_RE.match(line)
        if m:
            lanes[int(m.group(1))] = (m.group(2), int(m.group(3)), int(m.group(4)))
    return plan, lanes, res.stdout


def test_gpu_batch_dry_run_plan_covers_lanes_and_priority_runs(tmp_path):
    out = tmp_path / "gpu_runs"
    plan, lanes, text = gpu_plan("--gpus", "1,2,3", "--budget_s", "380", "--out", str(out))
    assert {l: v[0] for l, v in lanes.items()} == {1: "1", 2: "2", 3: "3"}
    assert all(n >= 1 and busy <= 380 for _, n, busy in lanes.values())
    # every tier-0 run (the paper's suggested lrs) is scheduled, and nothing below tier 0 before them
    assert FIG1_TIER0 | T2_TIER0 <= set(plan)
    assert {n for n, p in plan.items() if p[4] == 0} == FIG1_TIER0 | T2_TIER0
    for lane in lanes:
        seq = sorted((p[2], p[4]) for p in plan.values() if p[0] == lane)
        assert [t for _, t in seq] == sorted(t for _, t in seq)
        assert sum(p[3] for p in plan.values() if p[0] == lane) == lanes[lane][2]
    for name, (lane, gpu, start, cap, tier, exp, cmd) in plan.items():
        assert cmd.startswith(f"CUDA_VISIBLE_DEVICES={gpu} timeout -s INT -k 10 {cap} python rge_series_experiments.py ")
        assert gpu == lanes[lane][0] and start + cap <= 380
        assert flag(cmd, "--device") == "cuda" and "--threads" not in cmd
        assert flag(cmd, "--metrics_out") == f"{out}/{exp}/{name}.jsonl"
        assert flag(cmd, "--summary_out") == f"{out}/{exp}/{name}.summary.json"
        assert f"_lr{flag(cmd, '--learning_rate_and_epsilon')}" in name
        if exp == "figure1":
            assert name.startswith("fig1_paper_") and flag(cmd, "--model_type") == "DNC"
            for f, v in [("--hidden_size", "1024"), ("--memory_size", "1024"), ("--head_size", "1024"),
                         ("--seq_length", "100"), ("--micro_batch_size", "1"), ("--log_interval", "1"),
                         ("--max_iterations", "1000"), ("--stop_loss", "0.05"),
                         ("--overfit_to_one_batch_flag", "true")]:
                assert flag(cmd, f) == v, (f, cmd)
            v = name[len("fig1_paper_"):].rsplit("_lr", 1)[0]
            assert cap == FIG1_CAPS[v] and variant(cmd) == v.replace("rge", "")
        else:
            assert name.startswith("t2_paper_") and flag(cmd, "--model_type") == "LSTM" and cap == 30
            size = "tiny" if "_tiny_" in name else "small"
            assert flag(cmd, "--hidden_size") == {"tiny": "240", "small": "1600"}[size]
            assert flag(cmd, "--micro_batch_size") == "2048" and flag(cmd, "--seq_length") == "20"
            assert flag(cmd, "--val_interval") == flag(cmd, "--log_interval")
            expect_log = {("tiny", "bptt"): "50", ("tiny", "cd96"): "5", ("tiny", "cd512"): "2",
                          ("small", "bptt"): "25", ("small", "cd96"): "2", ("small", "cd512"): "1"}
            kind = "bptt" if variant(cmd).startswith("bptt") else variant(cmd)
            assert flag(cmd, "--log_interval") == expect_log[(size, kind)]
    m = re.search(r"planned: (\d+) run\(s\); skipped .*: (\d+); not scheduled .*: (\d+)", text)
    assert m and int(m.group(1)) == len(plan) and int(m.group(2)) == 0
    assert int(m.group(1)) + int(m.group(3)) == 20 + 128     # the two paper grids
    assert f"python scripts/report.py --gpu {out}" in text


def test_gpu_batch_dry_run_only_budget_and_resume(tmp_path):
    out = tmp_path / "o"
    plan, lanes, _ = gpu_plan("--gpus", "4", "--budget_s", "100", "--only", "figure1", "--out", str(out))
    assert list(lanes) == [1] and lanes[1][0] == "4"
    # one lane, 100 s: CD-RGE@512 (90 s) first, nothing else fits (the next needs >= 70% of its cap)
    assert list(plan) == ["fig1_paper_cdrge512_lr0.01"]
    plan, _, _ = gpu_plan("--gpus", "0,1", "--only", "table2", "--out", str(out), "--cap_pct", "50")
    assert plan and all(p[5] == "table2" and p[3] == 15 for p in plan.values())
    # a run cut earlier (non-empty JSON lines + .cut) is skipped; a failed one is retried
    (out / "figure1").mkdir(parents=True)
    for name in ("fig1_paper_cdrge512_lr0.01", "fig1_paper_cdrge96_lr0.01"):
        (out / "figure1" / f"{name}.jsonl").write_text('{"step": 0, "train_loss": 3.0}\n')
    (out / "figure1" / "fig1_paper_cdrge512_lr0.01.cut").write_text("{}")
    (out / "figure1" / "fig1_paper_cdrge96_lr0.01.failed").write_text("exit status 1\n")
    plan, _, text = gpu_plan("--gpus", "1,2,3", "--only", "figure1", "--out", str(out))
    assert "fig1_paper_cdrge512_lr0.01" not in plan and "fig1_paper_cdrge96_lr0.01" in plan
    assert "skipped (finished or cut earlier; --force reruns): 1;" in text
    plan, _, _ = gpu_plan("--gpus", "1,2,3", "--only", "figure1", "--out", str(out), "--force")
    assert "fig1_paper_cdrge512_lr0.01" in plan


@pytest.mark.parametrize("args, message", [
    (["--gpus", "a,b"], "--gpus needs a comma list"),
    (["--gpus", "1,1"], "twice"),
    (["--budget_s", "0"], "--budget_s needs a positive integer"),
    (["--only", "figure3"], "--only must be"),
    (["--bogus"], "unknown option"),
])
def test_gpu_batch_bad_arguments_exit_2(args, message):
    res = run_sh(GPU_BATCH, "--dry-run", *args)
    assert res.returncode == 2 and message in res.stderr and "Usage" in res.stderr


FAKE_HARNESS = r'''#!/usr/bin/env python3
# Stands in for python: the preflight's torch check passes; other -c / stdin code runs in the real
# python; a harness run writes 3 JSON lines, then (by its name) finishes, fails, or waits to be cut.
import json, os, sys, time
a = sys.argv[1:]
if a[:1] == ["-c"] and "torch" in a[1]:
    sys.exit(0)
if a[:1] in (["-c"], ["-"]):
    os.execv(sys.executable, [sys.executable] + a)
out, summ = a[a.index("--metrics_out") + 1], a[a.index("--summary_out") + 1]
with open(out, "w") as f:
    for s in range(3):
        f.write(json.dumps({"step": s, "train_loss": 3.0 - s, "elapsed_s": 0.1 * (s + 1),
                            "lr": float(a[a.index("--learning_rate_and_epsilon") + 1]),
                            "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\n")
        f.flush()
    if "bptt_adam" in out:
        open(summ, "w").write("{}")
        sys.exit(0)
    if "fdrge" in out:
        sys.exit(1)
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        print("stopped by SIGINT", file=sys.stderr)
        sys.exit(130)
'''


def test_gpu_batch_runs_lanes_caps_and_keeps_cut_lines(tmp_path):
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE_HARNESS)
    fake.chmod(0o755)
    out = tmp_path / "gpu_runs"
    # caps at 3% (90 s -> 2 s, 60 s -> 1 s), 4 s per lane, two lanes
    res = run_sh(GPU_BATCH, "--gpus", "6,7", "--budget_s", "4", "--cap_pct", "3", "--only", "figure1",
                 "--out", str(out), env=_env(ZORNN_PYTHON=str(fake)), timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    batch = [json.loads(l) for l in (out / "batch_runs.jsonl").read_text().splitlines()]
    by_run = {r["run"]: r for r in batch}
    assert {r["lane"] for r in batch} == {1, 2} and {r["gpu"] for r in batch} == {"6", "7"}
    assert by_run["fig1_paper_cdrge512_lr0.01"]["outcome"] == "cut"
    assert by_run["fig1_paper_cdrge512_lr0.01"]["cap_s"] == 2
    assert by_run["fig1_paper_fdrge96_lr0.01"]["outcome"] == "failed"
    if "fig1_paper_bptt_adam_lr0.001" in by_run:
        assert by_run["fig1_paper_bptt_adam_lr0.001"]["outcome"] == "done"
    fig = out / "figure1"
    for r in batch:
        recs = [json.loads(l) for l in (fig / f"{r['run']}.jsonl").read_text().splitlines()]
        assert len(recs) == 3 and {x["gpu"] for x in recs} == {r["gpu"]}   # the lane's GPU, as CUDA_VISIBLE_DEVICES
        assert (fig / f"{r['run']}.cut").exists() == (r["outcome"] == "cut")
        assert (fig / f"{r['run']}.failed").exists() == (r["outcome"] == "failed")
    cut = json.loads((fig / "fig1_paper_cdrge512_lr0.01.cut").read_text())
    assert cut["cap_s"] == 2 and cut["exit_status"] == 124 and cut["jsonl_lines"] == 3
    assert "stopped by SIGINT" in (out / "logs" / "fig1_paper_cdrge512_lr0.01.log").read_text()
    info = json.loads((fig / "run_info.json").read_text())
    assert info["scale"] == "paper" and info["jobs"] == 2 and info["runs_executed"] == len(batch)
    assert info["command"].startswith("scripts/gpu_batch_reproduce.sh --gpus 6,7 ")
    assert "cut by their time cap" in res.stdout and not list(out.glob(".claims-*"))
    # the report renders the section from these files alone
    rep = tmp_path / "REPORT.md"
    assert report.main(["--gpu", str(out), "--report", str(rep), "--no-plots"]) == 0
    text = rep.read_text()
    assert "## Paper scale on H200" in text and "| CD-RGE@512 | 0.01 |" in text and "| cut |" in text


@pytest.fixture
def gpu_dir(tmp_path):
    d = tmp_path / "gpu_runs"
    (d / "figure1").mkdir(parents=True)
    (d / "table2").mkdir()
    fbase = {"task": "copy", "model_type": "DNC", "params": 12774137, "context_len": 202}

    def fig(name, opt, lr, losses, dt, cut=True):
        write_jsonl(d / "figure1" / f"{name}.jsonl",
                    [dict(fbase, step=i, train_loss=l, lr=lr, optimizer=opt, step_time_s=dt,
                          elapsed_s=round((i + 1) * dt, 6),
                          peak_mem_bytes=(3 if i == len(losses) - 1 else 2) * 2**30)
                     for i, l in enumerate(losses)])
        (d / "figure1" / (f"{name}.cut" if cut else f"{name}.summary.json")).write_text("{}")

    fig("fig1_paper_cdrge512_lr0.01", "CD-RGE@512", 0.01, [3.1, 3.0, 2.9], 8.0)
    fig("fig1_paper_cdrge96_lr0.01", "CD-RGE@96", 0.01, [3.1, 3.05, 3.0, 2.95, 2.9, 2.85], 1.5)
    fig("fig1_paper_bptt_adam_lr0.001", "BPTT-Adam", 0.001, [3.1, 2.0, 0.5, 0.04], 0.2, cut=False)

    def t2(name, opt, lr, vals, size="tiny", params=150740):
        # vals: (step, elapsed_s, token acc)
        write_jsonl(d / "table2" / f"{name}.jsonl",
                    [{"step": s, "elapsed_s": t, "train_loss": 3.0 - a, "val_loss": 3.2 - a, "val_accuracy": a,
                      "val_seq_accuracy": 0.0, "lr": lr, "optimizer": opt, "task": "copy", "model_type": "LSTM",
                      "params": params, "step_time_s": 0.1, "peak_mem_bytes": 2**30} for s, t, a in vals])
        (d / "table2" / f"{name}.cut").write_text("{}")

    # equal steps: S = min(last validated step) = 4 (CD-RGE@512); equal time: W = min(last elapsed) = 20 s
    t2("t2_paper_copy_tiny_cdrge96_lr0.01", "CD-RGE@96", 0.01, [(0, 1.0, 0.06), (5, 10.0, 0.08), (10, 20.0, 0.1)])
    t2("t2_paper_copy_tiny_cdrge512_lr0.01", "CD-RGE@512", 0.01, [(0, 2.0, 0.06), (2, 12.0, 0.07), (4, 22.0, 0.09)])
    t2("t2_paper_copy_tiny_bptt_adam_lr0.001", "BPTT-Adam", 0.001,
       [(0, 0.5, 0.06), (50, 5.0, 0.2), (100, 10.0, 0.3), (150, 15.0, 0.4), (200, 21.0, 0.5)])
    inv = "20261128T160000Z-1"
    write_jsonl(d / "batch_runs.jsonl", [
        {"invocation": inv, "lane": 1, "gpu": "1", "experiment": "figure1", "run": "fig1_paper_cdrge512_lr0.01",
         "tier": 0, "cap_s": 90, "start_s": 1, "wall_s": 90, "exit_status": 124, "outcome": "cut", "jsonl_lines": 3},
        {"invocation": inv, "lane": 2, "gpu": "2", "experiment": "figure1", "run": "fig1_paper_cdrge96_lr0.01",
         "tier": 0, "cap_s": 75, "start_s": 1, "wall_s": 75, "exit_status": 124, "outcome": "cut", "jsonl_lines": 6},
        {"invocation": inv, "lane": 3, "gpu": "3", "experiment": "figure1", "run": "fig1_paper_bptt_adam_lr0.001",
         "tier": 0, "cap_s": 60, "start_s": 1, "wall_s": 12, "exit_status": 0, "outcome": "done", "jsonl_lines": 4},
    ])
    (d / "priority.tsv").write_text("rank\ttier\texperiment\trun\tcap_s\n"
                                    "0\t0\tfigure1\tfig1_paper_cdrge512_lr0.01\t90\n"
                                    "1\t0\tfigure1\tfig1_paper_cdrge96_lr0.01\t75\n"
                                    "2\t0\tfigure1\tfig1_paper_fdrge96_lr0.01\t60\n"
                                    "3\t0\tfigure1\tfig1_paper_bptt_adam_lr0.001\t60\n")
    return d


def test_report_gpu_section_from_jsonl(gpu_dir, tmp_path):
    rep = tmp_path / "rep" / "REPORT.md"
    rep.parent.mkdir()
    rep.write_text("# Mine\n\nhand-written\n")
    assert report.main(["--gpu", str(gpu_dir), "--report", str(rep)]) == 0
    text = rep.read_text()
    assert text.startswith("# Mine\n\nhand-written\n") and "BEGIN GENERATED: paper-h200" in text
    assert "## Paper scale on H200" in text and "paper scale on H200, time-capped runs" in text
    assert "| `20261128T160000Z-1` | 1 | 1 | 1 | 0 | 1 | 0 | 90 s |" in text        # lanes table
    assert "Priority list: 3 of 4 runs have JSON lines; 1 not run yet:" in text
    assert "`fig1_paper_fdrge96_lr0.01` (tier 0)" in text
    # Figure 1: BPTT-Adam reached < 0.1 at step 3 (0.8 s); the ZO runs were cut; peak GiB = the largest logged
    assert "| CD-RGE@512 | 0.01 | 0.01 | 3.1 | 2.9 | – | – | 8 s | 3 | 3.00 | cut |" in text
    assert "| BPTT-Adam | 0.001 | 0.001 | 3.1 | 0.04 | 3 | 0.8 s | 0.2 s | 4 | 3.00 | ok |" in text
    # Table 2: S = 4, W = 20 s
    assert ("| copy / LSTM tiny (150,740 params) | CD-RGE@512 | 0.01 | 0.01 | 4 | 9.0% | 0.0% | 20 s | 2 "
            "| 7.0% |") in text
    assert "| 0.1 s | 1.00 | cut |" in text
    assert "|  | CD-RGE@96 | 0.01 | 0.01 | 4 | 6.0% | 0.0% | 20 s | 10 | 10.0% |" in text
    assert "|  | BPTT-Adam | 0.001 | 0.001 | 4 | 6.0% | 0.0% | 20 s | 150 | 40.0% |" in text
    again = text
    assert report.main(["--gpu", str(gpu_dir), "--report", str(rep)]) == 0
    assert rep.read_text() == again                                                 # idempotent
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib not installed")
    for name in ["figure1_h200_loss_vs_step.png", "figure1_h200_loss_vs_time.png",
                 "table2_h200_copy_lstm_tiny_150_740_params.png"]:
        assert (rep.parent / "figures" / name).read_bytes().startswith(b"\x89PNG")
        assert f"](figures/{name})" in text


def test_report_gpu_section_pending(tmp_path):
    rep = tmp_path / "REPORT.md"
    assert report.main(["--gpu", str(tmp_path / "absent"), "--report", str(rep), "--no-plots"]) == 0
    text = rep.read_text()
    assert "## Paper scale on H200" in text and "**Pending: no GPU runs in" in text
    assert (f"scripts/gpu_batch_reproduce.sh --gpus 1,2,3 --budget_s 380 --out {tmp_path / 'absent'}" in text)
    assert f"python scripts/report.py --gpu {tmp_path / 'absent'}" in text


# ------------------------------------------------------ timing / VRAM table --

def _bench_row(size, params, probes, s_step, peak, paper_s=None, paper_gib=None, label=None, mpp=4):
    return {"size": size, "params": params, "probes": probes, "label": label, "status": "ok", "s_step": s_step,
            "peak_alloc_gib": peak, "paper_s": paper_s, "paper_gib": paper_gib, "models_per_pass": mpp,
            "tflops": 10.0, "peak_frac": 0.0125}


def write_bench(d: Path, stamp: str, rows, *, gpu="NVIDIA H200", sweep=None, bptt=()) -> Path:
    path = d / f"bench_step_{stamp}.json"
    path.write_text(json.dumps({
        "meta": {"date": stamp.replace("_", "T"), "command": f"python bench/bench_step.py --probes 12,64 # {stamp}",
                 "gpu": gpu, "gpu_memory_gib": 139.8, "driver": "580", "torch": "2.11.0+cu130", "cuda": "13.0",
                 "git": "abc1234", "finished": True,
                 "settings": {"batch": 1024, "T": 11, "vocab": 100, "dtype": "bfloat16", "master_dtype": "float32",
                              "steps": 5, "warmup": 2}},
        "peak": {"tflops": 800.0}, "zo_steps": rows, "bptt": list(bptt), "context_sweep": sweep or {},
        "targets": [{"target": "12 probes, tiny <= 2.00 ms/step", "measured": "6.00 ms", "status": "missed",
                     "note": ""},
                    {"target": "xlarge peak memory <= 12 GiB", "measured": "11 GiB", "status": "met", "note": ""}],
    }))
    return path


@pytest.fixture
def bench_dir(tmp_path):
    d = tmp_path / "bench_results"
    d.mkdir()
    # an older bench (must be ignored) and the newest one; a non-bench JSON and a broken newer file too
    write_bench(d, "2026-11-28_100000", [_bench_row("tiny", 150740, 12, 0.5, 9.0, 0.081, 0.10)], gpu="OLD GPU")
    sweep = {"size": "medium", "probes": 12, "B": 1024, "rows": [
        {"T": 10, "time_chunk": 10, "s_step": 0.036, "method": "full (5 timed steps)", "peak_alloc_gib": 1.0,
         "paper_s": 0.164, "paper_gib": 2.66, "status": "ok"},
        {"T": 100, "time_chunk": 48, "s_step": 0.27, "method": "full (5 timed steps)", "peak_alloc_gib": 8.0,
         "paper_s": 1.14, "paper_gib": 8.6, "status": "ok"},
        {"T": 1000, "time_chunk": 48, "s_step": 2.6, "method": "full (5 timed steps)", "peak_alloc_gib": 8.2,
         "paper_s": 11.0, "paper_gib": 8.6, "status": "ok"}]}
    write_bench(d, "2026-11-28_162343", [
        _bench_row("large", 112606100, 64, 1.5, 3.16, 5.1, None, mpp=2),
        _bench_row("tiny", 150740, 12, 0.00633, 0.54, 0.081, 0.10, mpp=24),
        _bench_row("small", 1139700, 64, 0.0343, 2.52),
        _bench_row("xlarge", 1162045100, 12, 2.136, 11.31, 5.92, 85.7, mpp=1),
    ], sweep=sweep)
    (d / "bench_step_2026-11-29_000000.json").write_text("{not json")        # newer but unreadable: skipped
    (d / "scaling_2026-11-28_161716.json").write_text(json.dumps({"env": {"date": "2026-11-28T16:17:16"}, "rows": [
        {"size": "large", "world": 1, "params": 112606100, "status": "ok", "probes_total": 12, "s_per_step": 0.3085,
         "speedup": 1.0, "bytes_per_step": 0},
        {"size": "large", "world": 4, "params": 112606100, "status": "ok", "probes_total": 48, "s_per_step": 0.3117,
         "speedup": 3.9596, "bytes_per_step": 384},
        {"size": "xlarge", "world": 2, "params": 1162045100, "status": "skipped", "reason": "budget",
         "probes_total": 24, "s_per_step": None, "speedup": None, "bytes_per_step": None}]}))
    (d / "scaling_2026-11-28_161716.md").write_text("# scaling\n")
    return d


def test_report_timing_table_from_newest_bench_json(bench_dir, tmp_path):
    rep = tmp_path / "rep" / "REPORT.md"
    rep.parent.mkdir()
    rep.write_text("# Mine\n\nhand-written\n")
    assert report.main(["--timing", str(bench_dir), "--report", str(rep)]) == 0
    text = rep.read_text()
    assert text.startswith("# Mine\n\nhand-written\n") and "BEGIN GENERATED: timing-h200" in text
    assert "## Timing and memory: ours beside the paper's" in text
    # the newest readable bench_step_*.json, with its date, GPU and command
    assert "bench_step_2026-11-28_162343.json" in text and "OLD GPU" not in text
    assert "Measured 2026-11-28T162343 on one NVIDIA H200 (139.8 GiB, driver 580)" in text
    assert "python bench/bench_step.py --probes 12,64 # 2026-11-28_162343" in text
    assert "Dense bf16 GEMM peak measured in the same run: 800.0 TFLOP/s." in text
    # rows sorted by probes then size; ours beside the paper's code (paper_s / paper_gib) and the README (A40)
    zo = text[text.index("| size | params | probes (one GPU)"):]
    order = [l.split(" | ")[0] + " " + l.split(" | ")[2] for l in zo.splitlines()[2:6]]
    assert order == ["| tiny 12", "| xlarge 12", "| small 64", "| large 64"]
    assert ("| tiny | 150,740 | 12 | 24 | 6.33 ms | 10.0 (1.2%) | 0.54 | 81 ms | 0.10 | 12.8x "
            "| 0.05 s (96·CD-RGE) |") in text
    assert "| xlarge | 1,162,045,100 | 12 | 1 | 2.14 s | 10.0 (1.2%) | 11.31 | 5.92 s | 85.70 | 2.8x | 4.4 s (96·CD-RGE) |" in text
    assert "| small | 1,139,700 | 64 | 4 | 34.3 ms | 10.0 (1.2%) | 2.52 | – | – | – | 0.29 s (512·CD-RGE) |" in text
    assert "| large | 112,606,100 | 64 | 2 | 1.5 s | 10.0 (1.2%) | 3.16 | 5.1 s | – | 3.4x | 1.87 s (512·CD-RGE) |" in text
    # context sweep: 8.2 / 1.0 overall; over T >= 48: 8.2 / 8.0 = 1.025
    assert "| 1,000 | 48 | 2.6 s | full (5 timed steps) | 8.20 | 11 s | 8.60 |" in text
    assert "max/min 8.200 (NOT flat within 5%)" in text and "over T >= 48" in text and "max/min 1.025 (flat within 5%)" in text
    assert "Not in this bench: the README's series rows" in text
    assert "Issue 4's targets, as the bench checked them: 1 met, 1 missed" in text
    assert "| 96·CD-RGE (dist × 8) | 0.05 | 0.06 | 0.07 | 0.4 | 4.4 |" in text          # the README table
    # scaling summary and link
    assert "](../bench_results/scaling_2026-11-28_161716.md)" in text
    assert "| `scaling_2026-11-28_161716` | large | 112,606,100 | 4 | 48 | 312 ms | 3.960x | 384 | ok |" in text
    assert "| `scaling_2026-11-28_161716` | xlarge | 1,162,045,100 | 2 | 24 | – | – | – | skipped: budget |" in text
    again = text
    assert report.main(["--timing", str(bench_dir), "--report", str(rep)]) == 0
    assert rep.read_text() == again                                                 # idempotent
    # a single file can be given; a newer bench replaces the table
    write_bench(bench_dir, "2026-11-30_080000", [_bench_row("medium", 10627700, 12, 0.036, 2.33, 0.162, 2.66)],
                bptt=[{"kind": "cudnn", "size": "tiny", "params": 1000, "status": "ok", "s_step": 0.002,
                       "peak_alloc_gib": 0.3}])
    assert report.main(["--timing", str(bench_dir), "--report", str(rep)]) == 0
    text = rep.read_text()
    assert "bench_step_2026-11-30_080000.json" in text and "| tiny | 150,740 | 12 |" not in text
    assert "| cudnn | tiny | 1,000 | 2 ms | 0.30 | 100 ms |" in text and "Not in this bench" not in text
    assert text.count("BEGIN GENERATED: timing-h200") == 1


def test_report_timing_prefers_the_newest_whole_table(tmp_path):
    """A newer bench of a few presets, or a CUDA-graph pass, does not replace the newest bench that ran
    every preset; with no whole table the newest bench with ZO rows is used."""
    d = tmp_path / "b"
    d.mkdir()
    every = [_bench_row(sz, 1000, 12, 0.01, 1.0) for sz in ("tiny", "small", "medium", "large", "xlarge")]
    write_bench(d, "2026-11-28_100000", every)
    write_bench(d, "2026-11-28_110000", [_bench_row("tiny", 1000, 12, 0.002, 1.0)])           # a few presets
    graphed = write_bench(d, "2026-11-28_120000", every)                                   # graphed: skipped
    data = json.loads(graphed.read_text())
    data["meta"]["settings"]["cuda_graphs"] = True
    graphed.write_text(json.dumps(data))
    assert report.newest_bench(d)[0].name == "bench_step_2026-11-28_100000.json"
    # the whole table has no context sweep: the newest bench with one supplies it, named
    write_bench(d, "2026-11-28_090000", [_bench_row("medium", 1000, 12, 0.03, 1.0)], sweep={
        "size": "medium", "probes": 12, "B": 1024, "rows": [
            {"T": 100, "time_chunk": 48, "s_step": 0.27, "method": "full", "peak_alloc_gib": 8.0, "status": "ok"}]})
    body = report.timing_section(d, report=tmp_path / "R.md")
    assert "bench_step_2026-11-28_100000.json" in body and "**Memory against context length**" in body
    assert "The context sweep below is from [`" in body and "bench_step_2026-11-28_090000.json" in body
    # the newer few-preset bench is listed under the table (the graphed pass is not)
    assert "**Newer measurements**" in body and "| tiny | 12 | 2 ms |" in body and "`bench_step_2026-11-28_110000`" in body
    assert "bench_step_2026-11-28_120000" not in body
    (d / "bench_step_2026-11-28_100000.json").unlink()
    (d / "bench_step_2026-11-28_120000.json").unlink()
    assert report.newest_bench(d)[0].name == "bench_step_2026-11-28_110000.json"


def test_report_timing_table_pending_and_stdout(tmp_path, capsys):
    rep = tmp_path / "REPORT.md"
    assert report.main(["--timing", str(tmp_path / "empty"), "--report", str(rep)]) == 0
    assert "**Pending: no `bench_step_*.json` in" in rep.read_text()
    assert "python bench/bench_step.py --probes 12,64" in rep.read_text()
    capsys.readouterr()
    assert report.main(["--timing", str(tmp_path / "empty"), "--report", str(tmp_path / "other.md"), "--stdout"]) == 0
    assert "## Timing and memory" in capsys.readouterr().out and not (tmp_path / "other.md").exists()


def test_repo_report_has_gpu_and_timing_sections():
    """results/REPORT.md as committed: the GPU section, the timing table and the discussion around them."""
    text = (REPO / "results" / "REPORT.md").read_text()
    for marker in ("BEGIN GENERATED: paper-h200", "BEGIN GENERATED: timing-h200", "END GENERATED: timing-h200",
                   "BEGIN GENERATED: multigpu-h200", "END GENERATED: multigpu-h200"):
        assert marker in text
    assert "## What the paper-scale runs show" in text and "neither confirm nor refute" in text
    assert "scripts/reproduce_figure1.sh --scale paper" in text and "scripts/reproduce_table2.sh --scale paper" in text
    for link in re.findall(r"\]\((figures/[^)]+\.png)\)", text):
        assert (REPO / "results" / link).is_file(), link


# ------------------------------------------- 7B smoke test and multi-GPU scaling --

def write_smoke(d: Path, stamp: str, *, world: int, per_gpu: int, lr: float, losses, status="ok", md=True) -> None:
    hit = next((i for i, l in enumerate(losses) if l < 0.1), None)     # steps numbered from 0, as run_smoke_7b.sh
    (d / f"smoke7b_{stamp}.json").write_text(json.dumps({
        "world": world, "probes_per_gpu": per_gpu, "probes_per_step": world * per_gpu, "device_name": "NVIDIA H200",
        "command": f"torchrun --nproc_per_node={world} distributed_rge.py --meta_perturbations {per_gpu} "
                   f"--learning_rate {lr} --max_iters {len(losses)}",
        "status": status, "params": 6914405668, "target_loss": 0.1, "reached_target": hit is not None,
        "steps_to_target": hit, "steps_recorded": len(losses), "first_loss": losses[0], "final_loss": losses[-1],
        "best_loss": min(losses), "losses": losses, "s_per_step_median": 0.25 * world,
        "peak_gib_steps_rank0": 39.2, "peak_gib_max_over_ranks": 39.672, "summaries": world, "checksums_equal": True,
        "paper": {"s_per_step": 19.64}}))
    if md:
        (d / f"smoke7b_{stamp}.md").write_text("# smoke\n")


@pytest.fixture
def multigpu_dir(tmp_path):
    d = tmp_path / "bench_results"
    d.mkdir()
    # diverging, not reached: best 1.5 at step 2, then rising to 2,500 at step 4 (5 steps recorded)
    write_smoke(d, "2026-11-28_100000", world=3, per_gpu=12, lr=0.01, losses=[10.0, 4.0, 1.5, 30.0, 2500.0])
    # two 4-GPU runs with 96 probes: below 0.1 at step 3 (lr 0.01) and at step 5 (lr 0.005)
    write_smoke(d, "2026-11-28_110000", world=4, per_gpu=24, lr=0.01, losses=[10.0, 2.0, 0.5, 0.08])
    write_smoke(d, "2026-11-28_120000", world=4, per_gpu=24, lr=0.005, losses=[10.0, 5.0, 1.0, 0.5, 0.2, 0.09],
                md=False)
    (d / "smoke7b_2026-11-28_130000.json").write_text('{"world": 4, "losses": [1.0,')     # malformed: skipped
    (d / "smoke7b_2026-11-28_140000.json").write_text('{"world": 4, "losses": 5}')        # wrong type: skipped
    # an older scaling file (ignored) and the newest one: T1 = 2.0 s; N = 2: 2·2.0/2.02 = 1.980x, 0.990;
    # N = 4: 4·2.0/2.05 = 3.902x, 0.976; the 4-GPU xlarge row was skipped
    (d / "scaling_2026-11-28_090000.json").write_text(json.dumps({"env": {"date": "old"}, "rows": [
        {"size": "tiny", "world": 1, "status": "ok", "s_per_step": 9.0}]}))
    (d / "scaling_2026-11-28_140000.json").write_text(json.dumps({
        "env": {"date": "2026-11-28T14:00:00", "script": "bench/run_scaling.sh --gpus 4", "probes_per_gpu": 12,
                "batch": 1024, "dtype": "bfloat16"},
        "rows": [
            {"size": "xlarge", "world": 4, "params": 1162045100, "status": "skipped", "reason": "budget",
             "probes_total": 48, "s_per_step": None, "device_name": "NVIDIA H200"},
            {"size": "large", "world": 4, "params": 112606100, "status": "ok", "probes_total": 48, "s_per_step": 2.05,
             "bytes_per_step": 384, "bytes_sent_per_step": 96, "checksums_equal": True,
             "checksum_values": ["a"] * 4, "device_name": "NVIDIA H200"},
            {"size": "large", "world": 1, "params": 112606100, "status": "ok", "probes_total": 12, "s_per_step": 2.0,
             "bytes_per_step": 0, "bytes_sent_per_step": 0, "checksums_equal": True, "checksum_values": ["b"],
             "device_name": "NVIDIA H200"},
            {"size": "large", "world": 2, "params": 112606100, "status": "ok", "probes_total": 24, "s_per_step": 2.02,
             "bytes_per_step": 192, "bytes_sent_per_step": 96, "checksums_equal": False,
             "checksum_values": ["c", "d"], "device_name": "NVIDIA H200"}]}))
    (d / "scaling_2026-11-28_140000.md").write_text("# scaling\n")
    (d / "scaling_2026-11-28_150000.json").write_text("[1, 2]")            # newest by name, not an object: skipped
    (d / "scaling_2026-11-28_145000.json").write_text('{"env": "x", "rows": [{}]}')    # wrong type: skipped
    return d


def test_report_multigpu_section_from_bench_json(multigpu_dir, tmp_path):
    rep = tmp_path / "rep" / "REPORT.md"
    rep.parent.mkdir()
    rep.write_text("# Mine\n\nhand-written\n")
    # --gpu writes it too (here from --multigpu DIR); the GPU section itself is pending
    assert report.main(["--gpu", str(tmp_path / "absent"), "--multigpu", str(multigpu_dir), "--report", str(rep),
                        "--no-plots"]) == 0
    text = rep.read_text()
    assert text.startswith("# Mine\n\nhand-written\n") and "BEGIN GENERATED: multigpu-h200" in text
    sec = text[text.index("## 7B smoke test and multi-GPU scaling"):text.index("END GENERATED: multigpu-h200")]
    assert "### 7B smoke test (the paper's `--tokenizer hf --model_type LSTM` line)" in sec
    assert "3 run(s) of `bench/run_smoke_7b.sh`" in sec and "6,914,405,668 parameters" in sec
    assert ("| [`2026-11-28_100000`](../bench_results/smoke7b_2026-11-28_100000.md) | 3 x H200 | 36 (12/GPU) | 0.01 "
            "| not reached in 5 | 10 → 2,500 | 750 ms | 39.67 | yes (3 of 3 ranks) | ok |") in sec
    assert ("| [`2026-11-28_110000`](../bench_results/smoke7b_2026-11-28_110000.md) | 4 x H200 | 96 (24/GPU) | 0.01 "
            "| 3 | 10 → 0.08 | 1 s | 39.67 | yes (4 of 4 ranks) | ok |") in sec
    assert "| `2026-11-28_120000` | 4 x H200 | 96 (24/GPU) | 0.005 | 5 | 10 → 0.09 |" in sec      # no .md: no link
    assert "| the paper (README) | 8 x A40 | 96 | – | 6 | 15.95 → 0.0469 | 19.6 s | – | – | – |" in sec
    assert ("The 3-GPU / 36-probe run (`2026-11-28_100000`) diverged from step 3 on (loss 1.5 at step 2, then rising, "
            "to 2,500 at step 4), and both 4-GPU runs with the paper's 96 probes per step (24 per GPU) reached "
            "loss < 0.1 (lr 0.01 in 3 steps, lr 0.005 in 5).") in sec
    assert ("Skipped as malformed (not a JSON object of the expected form): `smoke7b_2026-11-28_130000.json`, "
            "`smoke7b_2026-11-28_140000.json`.") in sec
    # scaling: the newest readable file, rows per preset and GPU count
    assert "### Multi-GPU scaling" in sec
    assert "[`scaling_2026-11-28_140000.md`](../bench_results/scaling_2026-11-28_140000.md)" in sec
    assert "the newest readable `scaling_*.json`" in sec and "| tiny |" not in sec
    assert "| large | 112,606,100 | 1 | 12 | 2.000 s | 1.000x | 1.000 | 0 (sent 0) | yes (1 rank) | ok |" in sec
    assert "| large | 112,606,100 | 2 | 24 | 2.020 s | 1.980x | 0.990 | 192 (sent 96) | no (2 ranks) | ok |" in sec
    assert "| large | 112,606,100 | 4 | 48 | 2.050 s | 3.902x | 0.976 | 384 (sent 96) | yes (4 ranks) | ok |" in sec
    assert "| xlarge | 1,162,045,100 | 4 | 48 | – | – | – | – | – | skipped: budget |" in sec
    assert sec.index("| large | 112,606,100 | 1 |") < sec.index("| large | 112,606,100 | 2 |") < sec.index("| xlarge |")
    assert "**The 8-GPU point was not run** (the paper's README times 8 GPUs): only 1, 2 and 4 H200s were available." in sec
    assert ("Skipped as malformed (not a JSON object of the expected form): `scaling_2026-11-28_145000.json`, "
            "`scaling_2026-11-28_150000.json`.") in sec
    again = text
    assert report.main(["--multigpu", str(multigpu_dir), "--report", str(rep)]) == 0
    assert rep.read_text() == again                                                 # idempotent, one section
    assert text.count("BEGIN GENERATED: multigpu-h200") == 1


def test_report_multigpu_section_without_files(tmp_path, capsys):
    d = tmp_path / "bench_results"
    d.mkdir()
    (d / "smoke7b_2026-11-28_100000.json").write_text("not json")
    assert report.main(["--multigpu", str(d), "--report", str(tmp_path / "R.md"), "--stdout"]) == 0
    out = capsys.readouterr().out
    assert "No `smoke7b_*.json` (from `bench/run_smoke_7b.sh`) in" in out and "| run |" not in out
    assert "Skipped as malformed (not a JSON object of the expected form): `smoke7b_2026-11-28_100000.json`." in out
    assert "No `scaling_*.json` (from `bench/run_scaling.sh`) in" in out and "8-GPU" not in out
    assert not (tmp_path / "R.md").exists()
    assert report.main(["--multigpu", str(tmp_path / "absent"), "--report", str(tmp_path / "R.md")]) == 0
    assert "No `smoke7b_*.json`" in (tmp_path / "R.md").read_text()
