"""Distributed CD-RGE on CPU/gloo: world-size invariance, series equality, replicas, NaN agreement,
resume, checkpoint errors, the language-modelling tasks, the CLI under torchrun.

Workers are spawned on a free port by tests/_spawn.py, each with one CPU thread, so that runs at
different world sizes do exactly the same arithmetic and can be compared bit for bit.
The end-to-end launcher tests are marked `slow` (deselect with -m "not slow").

The default task is `lm` on the embedded corpus. Every test here reads it from a temp cache
(ZO_RNN_CACHE, assembled once per module) with the hub forced offline (HF_HUB_OFFLINE=1,
HF_DATASETS_OFFLINE=1); the offline-error checks also get a fresh, empty HF_HOME.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _spawn import free_port, run_workers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(task="copy", hidden_size=16, num_heads=2, input_size=8, batch_size=4, min_seq_len=3, max_num=8,
            verbose=False, device="cpu")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def lm_cache(tmp_path_factory):
    """A module-wide token cache with the embedded corpus in it, and the hub forced offline."""
    cache = str(tmp_path_factory.mktemp("zo_rnn_cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZO_RNN_CACHE", cache)
        for k, v in OFFLINE_ENV.items():
            mp.setenv(k, v)
        from tasks import build_lm_task
        build_lm_task("lm", seq_length=8)        # assemble + tokenise once (~6 s); later builds open the cache
        yield cache


def _lm_env(cache: str) -> dict:
    return {"ZO_RNN_CACHE": cache, **OFFLINE_ENV}


def _master_bytes(engine) -> dict:
    return {p.name: p.master.detach().cpu().contiguous().numpy().tobytes() for p in engine.params}


def _state_bytes(sd: dict) -> dict:
    return {k: v.contiguous().numpy().tobytes() for k, v in sd.items()}


def _run(cfg_kwargs: dict, comm):
    from train.distributed import DistConfig, DistributedTrainer
    tr = DistributedTrainer(DistConfig(**cfg_kwargs), comm, out=io.StringIO())
    return tr, tr.run()


# ---------------------------------------------------------------------------------------------- workers
def _invariance_worker(rank, world, configs, tmp):
    """Train every config on this world; return theta bytes, bytes per step and a mismatch check."""
    from zo.comm import ReplicaMismatchError
    from zo.dist import init_comm
    comm = init_comm(device_arg="cpu", init_timeout_s=60)
    out = {"world": comm.world_size, "runs": []}
    try:
        for i, (kw, n_total) in enumerate(configs):
            mp = n_total // world
            metrics = os.path.join(tmp, f"w{world}_c{i}.jsonl")
            kw = dict(kw, meta_perturbations=mp, checkpoint_dir=os.path.join(tmp, f"ck_w{world}_c{i}"),
                      metrics_out=metrics)
            tr, summary = _run(kw, comm)
            steps = [json.loads(line) for line in open(metrics)] if rank == 0 else []
            out["runs"].append({"master": _master_bytes(tr.engine), "summary": summary,
                                "bytes": [r["bytes_communicated"] for r in steps]})
        if world > 1:
            try:
                comm.check_replicas(float(rank), step=7)
                out["mismatch"] = None
            except ReplicaMismatchError as e:
                out["mismatch"] = str(e)
    finally:
        comm.close()
    return out


def _series_reference(rank, world, configs):
    """The series engine: ZOEngine + zo_step + LocalComm, one process, the same seeds and batches."""
    from models import build_model
    from train.distributed import DistConfig, build_dist_task, data_seed, make_batch
    from train.evaluate import batch_loss
    from train.zo_step import zo_step
    from zo.comm import LocalComm
    from zo.estimator import ZOConfig, ZOEngine
    from zo.schedule import learning_rate
    outs = []
    for kw, n_total in configs:
        cfg = DistConfig(**kw)
        task = build_dist_task(cfg)
        model = build_model(cfg.model_config(task.vocab_size), generator=torch.Generator().manual_seed(cfg.seed))
        for p in model.parameters():
            p.requires_grad_(False)
        zcfg = ZOConfig(num_perturbations=n_total, adam=cfg.adam)
        engine = ZOEngine(model.named_parameters(), config=zcfg, run_seed=cfg.seed)
        init = _master_bytes(engine)

        def closure(b):
            def fn():
                with torch.inference_mode():
                    return batch_loss(model, b, time_chunk=64)
            return fn
        for step in range(cfg.max_iters):
            lr = learning_rate(step, base_lr=cfg.learning_rate, schedule=cfg.learn_rate_schedule,
                               warmup_iters=cfg.warmup_iters, cosine_wavelength=cfg.cosine_wavelength)

            def loss_for_probe(i, step=step):
                probe = i if cfg.per_probe_batch else None
                b = make_batch(task, seed=data_seed(cfg.seed, step, probe), batch_size=cfg.batch_size,
                               max_len=cfg.min_seq_len, device="cpu")
                return closure(b)
            zo_step(engine, step=step, lr=lr, loss_for_probe=loss_for_probe, comm=LocalComm())
        final = _master_bytes(engine)
        assert all(final[k] != init[k] for k in final), "the reference did not train"
        outs.append(final)
    return outs


INVARIANCE_CONFIGS = [
    (dict(TINY, mode="train", max_iters=4, learning_rate=0.05, adam=True, learn_rate_schedule="cosine",
          warmup_iters=2, cosine_wavelength=3, val_iters=1000, sync_check_iters=1000), 8),
    (dict(TINY, mode="train", max_iters=3, learning_rate=0.1, adam=False, per_probe_batch=True, seed=5,
          val_iters=1000, sync_check_iters=1000), 8),
]


def test_world_sizes_series_and_replicas_agree_bitwise(tmp_path):
    ref = run_workers(_series_reference, world_size=1, args=(INVARIANCE_CONFIGS,))[0]
    by_world = {}
    for world in (1, 2, 4):
        by_world[world] = run_workers(_invariance_worker, world_size=world, args=(INVARIANCE_CONFIGS, str(tmp_path)))
    for c, (kw, n_total) in enumerate(INVARIANCE_CONFIGS):
        for world, outs in by_world.items():
            for rank, o in enumerate(outs):
                run = o["runs"][c]
                assert run["summary"]["n_total"] == n_total and run["summary"]["step"] == kw["max_iters"]
                assert run["master"] == ref[c], f"config {c}: world {world} rank {rank} differs from the series engine"
            # only scalars on the wire: each step moves the [n_total, 2] fp32 loss table, nothing else
            expect = 0 if world == 1 else n_total * 2 * 4
            assert outs[0]["runs"][c]["bytes"] == [expect] * kw["max_iters"]
    for world in (2, 4):
        msgs = [o["mismatch"] for o in by_world[world]]
        assert all(m and "after step 7" in m and "rank 1" in m for m in msgs), msgs


def _nan_worker(rank, world, tmp):
    from train.zo_step import NonFiniteLossError
    from zo.dist import init_comm
    comm = init_comm(device_arg="cpu", init_timeout_s=60)
    ck = os.path.join(tmp, "ck")
    kw = dict(TINY, mode="train", max_iters=10, meta_perturbations=2, learning_rate=0.05, val_iters=2,
              checkpoint_dir=ck, debug_nan_at_step=4, debug_nan_rank=1)
    from train.distributed import DistConfig, DistributedTrainer
    try:
        tr = DistributedTrainer(DistConfig(**kw), comm, out=io.StringIO())
        try:
            tr.run()
            return {"error": None}
        except NonFiniteLossError as e:
            comm.barrier()   # rank 0 finished writing before anyone reads
            ck_master = torch.load(os.path.join(ck, "latest.pt"), weights_only=False)
            return {"error": str(e), "step": e.step, "trainer_step": tr.step, "master": _master_bytes(tr.engine),
                    "ckpt_step": ck_master["step"], "ckpt_master": _state_bytes(ck_master["optimizer_state"]["master"])}
    finally:
        comm.close()


def test_nan_on_one_rank_stops_every_rank_before_the_update(tmp_path):
    outs = run_workers(_nan_worker, world_size=2, args=(str(tmp_path),))
    for rank, o in enumerate(outs):
        assert o["error"] is not None, f"rank {rank} did not stop"
        assert o["step"] == 4 and o["trainer_step"] == 4
        assert "non-finite loss at step 4" in o["error"] and "Lower the learning rate" in o["error"]
        assert "latest.pt, step 4" in o["error"]
        assert o["ckpt_step"] == 4
        assert o["master"] == o["ckpt_master"], f"rank {rank}: theta moved on the NaN step"
    assert outs[0]["master"] == outs[1]["master"]


def _stacked_worker(rank, world, tmp):
    """Several perturbed models per forward: replicas stay bitwise equal, theta matches the
    one-at-a-time path to rounding, and a NaN still stops every rank before the update."""
    from train.zo_step import NonFiniteLossError
    from zo.dist import init_comm
    comm = init_comm(device_arg="cpu", init_timeout_s=60)
    kw = dict(TINY, mode="train", max_iters=3, meta_perturbations=4, learning_rate=0.05, adam=True, val_iters=1000)
    try:
        out = {}
        for mpp in (1, 4):
            tr, _ = _run(dict(kw, models_per_pass=mpp, checkpoint_dir=os.path.join(tmp, f"m{mpp}")), comm)
            assert tr.models_per_pass == mpp
            out[mpp] = {p.name: p.master.clone().numpy() for p in tr.engine.params}
            out[f"{mpp}_bytes"] = _master_bytes(tr.engine)
        try:
            _run(dict(kw, models_per_pass=4, debug_nan_at_step=1, debug_nan_rank=0,
                      checkpoint_dir=os.path.join(tmp, "nan")), comm)
            out["nan"] = None
        except NonFiniteLossError as e:
            out["nan"] = e.step
        return out
    finally:
        comm.close()


def test_stacked_probe_path_keeps_replicas_equal(tmp_path):
    import numpy as np
    outs = run_workers(_stacked_worker, world_size=2, args=(str(tmp_path),))
    assert outs[0]["4_bytes"] == outs[1]["4_bytes"] and outs[0]["1_bytes"] == outs[1]["1_bytes"]
    for name, a in outs[0][1].items():
        np.testing.assert_allclose(outs[0][4][name], a, rtol=1e-4, atol=1e-5)
    assert [o["nan"] for o in outs] == [1, 1]


def _resume_worker(rank, world, tmp):
    from zo.dist import init_comm
    comm = init_comm(device_arg="cpu", init_timeout_s=60)
    base = dict(TINY, mode="train", meta_perturbations=4 // comm.world_size, learning_rate=0.05, adam=True,
                learn_rate_schedule="cosine", warmup_iters=2, cosine_wavelength=4, max_seq_len=6,
                step_seq_len=1, step_seq_len_loss_thresh=100.0, patience_seq_len=2, val_iters=1000)
    try:
        if comm.world_size == 1:   # resume the world-2 checkpoint with one process: same n_total
            tr, _ = _run(dict(base, max_iters=6, checkpoint_dir=os.path.join(tmp, "d"),
                              load_from_checkpoint=os.path.join(tmp, "b", "latest.pt")), comm)
            return {"resumed_w1": _master_bytes(tr.engine)}
        a, _ = _run(dict(base, max_iters=6, checkpoint_dir=os.path.join(tmp, "a")), comm)
        b, sb = _run(dict(base, max_iters=3, checkpoint_dir=os.path.join(tmp, "b")), comm)
        comm.barrier()
        c, sc = _run(dict(base, max_iters=6, checkpoint_dir=os.path.join(tmp, "c"),
                          load_from_checkpoint=os.path.join(tmp, "b", "latest.pt")), comm)
        return {"straight": _master_bytes(a.engine), "resumed": _master_bytes(c.engine),
                "adam": (a.engine.state.adam_step, c.engine.state.adam_step),
                "adam_m": ({k: v.numpy().tobytes() for k, v in a.engine.state.adam_m.items()},
                           {k: v.numpy().tobytes() for k, v in c.engine.state.adam_m.items()}),
                "curriculum": (a.curriculum.state_dict(), c.curriculum.state_dict()),
                "half": _master_bytes(b.engine), "steps": (sb["step"], sc["start_step"], sc["steps_run"])}
    finally:
        comm.close()


def test_resume_equals_straight_run_bitwise(tmp_path):
    outs = run_workers(_resume_worker, world_size=2, args=(str(tmp_path),))
    for o in outs:
        assert o["steps"] == (3, 3, 3)
        assert o["resumed"] == o["straight"] and o["half"] != o["straight"]
        assert o["adam"] == (6, 6) and o["adam_m"][0] == o["adam_m"][1]
        assert o["curriculum"][0] == o["curriculum"][1]
        assert o["curriculum"][0]["current_max_seq_len"] > 3   # the curriculum did move and was resumed
    ck = torch.load(tmp_path / "a" / "latest.pt", weights_only=False)
    for key in ("model_state_dict", "model_args", "step", "config", "run_seed", "schedule", "curriculum",
                "optimizer_state"):
        assert key in ck
    assert ck["step"] == 6 and ck["config"]["max_iters"] == 6 and ck["optimizer_state"]["adam_step"] == 6
    w1 = run_workers(_resume_worker, world_size=1, args=(str(tmp_path),))[0]
    assert w1["resumed_w1"] == outs[0]["straight"]


# ---------------------------------------------------------------------------------------------- errors
def _local(**kw):
    from zo.comm import LocalComm
    torch.set_num_threads(1)
    return _run(dict(TINY, **kw), LocalComm())


def test_corrupt_and_truncated_checkpoints_get_clear_errors(tmp_path):
    from train.checkpoint import CheckpointError
    _local(max_iters=2, meta_perturbations=2, checkpoint_dir=str(tmp_path / "ok"))
    good = (tmp_path / "ok" / "latest.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    for name in ("trunc.pt", "junk.pt"):
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            _local(max_iters=4, meta_perturbations=2, load_from_checkpoint=str(tmp_path / name),
                   checkpoint_dir=str(tmp_path / "x"))
    with pytest.raises(CheckpointError, match="does not exist"):
        _local(max_iters=4, meta_perturbations=2, load_from_checkpoint=str(tmp_path / "missing.pt"))


def test_architecture_mismatch_gets_clear_error(tmp_path):
    from train.checkpoint import CheckpointError
    _local(max_iters=1, meta_perturbations=2, checkpoint_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match=r"another architecture \(hidden_size: checkpoint 16 vs run 24"):
        _local(max_iters=2, meta_perturbations=2, hidden_size=24, load_from_checkpoint=str(tmp_path / "latest.pt"),
               checkpoint_dir=str(tmp_path / "x"))


def _cli(argv, capsys, monkeypatch):
    import distributed_rge
    for v in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    try:
        rc = distributed_rge.main(argv)
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_user_errors_are_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    torch.set_num_threads(1)
    rc, _, err = _cli(["--adaptive", "true"], capsys, monkeypatch)
    assert rc == 2 and "--adaptive True is not implemented" in err and "Traceback" not in err
    rc, _, err = _cli(["--task", "copy", "--tokenizer", "hf"], capsys, monkeypatch)
    assert rc == 2 and "uses the numeric tokenizer" in err and "Traceback" not in err
    rc, _, err = _cli(["--task", "lm", "--tokenizer", "numeric"], capsys, monkeypatch)
    assert rc == 2 and "is text" in err and "--tokenizer_path DIR" in err
    rc, _, err = _cli(["--task", "copy", "--tokenizer_path", str(tmp_path)], capsys, monkeypatch)
    assert rc == 2 and "--tokenizer_path applies to the text tasks" in err
    rc, _, err = _cli(["--tokenizer", "char", "--tokenizer_path", str(tmp_path)], capsys, monkeypatch)
    assert rc == 2 and "drop one" in err
    rc, _, err = _cli(["--dataset", str(tmp_path / "missing.txt"), "--checkpoint_dir", str(tmp_path / "ck")],
                      capsys, monkeypatch)
    assert rc == 2 and "missing.txt" in err and "Traceback" not in err   # the builder's message
    rc, _, err = _cli(["--device", "cpu", "--hidden_size", "1000000", "--num_heads", "1000", "--input_size", "100",
                       "--checkpoint_dir", str(tmp_path)], capsys, monkeypatch)
    assert rc == 2 and "needs about" in err and "available" in err and "Traceback" not in err
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 64)
    rc, _, err = _cli(["--device", "cpu", "--load_from_checkpoint", str(tmp_path / "bad.pt")], capsys, monkeypatch)
    assert rc == 2 and "corrupt or truncated" in err
    rc, _, err = _cli(["--task", "lm_char"], capsys, monkeypatch)
    assert rc == 2 and "--dataset" in err
    rc, _, err = _cli(["--scatter_batch", "true", "--central_difference", "false"], capsys, monkeypatch)
    assert rc == 2 and "central differences" in err


def test_cli_nan_exits_nonzero_and_keeps_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    torch.set_num_threads(1)
    args = ["--device", "cpu", "--hidden_size", "16", "--num_heads", "2", "--input_size", "8", "--batch_size", "4",
            "--meta_perturbations", "2", "--mode", "train", "--val_iters", "2", "--max_iters", "6",
            "--checkpoint_dir", str(tmp_path), "--debug_nan_at_step", "3", "--verbose", "false",
            "--metrics_out", str(tmp_path / "m.jsonl")]
    rc, out, err = _cli(args, capsys, monkeypatch)
    assert rc == 3, err
    assert "error: non-finite loss at step 3" in err and "--learning_rate" in err and "Traceback" not in err
    assert torch.load(tmp_path / "latest.pt", weights_only=False)["step"] == 2
    recs = [json.loads(line) for line in open(tmp_path / "m.jsonl")]
    assert [r["step"] for r in recs] == [0, 1, 2]
    assert {"step", "train_loss", "lr", "step_time_s", "elapsed_s", "peak_mem_bytes",
            "bytes_communicated"} <= set(recs[0])
    assert "val_loss" in recs[1] and "val_accuracy" in recs[1]


def test_curriculum_grows_after_patience():
    from train.distributed import SeqLenCurriculum
    c = SeqLenCurriculum(current=3, max_len=6, step_len=2, thresh=0.5, patience=2)
    assert [c.update(x) for x in (0.4, 0.6, 0.4, 0.4)] == [False, False, False, True] and c.current == 5
    assert [c.update(x) for x in (0.1, 0.1)] == [False, True] and c.current == 6
    assert not c.update(0.0) and c.current == 6
    c2 = SeqLenCurriculum(current=3, max_len=6, step_len=2, thresh=0.5, patience=2)
    c2.load_state_dict(c.state_dict())
    assert c2 == c


def test_init_timeout_is_clear(tmp_path):
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "distributed_rge.py"), "--device", "cpu", "--init_timeout_s", "2",
                        "--checkpoint_dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 5, r.stderr
    assert "did not come up within 2 s" in r.stderr and "NCCL_P2P_DISABLE=1" in r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------- language modelling
LM_KW = dict(TINY, task="lm", mode="train", max_iters=4, min_seq_len=6, max_seq_len=8, step_seq_len=1,
             step_seq_len_loss_thresh=100.0, patience_seq_len=1, learning_rate=0.05, adam=True, val_iters=2,
             val_batch_size=8, sync_check_iters=1000)
LM_N_TOTAL = 8


def _lm_worker(rank, world, tmp):
    """Train mode on the default lm task (embedded corpus, char tokenizer) with a growing curriculum
    and validation; n_total is fixed, so every world size must end with the same bits."""
    from train.distributed import DistConfig, DistributedTrainer
    from zo.dist import init_comm
    comm = init_comm(device_arg="cpu", init_timeout_s=60)
    try:
        metrics = os.path.join(tmp, f"lm_w{world}.jsonl")
        kw = dict(LM_KW, meta_perturbations=LM_N_TOTAL // world, checkpoint_dir=os.path.join(tmp, f"lm_ck_w{world}"),
                  metrics_out=metrics)
        log = io.StringIO()
        tr = DistributedTrainer(DistConfig(**kw), comm, out=log)
        summary = tr.run()
        b = tr.batch_for(1)
        return {"master": _master_bytes(tr.engine), "summary": summary, "log": log.getvalue(),
                "recs": [json.loads(line) for line in open(metrics)] if rank == 0 else [],
                "batch": (tuple(b.inputs.shape), b.inputs.numpy().tobytes(), b.targets.numpy().tobytes()),
                "describe": tr.task.describe()}
    finally:
        comm.close()


@pytest.fixture(scope="module")
def lm_runs(lm_cache, tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("lm_runs"))
    return {w: run_workers(_lm_worker, world_size=w, args=(tmp,), env=_lm_env(lm_cache)) for w in (1, 2)}


def test_lm_train_mode_on_two_ranks_logs_bits_per_char(lm_runs):
    outs = lm_runs[2]
    o = outs[0]
    assert o["describe"]["task"] == "lm" and o["describe"]["dataset"].startswith("embedded")
    assert o["summary"]["step"] == 4 and o["summary"]["n_total"] == LM_N_TOTAL
    recs = o["recs"]
    assert [r["current_max_seq_len"] for r in recs] == [6, 7, 8, 8]       # curriculum -> train_batch(max_len=...)
    for r in recs:
        assert r["bytes_communicated"] >= LM_N_TOTAL * 2 * 4
    val = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in val] == [1, 3]
    for r in val:
        assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]))
        assert r["val_bits_per_token"] == pytest.approx(r["val_loss"] / math.log(2))
        assert r["val_bits_per_char"] == r["val_bits_per_token"]             # char tokenizer: one char per token
        assert 0 < r["val_bits_per_char"] < 8
    log = o["log"]
    assert re.search(r"\[Train\] Iteration 1, train_loss = [0-9.]+, lr = [0-9.e-]+, val_loss = [0-9.]+, "
                     r"val_perplexity = [0-9.e+]+, val_bits_per_token = [0-9.]+, val_bits_per_char = [0-9.]+, "
                     r"current_max_seq_len = 7", log), log
    assert log.count("prompt: ") == 4 and log.count(" | greedy: ") == 4      # 2 greedy samples per validation
    assert outs[1]["log"] == "" and outs[1]["recs"] == []                    # rank 0 logs alone
    # every rank drew the same batches itself (nothing is broadcast) and holds the same theta
    assert outs[0]["batch"] == outs[1]["batch"] and outs[0]["batch"][0] == (4, 9)
    assert outs[0]["master"] == outs[1]["master"]


def test_lm_world_sizes_agree_bitwise(lm_runs):
    one, two = lm_runs[1][0], lm_runs[2]
    assert one["summary"]["n_total"] == two[0]["summary"]["n_total"] == LM_N_TOTAL
    for o in two:
        assert o["master"] == one["master"], "lm task: world 2 differs from world 1 with the same n_total"
    assert [r["train_loss"] for r in one["recs"]] == [r["train_loss"] for r in two[0]["recs"]]
    assert [r["val_loss"] for r in one["recs"] if "val_loss" in r] == \
        [r["val_loss"] for r in two[0]["recs"] if "val_loss" in r]


def test_default_task_is_lm(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import distributed_rge
    from train.distributed import DistConfig
    assert distributed_rge.build_parser().parse_args([]).task == "lm" and DistConfig().task == "lm"
    rc, out, err = _cli(["--max_iters", "2", "--checkpoint_dir", str(tmp_path)], capsys, monkeypatch)
    assert rc == 0, err
    assert "task lm on embedded" in out and "char tokenizer" in out and "(vocab 100)" in out
    assert "FINISHED TRAINING" in out
    ck = torch.load(tmp_path / "latest.pt", weights_only=False)
    assert ck["config"]["task"] == "lm" and ck["model_args"]["vocab_size"] == 100


OFFLINE_CLI_SCRIPT = """
import contextlib, io, json, sys
sys.path.insert(0, {root!r})
import models
import train.distributed as d

