"""Tests for scripts/: sweep launchers, screen helpers and the JSONL collector.

Nothing here needs GNU screen, nvidia-smi or a GPU: the launchers are run
with --dry-run or against stub `screen` / `nvidia-smi` executables placed on
a restricted PATH.
"""

from __future__ import annotations

import csv
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
SWEEPS = ["run_dnc_experiments.sh", "run_lstm_experiments.sh"]
SHELL_SCRIPTS = SWEEPS + ["capture_screen_logs.sh", "kill_screens.sh"]
# Tools the shell scripts use besides bash builtins.
TOOLS = ["bash", "cat", "dirname", "basename", "mkdir", "awk", "sort", "cut",
         "tail", "sed", "mktemp", "rm", "sleep", "grep", "wc"]
SCREEN_LINE = re.compile(r"^\[dry-run\] screen -dmS (\S+) bash -c '(.*)'$")


# ------------------------------------------------------------------ helpers --

def _base_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZORNN_")}
    env.pop("MAX_ITERS", None)
    env.pop("LOG_INTERVAL", None)
    env.update(extra)
    return env


def make_bin(tmp_path: Path, stubs: dict | None = None, name: str = "bin") -> Path:
    """A directory holding symlinks to the basic tools plus executable stubs."""
    bindir = tmp_path / name
    bindir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(os.path.realpath(found))
    for stub_name, body in (stubs or {}).items():
        stub = bindir / stub_name
        stub.write_text("#!" + os.path.realpath(BASH) + "\n" + body)
        stub.chmod(0o755)
    return bindir


def run_sh(script: str | Path, *args: str, env: dict | None = None,
           path: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = _base_env() if env is None else env
    if path is not None:
        env = dict(env, PATH=str(path))
    script_path = script if isinstance(script, Path) else SCRIPTS / script
    return subprocess.run([BASH, str(script_path), *args], env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=120)


def grid_info(script: str) -> dict:
    """Array sizes and values of a sweep script's grid, read by sourcing it."""
    names = ["TASKS", "ARCHS", "SEEDS", "NUM_PERTURBATIONS", "FD_NUM_PERTURBATIONS",
             "BPTT_OPTIMIZERS", "ZO_LEARNING_RATES", "BPTT_LEARNING_RATES",
             "MODEL_SCALES", "MODEL_SIZES"]
    body = [f"source {SCRIPTS / script}"]
    for n in names:
        body.append(f'if declare -p {n} >/dev/null 2>&1; then '
                    f'echo "{n}=${{{n}[*]+${{{n}[*]}}}}"; fi')
    out = subprocess.run([BASH, "-c", "\n".join(body)], env=_base_env(),
                         capture_output=True, text=True, check=True).stdout
    info = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        info[key] = value.split()
    return info


def expected_runs(script: str) -> int:
    g = grid_info(script)
    sizes = g.get("MODEL_SCALES") or g.get("MODEL_SIZES")
    per_point = ((len(g["NUM_PERTURBATIONS"]) + len(g["FD_NUM_PERTURBATIONS"]))
                 * len(g["ZO_LEARNING_RATES"])
                 + len(g["BPTT_OPTIMIZERS"]) * len(g["BPTT_LEARNING_RATES"]))
    return len(g["TASKS"]) * len(g["ARCHS"]) * len(sizes) * len(g["SEEDS"]) * per_point


def parse_dry_run(stdout: str) -> list[tuple[str, str]]:
    lines = [l for l in stdout.splitlines() if l.strip()]
    parsed = []
    for line in lines:
        m = SCREEN_LINE.match(line)
        assert m, f"unexpected dry-run output line: {line!r}"
        parsed.append((m.group(1), m.group(2)))
    return parsed


def flag_value(command: str, flag: str) -> str | None:
    m = re.search(rf"(?:^|\s){re.escape(flag)} (\S+)", command)
    return m.group(1) if m else None


FAKE_SCREEN_LS = """\
There are screens on:
\t4242.zornn_a\t(11/28/2025 01:00:00 PM)\t(Detached)
\t4343.other_b\t(11/28/2025 01:00:00 PM)\t(Detached)
\t4444.zornnx_c\t(11/28/2025 01:00:00 PM)\t(Detached)
\t4545.my_zornn_d\t(11/28/2025 01:00:00 PM)\t(Attached)
\t4646.zornn_e.lr0.1\t(11/28/2025 01:00:00 PM)\t(Detached)
5 Sockets in /run/screen/S-user.
"""


def fake_screen(calls_dir: Path, listing: str = "No Sockets found in /run/screen/S-user.\n") -> str:
    """Body of a stub `screen`: `-ls` prints LISTING, every call is recorded
    (one argument per line) in CALLS_DIR/call_<n>, `-X hardcopy [-h] FILE`
    writes a fake window to FILE."""
    return f"""
calls={calls_dir!s}
mkdir -p "$calls"
shopt -s nullglob
existing=("$calls"/call_*)
n=${{#existing[@]}}
printf '%s\\n' "$@" > "$calls/call_$(printf '%04d' "$n")"
if [ "$1" = "-ls" ] || [ "$1" = "-list" ]; then
    cat <<'LISTING'
{listing}LISTING
    exit 1
fi
if [ "$3" = "-X" ] && [ "$4" = "hardcopy" ]; then
    out="${{@: -1}}"
    printf 'window line 1\\nwindow line 2\\nwindow line 3\\n\\n\\n' > "$out"
fi
exit 0
"""


def recorded_calls(calls_dir: Path) -> list[list[str]]:
    if not calls_dir.exists():
        return []
    return [p.read_text().splitlines() for p in sorted(calls_dir.glob("call_*"))]


def copy_scripts(tmp_path: Path) -> Path:
    """A throwaway 'repo' with a copy of scripts/, so runs write logs there."""
    root = tmp_path / "repo"
    shutil.copytree(SCRIPTS, root / "scripts",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


# ------------------------------------------------------------ sweep scripts --

def test_scripts_are_executable():
    for name in SHELL_SCRIPTS:
        assert os.access(SCRIPTS / name, os.X_OK), f"{name} is not executable"


@pytest.mark.parametrize("script", SWEEPS)
def test_dry_run_prints_one_screen_command_per_grid_point(script, tmp_path):
    res = run_sh(script, "--dry-run", "--max-iters", "7",
                 env=_base_env(ZORNN_NVIDIA_SMI=str(tmp_path / "nonexistent")),
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    runs = parse_dry_run(res.stdout)
    assert len(runs) == expected_runs(script) > 0
    names = [n for n, _ in runs]
    assert len(set(names)) == len(names)
    for name, inner in runs:
        assert name.startswith("zornn_")
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", name)
        assert "rge_series_experiments.py" in inner
        assert f"--metrics_out logs/{name}.jsonl" in inner
        assert f"tee logs/{name}.log" in inner
        assert flag_value(inner, "--max_iterations") == "7"
        assert "CUDA_VISIBLE_DEVICES=0 " in inner
        assert inner.startswith("cd ")
        for flag in ["--device", "--task", "--model_type", "--seq_length",
                     "--micro_batch_size", "--macro_batch_size", "--input_size",
                     "--hidden_size", "--num_heads", "--memory_size", "--head_size",
                     "--learning_rate_and_epsilon", "--num_perturbations", "--use_bptt",
                     "--use_adam", "--overfit_to_one_batch_flag", "--log_interval",
                     "--seed", "--wandb"]:
            assert flag_value(inner, flag) is not None, f"{flag} missing in {name}"
        assert flag_value(inner, "--wandb") == "false"
        assert flag_value(inner, "--device") == "cuda"
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("script", SWEEPS)
def test_dry_run_round_robin_over_gpus(script):
    res = run_sh(script, "--dry-run", "--gpus", "2")
    assert res.returncode == 0, res.stderr
    runs = parse_dry_run(res.stdout)
    devices = [re.search(r"CUDA_VISIBLE_DEVICES=(\d+) ", inner).group(1) for _, inner in runs]
    assert devices == [str(i % 2) for i in range(len(runs))]
    assert set(devices) == {"0", "1"}


def test_dnc_grid_matches_figure1_setting():
    g = grid_info("run_dnc_experiments.sh")
    res = run_sh("run_dnc_experiments.sh", "--dry-run")
    assert res.returncode == 0, res.stderr
    runs = parse_dry_run(res.stdout)
    zo_lrs, bptt_lrs = set(g["ZO_LEARNING_RATES"]), set(g["BPTT_LEARNING_RATES"])
    variants = set()
    for name, inner in runs:
        scale = int(re.search(r"_scale(\d+)_", name).group(1))
        width = str(128 * scale)
        for flag in ["--hidden_size", "--memory_size", "--head_size"]:
            assert flag_value(inner, flag) == width
        assert flag_value(inner, "--model_type") == "DNC"
        assert flag_value(inner, "--overfit_to_one_batch_flag") == "true"
        lr = flag_value(inner, "--learning_rate_and_epsilon")
        assert name.endswith(f"_lr{lr}_seed{flag_value(inner, '--seed')}")
        if "_bptt_" in name:
            variants.add("bptt_adam" if "_bptt_adam_" in name else "bptt_sgd")
            assert flag_value(inner, "--use_bptt") == "true"
            assert flag_value(inner, "--use_adam") == ("true" if "_bptt_adam_" in name else "false")
            assert lr in bptt_lrs
            assert "--fd_rge" not in inner
        else:
            m = re.search(r"_(cd|fd)rge(\d+)_", name)
            variants.add(m.group(0).strip("_"))
            assert flag_value(inner, "--use_bptt") == "false"
            assert flag_value(inner, "--num_perturbations") == m.group(2)
            assert lr in zo_lrs
            if m.group(1) == "fd":
                assert flag_value(inner, "--fd_rge") == "true"
            else:
                assert "--fd_rge" not in inner
    expected = ({f"cdrge{p}" for p in g["NUM_PERTURBATIONS"]}
                | {f"fdrge{p}" for p in g["FD_NUM_PERTURBATIONS"]}
                | {f"bptt_{o}" for o in g["BPTT_OPTIMIZERS"]})
    assert variants == expected


def test_lstm_grid_head_size_and_tasks():
    g = grid_info("run_lstm_experiments.sh")
    res = run_sh("run_lstm_experiments.sh", "--dry-run")
    assert res.returncode == 0, res.stderr
    runs = parse_dry_run(res.stdout)
    tasks = set()
    for name, inner in runs:
        hidden = int(flag_value(inner, "--hidden_size"))
        heads = int(flag_value(inner, "--num_heads"))
        assert int(flag_value(inner, "--head_size")) * heads == hidden
        assert flag_value(inner, "--model_type") == "LSTM"
        tasks.add(flag_value(inner, "--task"))
    assert tasks == set(g["TASKS"])


@pytest.mark.parametrize("script", SWEEPS)
def test_prefix_override(script):
    res = run_sh(script, "--dry-run", env=_base_env(ZORNN_SCREEN_PREFIX="abc"))
    assert res.returncode == 0, res.stderr
    assert all(name.startswith("abc_") for name, _ in parse_dry_run(res.stdout))


@pytest.mark.parametrize("script", SWEEPS)
def test_dry_run_needs_neither_screen_nor_gpu(script, tmp_path):
    bindir = make_bin(tmp_path)
    res = run_sh(script, "--dry-run", path=bindir, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(parse_dry_run(res.stdout)) == expected_runs(script)


@pytest.mark.parametrize("script", SWEEPS)
def test_without_nvidia_smi_exits_1(script, tmp_path):
    calls = tmp_path / "calls"
    bindir = make_bin(tmp_path, {"screen": fake_screen(calls)})
    res = run_sh(script, path=bindir, cwd=tmp_path)
    assert res.returncode == 1
    assert "nvidia-smi" in res.stderr
    assert recorded_calls(calls) == []

    res = run_sh(script, env=_base_env(ZORNN_NVIDIA_SMI="/nonexistent/nvidia-smi"),
                 path=bindir, cwd=tmp_path)
    assert res.returncode == 1
    assert "nvidia-smi" in res.stderr
    assert recorded_calls(calls) == []


@pytest.mark.parametrize("script", SWEEPS)
def test_zero_gpus_exits_1(script, tmp_path):
    calls = tmp_path / "calls"
    bindir = make_bin(tmp_path, {"screen": fake_screen(calls), "nvidia-smi": "exit 0\n"})
    res = run_sh(script, path=bindir, cwd=tmp_path)
    assert res.returncode == 1
    assert "GPU" in res.stderr
    assert recorded_calls(calls) == []


@pytest.mark.parametrize("script", SWEEPS)
def test_missing_screen_exits_1_with_install_hint(script, tmp_path):
    bindir = make_bin(tmp_path, {"nvidia-smi": "printf '0\\n'\n"})
    res = run_sh(script, path=bindir, cwd=tmp_path)
    assert res.returncode == 1
    assert "apt-get install" in res.stderr and "screen" in res.stderr


def test_launch_with_stub_screen_and_gpus(tmp_path):
    root = copy_scripts(tmp_path)
    calls = tmp_path / "calls"
    bindir = make_bin(tmp_path, {"screen": fake_screen(calls),
                                 "nvidia-smi": "printf '0\\n1\\n'\n"})
    script = root / "scripts" / "run_dnc_experiments.sh"
    res = run_sh(script, "--max-iters", "3", path=bindir, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    launches = [c for c in recorded_calls(calls) if c and c[0] == "-dmS"]
    assert len(launches) == expected_runs("run_dnc_experiments.sh")
    assert (root / "logs").is_dir()
    for i, call in enumerate(launches):
        assert len(call) == 5 and call[2:4] == ["bash", "-c"]
        name, inner = call[1], call[4]
        assert name.startswith("zornn_")
        assert inner.startswith(f"cd {root} && CUDA_VISIBLE_DEVICES={i % 2} ")
        assert f"--metrics_out logs/{name}.jsonl" in inner
        assert flag_value(inner, "--max_iterations") == "3"


def test_launch_restricted_to_requested_gpus(tmp_path):
    root = copy_scripts(tmp_path)
    calls = tmp_path / "calls"
    bindir = make_bin(tmp_path, {"screen": fake_screen(calls),
                                 "nvidia-smi": "printf '0\\n1\\n2\\n3\\n'\n"})
    script = root / "scripts" / "run_dnc_experiments.sh"
    res = run_sh(script, "--gpus", "1", path=bindir, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    launches = [c for c in recorded_calls(calls) if c and c[0] == "-dmS"]
    assert launches and all("CUDA_VISIBLE_DEVICES=0 " in c[4] for c in launches)

    res = run_sh(script, "--gpus", "5", path=bindir, cwd=tmp_path)
    assert res.returncode == 1
    assert "GPU" in res.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_help_and_unknown_option(script, tmp_path):
    res = run_sh(script, "--help", path=make_bin(tmp_path))
    assert res.returncode == 0
    assert "Usage" in res.stdout
    res = run_sh(script, "--no-such-option", path=tmp_path / "bin")
    assert res.returncode == 2
    assert "Usage" in res.stderr


# --------------------------------------------------------- screen helpers --

def test_kill_screens_dry_run_targets_only_project_sessions(tmp_path):
    calls = tmp_path / "calls"
    bindir = make_bin(tmp_path, {"screen": fake_screen(calls, FAKE_SCREEN_LS)})
    res = run_sh("kill_screens.sh", "--dry-run", path=bindir)
    assert res.returncode == 0, res.stderr
    assert "4242.zornn_a" in res.stdout
    assert "4646.zornn_e.lr0.1" in res.stdout
    for other in ["other_b", "zornnx_c", "my_zornn_d"]:
        assert other not in res.stdout
    assert "2" in res.stdout.splitlines()[-1]
    assert all(c[0] in ("-ls", "-list") for c in recorded_calls(calls))


def test_kill_screens_quits_only_project_sessions(tmp_path):
    calls = tmp_path / "calls"
    bindir = make_bin(tmp_path, {"screen": fake_screen(calls, FAKE_SCREEN_LS)})
    res = run_sh("kill_screens.sh", path=bindir)
    assert res.returncode == 0, res.stderr
    quits = [c for c in recorded_calls(calls) if "-X" in c]
    assert sorted(quits) == [["-S", "4242.zornn_a", "-X", "quit"],
                             ["-S", "4646.zornn_e.lr0.1", "-X", "quit"]]
    assert "Killed 2 session(s)" in res.stdout


def test_kill_screens_honours_prefix_and_handles_no_sessions(tmp_path):
    calls = tmp_path / "calls"
    bindir = make_bin(tmp_path, {"screen": fake_screen(calls, FAKE_SCREEN_LS)})
    res = run_sh("kill_screens.sh", "--dry-run", path=bindir,
                 env=_base_env(ZORNN_SCREEN_PREFIX="other"))
    assert res.returncode == 0
    assert "4343.other_b" in res.stdout and "zornn_a" not in res.stdout

    res = run_sh("kill_screens.sh", path=bindir, env=_base_env(ZORNN_SCREEN_PREFIX="none"))
    assert res.returncode == 0
    assert "0 session(s)" in res.stdout
    assert not [c for c in recorded_calls(calls) if "-X" in c]


@pytest.mark.parametrize("script", ["kill_screens.sh", "capture_screen_logs.sh"])
def test_screen_helpers_without_screen_exit_1(script, tmp_path):
    res = run_sh(script, path=make_bin(tmp_path))
    assert res.returncode == 1
    assert "apt-get install" in res.stderr


def test_capture_screen_logs_tails_logs_and_falls_back_to_hardcopy(tmp_path):
    root = copy_scripts(tmp_path)
    (root / "logs").mkdir()
    (root / "logs" / "zornn_a.log").write_text("".join(f"line {i}\n" for i in range(1, 31)))
    (root / "logs" / "other_b.log").write_text("not ours\n")
    (root / "logs" / "zornn_done.log").write_text("finished run\n")
    calls = tmp_path / "calls"
    bindir = make_bin(tmp_path, {"screen": fake_screen(calls, FAKE_SCREEN_LS)})
    script = root / "scripts" / "capture_screen_logs.sh"

    res = run_sh(script, "-n", "5", path=bindir)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "===== zornn_a " in out
    assert "line 30" in out and "line 26" in out and "line 25" not in out
    assert "other_b" not in out and "my_zornn_d" not in out and "zornnx_c" not in out
    # zornn_e.lr0.1 has no log: its window is captured with hardcopy
    assert "===== zornn_e.lr0.1 " in out
    assert "window line 3" in out
    assert "finished run" not in out
    hardcopies = [c for c in recorded_calls(calls) if "hardcopy" in c]
    assert len(hardcopies) == 1 and hardcopies[0][1] == "4646.zornn_e.lr0.1"

    res = run_sh(script, "--all", "-n", "1", path=bindir)
    assert res.returncode == 0, res.stderr
    assert "finished run" in res.stdout
    assert "line 30" in res.stdout and "line 29" not in res.stdout


def test_capture_screen_logs_default_tail_and_no_sessions(tmp_path):
    root = copy_scripts(tmp_path)
    (root / "logs").mkdir()
    (root / "logs" / "zornn_a.log").write_text("".join(f"line {i}\n" for i in range(1, 31)))
    bindir = make_bin(tmp_path, {"screen": fake_screen(tmp_path / "calls", FAKE_SCREEN_LS)})
    res = run_sh(root / "scripts" / "capture_screen_logs.sh", path=bindir)
    assert res.returncode == 0, res.stderr
    assert "line 11\n" in res.stdout and "line 10\n" not in res.stdout

    empty_bin = make_bin(tmp_path, {"screen": fake_screen(tmp_path / "calls2")}, name="bin2")
    res = run_sh(root / "scripts" / "capture_screen_logs.sh", path=empty_bin)
    assert res.returncode == 0
    assert "No screen sessions" in res.stdout


# ---------------------------------------------------------------- collect --

def _load_collect():
    spec = importlib.util.spec_from_file_location("zornn_collect", SCRIPTS / "collect.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


collect = _load_collect()


def _write_jsonl(path: Path, records, extra_lines=()) -> None:
    lines = [json.dumps(r) for r in records]
    for index, text in extra_lines:
        lines.insert(index, text)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def sample_logs(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    losses_a = [2.0, 1.0, 0.5, 0.1, 0.09, 0.2, 0.05]
    _write_jsonl(
        logs / "zornn_copy_DNC_cdrge96.jsonl",
        [{"step": 10 * i, "train_loss": l, "val_accuracy": 0.1 * i, "elapsed_s": 1.5 * i,
          "lr": 0.01, "task": "copy"}
         for i, l in enumerate(losses_a)],
        extra_lines=[(3, "{this is not json"), (5, "")],
    )
    _write_jsonl(
        logs / "second.jsonl",
        [{"run": "zornn_copy_DNC_bptt_adam", "step": s, "train_loss": 3.0 - s,
          "val_loss": 2.5 - s, "step_time_s": 0.25, "peak_mem_bytes": 1000 + s}
         for s in range(3)],
    )
    return logs


def test_collect_writes_csvs_and_summary(sample_logs, tmp_path, capsys):
    out = tmp_path / "out"
    assert collect.main([str(sample_logs), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "zornn_copy_DNC_cdrge96.jsonl:4" in captured.err
    assert "skipped 1 malformed line" in captured.out
    assert "zornn_copy_DNC_bptt_adam" in captured.out

    with (out / "runs.csv").open() as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames
        rows = list(reader)
    assert columns[:2] == ["run", "step"]
    assert set(columns) == {"run", "step", "train_loss", "val_accuracy", "elapsed_s", "lr",
                            "task", "val_loss", "step_time_s", "peak_mem_bytes"}
    assert len(rows) == 7 + 3
    assert {r["run"] for r in rows} == {"zornn_copy_DNC_cdrge96", "zornn_copy_DNC_bptt_adam"}
    adam_rows = [r for r in rows if r["run"] == "zornn_copy_DNC_bptt_adam"]
    assert [r["step"] for r in adam_rows] == ["0", "1", "2"]
    assert adam_rows[0]["elapsed_s"] == "" and adam_rows[0]["peak_mem_bytes"] == "1000"

    with (out / "summary.csv").open() as fh:
        summary = {r["run"]: r for r in csv.DictReader(fh)}
    a = summary["zornn_copy_DNC_cdrge96"]
    assert int(a["last_step"]) == 60
    assert float(a["first_train_loss"]) == 2.0
    assert float(a["last_train_loss"]) == 0.05
    assert float(a["best_train_loss"]) == 0.05
    assert a["steps_to_loss_0.1"] == "40"   # 0.1 at step 30 is not below 0.1
    assert float(a["best_val_accuracy"]) == pytest.approx(0.6)
    assert a["best_val_loss"] == ""
    assert float(a["wall_clock_s"]) == pytest.approx(9.0)
    assert a["skipped_lines"] == "1"
    assert a["task"] == "copy"

    b = summary["zornn_copy_DNC_bptt_adam"]
    assert int(b["last_step"]) == 2
    assert float(b["best_train_loss"]) == 1.0
    assert float(b["best_val_loss"]) == 0.5
    assert b["steps_to_loss_0.1"] == ""
    assert b["best_val_accuracy"] == ""
    assert float(b["wall_clock_s"]) == pytest.approx(0.75)   # sum of step_time_s
    assert b["skipped_lines"] == "0"


def test_collect_plots(sample_logs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    assert collect.main([str(sample_logs), "--out", str(out)]) == 0
    for name in ["loss_vs_step.png", "loss_vs_time.png", "val_accuracy_vs_step.png"]:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG"), name


def test_collect_no_plots_and_filter(sample_logs, tmp_path, capsys):
    out = tmp_path / "out"
    assert collect.main([str(sample_logs / "second.jsonl"), str(sample_logs / "zornn_copy_DNC_cdrge96.jsonl"),
                         "--out", str(out), "--no-plots", "--filter", "bptt"]) == 0
    assert not list(out.glob("*.png"))
    with (out / "summary.csv").open() as fh:
        assert [r["run"] for r in csv.DictReader(fh)] == ["zornn_copy_DNC_bptt_adam"]
    with (out / "runs.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 3
    capsys.readouterr()


def test_collect_without_val_accuracy_skips_that_plot(tmp_path):
    pytest.importorskip("matplotlib")
    logs = tmp_path / "logs"
    logs.mkdir()
    _write_jsonl(logs / "r.jsonl", [{"step": s, "train_loss": 1.0 / (s + 1)} for s in range(5)])
    out = tmp_path / "out"
    assert collect.main([str(logs), "--out", str(out)]) == 0
    assert (out / "loss_vs_step.png").exists()
    assert (out / "loss_vs_time.png").exists()
    assert not (out / "val_accuracy_vs_step.png").exists()


def test_collect_time_axis():
    assert collect.time_axis([{"step": 0, "elapsed_s": 2.0}, {"step": 1, "elapsed_s": 3.5}]) == [2.0, 3.5]
    assert collect.time_axis([{"step": 0, "step_time_s": 0.5}, {"step": 1, "step_time_s": 0.25},
                              {"step": 2}]) == [0.5, 0.75, 0.75]
    assert collect.time_axis([{"step": 0}]) == [None]


def test_collect_rejects_records_without_step(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text('{"step": 1, "train_loss": 1.0}\n[1, 2]\n{"train_loss": 0.5}\n')
    result = collect.load_runs([path])
    assert result.skipped_lines == 2
    assert len(result.runs["r"].records) == 1
    assert result.runs["r"].skipped_lines == 2
    err = capsys.readouterr().err
    assert f"{path}:2" in err and f"{path}:3" in err


def test_collect_no_input_files(tmp_path, capsys):
    assert collect.main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 1
    assert "no .jsonl files" in capsys.readouterr().err


def test_collect_cli(sample_logs, tmp_path):
    out = tmp_path / "cli_out"
    res = subprocess.run([sys.executable, str(SCRIPTS / "collect.py"), str(sample_logs),
                          "--out", str(out), "--no-plots"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (out / "runs.csv").exists() and (out / "summary.csv").exists()
    assert "steps_to_loss_0.1" in res.stdout