def no_model(*a, **k):
    raise SystemExit("a model was built")

fits_calls = []
real_fits, real_avail = d.check_fits, models.available_memory_bytes
models.available_memory_bytes = lambda dev: min(real_avail(dev), 32 * 2**30)   # <= 32 GiB, as on small hosts

def counting_fits(*a, **k):
    fits_calls.append(1)
    return real_fits(*a, **k)

d.build_model, d.check_fits = no_model, counting_fits
import distributed_rge

def tok50k(path):   # a GPT-2-sized vocabulary, built locally (no hub)
    import itertools, string
    from tokenizers import Tokenizer, models as tm, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {{"[UNK]": 0}}
    for w in itertools.product(string.ascii_lowercase, repeat=4):
        if len(vocab) == 50257:
            break
        vocab["".join(w)] = len(vocab)
    t = Tokenizer(tm.WordLevel(vocab=vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]").save_pretrained(path)

tok50k("tok50k")
with open("doc.txt", "w") as f:
    f.write("abcd abce abcf abcg abch " * 400)
out = {{}}
for key, argv in [("hf", ["--tokenizer", "hf", "--model_type", "LSTM"]),
                  ("ptb", ["--task", "penn_tree_bank"]),
                  ("big", ["--tokenizer", "hf", "--tokenizer_path", "tok50k", "--model_type", "LSTM",
                           "--dataset", "doc.txt", "--hidden_size", "24576", "--input_size", "24576",
                           "--num_heads", "1"])]:
    fits_calls.clear()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = distributed_rge.main(argv)
    out[key] = {{"rc": rc, "err": err.getvalue(), "fits_calls": len(fits_calls)}}
print(json.dumps(out))
"""


def test_offline_hf_tokenizer_and_ptb_fail_clearly_before_any_model(tmp_path, lm_cache):
    """The paper's smoke line `--tokenizer hf --model_type LSTM`, offline with an empty HF_HOME: the
    builder's message with its three ways out, exit 2, no traceback, before the model is sized or
    built. With a GPT-2-sized tokenizer available (a local 50k-word dir) and ~7B parameters,
    check_fits refuses before allocating, with the estimate against what is available."""
    env = dict(os.environ, **_lm_env(lm_cache), HF_HOME=str(tmp_path / "hf_home"), PYTHONWARNINGS="ignore")
    for v in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "WORLD_SIZE", "RANK", "LOCAL_RANK",
              "MASTER_ADDR", "MASTER_PORT"):
        env.pop(v, None)
    r = subprocess.run([sys.executable, "-c", OFFLINE_CLI_SCRIPT.format(root=str(ROOT))], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("hf", "ptb", "big"):
        assert out[key]["rc"] == 2 and "\nerror: " in "\n" + out[key]["err"], out[key]   # after any progress line
        assert "Traceback" not in out[key]["err"] and "a model was built" not in out[key]["err"]
    hf, ptb, big = out["hf"], out["ptb"], out["big"]
    assert hf["fits_calls"] == 0 and ptb["fits_calls"] == 0                  # stopped before the model was sized
    assert hf["err"].startswith("error: --tokenizer hf needs the GPT-2 tokenizer")
    assert "HF_HUB_OFFLINE=1" in hf["err"] and str(tmp_path / "hf_home") in hf["err"]
    assert "Three ways out" in hf["err"] and "--tokenizer_path DIR" in hf["err"] and "--tokenizer char" in hf["err"]
    assert "ptb-text-only/ptb_text_only" in ptb["err"] and "Three ways out" in ptb["err"]
    assert big["fits_calls"] == 1
    assert re.search(r"model of 7,\d{3},\d{3},\d{3} parameters needs about [0-9.]+ GiB on cpu, but only [0-9.]+ GiB "
                     r"is available", big["err"]), big["err"]
    assert not (tmp_path / "rnn_checkpoints").exists()


# ---------------------------------------------------------------------------------------------- launchers
SMOKE = ["--device", "cpu", "--mode", "test", "--batch_size", "4", "--meta_perturbations", "16",
         "--learning_rate", "0.1", "--adam", "true", "--verbose", "false"]
FINISHED = re.compile(r"FINISHED TRAINING: in (\d+) iterations achieved ([0-9.e-]+) loss in ([0-9.]+) seconds per iter")


def _launch(launcher: list, tmp_path, extra=()):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for v in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(v, None)
    cmd = [sys.executable, "-m", *launcher, "--nproc_per_node=2", f"--master_port={free_port()}",
           str(ROOT / "distributed_rge.py"), *SMOKE, "--checkpoint_dir", str(tmp_path / "ck"), *extra]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = FINISHED.search(r.stdout)
    assert m, r.stdout[-3000:]
    assert float(m.group(2)) < 0.1
    assert "[Init] Model has" in r.stdout and "parameters across 1 layers" in r.stdout
    assert r.stdout.count("FINISHED TRAINING") == 1          # rank 0 only
    ck = torch.load(tmp_path / "ck" / "latest.pt", weights_only=False)
    assert ck["world_size"] == 2 and ck["n_total"] == 32 and ck["step"] == int(m.group(1)) + 1
    return r


@pytest.mark.slow
def test_torchrun_test_mode_reaches_low_loss(tmp_path):
    _launch(["torch.distributed.run"], tmp_path, extra=["--metrics_out", str(tmp_path / "m.jsonl")])
    recs = [json.loads(line) for line in open(tmp_path / "m.jsonl")]
    assert all(r["bytes_communicated"] == 32 * 8 for r in recs[:-1] if (r["step"] + 1) % 100)


@pytest.mark.slow
def test_torch_distributed_launch_test_mode(tmp_path):
    _launch(["torch.distributed.launch"], tmp_path)


@pytest.mark.slow
def test_torchrun_train_mode_lm(tmp_path):
    """torchrun --nproc_per_node=2 distributed_rge.py --device cpu --mode train --task lm ..."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for v in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(v, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(ROOT / "distributed_rge.py"), "--device", "cpu", "--mode", "train", "--task", "lm", "--max_iters", "6",
           "--val_iters", "3", "--verbose", "false", "--checkpoint_dir", str(tmp_path / "ck"),
           "--metrics_out", str(tmp_path / "m.jsonl")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "task lm on embedded" in r.stdout and r.stdout.count("FINISHED TRAINING") == 1
    assert r.stdout.count("val_bits_per_char = ") == 2 and r.stdout.count(" | greedy: ") == 4
    recs = [json.loads(line) for line in open(tmp_path / "m.jsonl")]
    assert [r["step"] for r in recs if "val_bits_per_char" in r] == [2, 5]
    ck = torch.load(tmp_path / "ck" / "latest.pt", weights_only=False)
    assert ck["world_size"] == 2 and ck["n_total"] == 32 and ck["config"]["task"] == "lm" and ck["step"] == 6


def test_cuda_graphs_flag_parses_and_is_refused_on_cpu():
    """--cuda_graphs auto|true|false reaches DistConfig (default auto; a bare flag means true); a bad
    value is a parse error; true without CUDA is refused; auto turns graphs on only for small models
    evaluated several per pass on CUDA."""
    import distributed_rge as cli
    from train.distributed import DistConfig
    from train.graphs import GRAPHS_AUTO_MAX_PARAMS, use_cuda_graphs
    p = cli.build_parser()
    for flag, want in (([], "auto"), (["--cuda_graphs", "true"], "true"), (["--cuda_graphs", "false"], "false"),
                       (["--cuda_graphs"], "true"), (["--cuda_graphs", "AUTO"], "auto"),
                       (["--cuda_graphs", "loss"], "loss")):
        assert cli.config_from_args(p.parse_args(flag)).cuda_graphs == want, flag
    with pytest.raises(SystemExit):
        p.parse_args(["--cuda_graphs", "sometimes"])
    small, big = GRAPHS_AUTO_MAX_PARAMS, GRAPHS_AUTO_MAX_PARAMS + 1
    assert use_cuda_graphs("auto", device="cuda", n_params=small, models_per_pass=24)
    assert not use_cuda_graphs("auto", device="cuda", n_params=big, models_per_pass=24)
    assert not use_cuda_graphs("auto", device="cuda", n_params=small, models_per_pass=1)
    assert not use_cuda_graphs("auto", device="cpu", n_params=small, models_per_pass=24)
    assert use_cuda_graphs(True, device="cuda", n_params=big, models_per_pass=1)
    assert not use_cuda_graphs("false", device="cuda", n_params=small, models_per_pass=24)
    assert use_cuda_graphs("loss", device="cuda", n_params=big, models_per_pass=1)
    # the graphs a trainer builds: the loss graph and the whole-step graph, or the loss graph alone with 'loss'
    from train.graphs import GraphedStackedLoss, GraphedZOStep, build_graphs
    fn = lambda P, b: None  # noqa: E731
    loss, step = build_graphs("auto", fn, device="cuda", n_params=small, models_per_pass=24)
    assert isinstance(loss, GraphedStackedLoss) and isinstance(step, GraphedZOStep)
    loss, step = build_graphs("loss", fn, device="cuda", n_params=small, models_per_pass=24)
    assert isinstance(loss, GraphedStackedLoss) and step is None
    assert build_graphs("false", fn, device="cuda", n_params=small, models_per_pass=24) == (None, None)
    assert build_graphs("auto", fn, device="cpu", n_params=small, models_per_pass=24) == (None, None)
    with pytest.raises(ValueError, match="cuda_graphs loss"):
        DistConfig(device="cpu", cuda_graphs="loss").validate()
    off = DistConfig(device="cpu", cuda_graphs=False)
    off.validate()
    assert off.cuda_graphs == "false"
    with pytest.raises(ValueError, match="cuda_graphs"):
        DistConfig(device="cpu", cuda_graphs=True).validate()
    DistConfig(device="cpu").validate()
