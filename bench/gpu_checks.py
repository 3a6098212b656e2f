"""Correctness checks on a CUDA device, against the CPU / pure-torch references.

    python bench/gpu_checks.py --out bench/results/gpu_checks.md

- counter-based noise on CUDA equals the CPU function bit for bit (rademacher, uniform; normal ~1e-6);
- probes never drift theta on CUDA (bf16 live tensors, fp32 master), after many probe cycles;
- stacked probe evaluation equals one-at-a-time evaluation within bf16 tolerance;
- a bf16 LSTM forward on CUDA is close to the fp32 CPU reference;
- the Triton kernels (zo/kernels.py), when present, equal the torch noise/update bit for bit.
Prints PASS/FAIL lines and exits non-zero on any FAIL.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import ModelConfig, build_model  # noqa: E402
from tasks import build_task  # noqa: E402
from train.evaluate import batch_loss, stacked_batch_loss  # noqa: E402
from zo import noise as zn  # noqa: E402
from zo.estimator import ZOConfig, ZOEngine  # noqa: E402

RESULTS = []


def check(name: str, ok: bool, detail: str = "") -> None:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)


def noise_checks(dev):
    for dist in ("rademacher", "uniform", "normal"):
        for start in (0, (1 << 32) - 1000):
            a = zn.noise_flat(12345, 678, 1_000_003, distribution=dist, device="cpu", start=start)
            b = zn.noise_flat(12345, 678, 1_000_003, distribution=dist, device=dev, start=start).cpu()
            if dist == "normal":
                err = float(((a - b).abs() / a.abs().clamp(min=1e-3)).max())
                check(f"noise {dist} start={start} CUDA~CPU", err < 1e-5, f"max rel err {err:.2e}")
            else:
                check(f"noise {dist} start={start} CUDA==CPU bitwise", torch.equal(a, b))


def restore_check(dev):
    cfg = ModelConfig(vocab_size=100, input_size=32, hidden_size=256, num_heads=4, dtype="bfloat16")
    model = build_model(cfg, generator=torch.Generator().manual_seed(0), device=dev)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    eng = ZOEngine(model.named_parameters(), config=ZOConfig(num_perturbations=8, master_dtype=torch.float32))
    master0 = {p.name: p.master.clone() for p in eng.params}
    task = build_task("copy", seq_length=10)
    batch = task.train_batch(batch_size=64, generator=torch.Generator(device=dev).manual_seed(0))

    def loss():
        with torch.inference_mode():
            return batch_loss(model, batch, time_chunk=8)
    for step in range(25):
        eng.evaluate(eng.seeds(step), loss, lr=1e-3)
    ok = all(torch.equal(before[n], p.detach()) for n, p in model.named_parameters())
    ok &= all(torch.equal(master0[p.name], p.master) for p in eng.params)
    check("200 probe cycles leave bf16 live + fp32 master bitwise unchanged", ok)

    seq = eng.evaluate(eng.seeds(99), loss, lr=1e-2)

    def stacked(P):
        with torch.inference_mode():
            return stacked_batch_loss(model, P, batch, time_chunk=8)
    stk = eng.evaluate_stacked(eng.seeds(99), stacked, lr=1e-2, models_per_pass=16)
    err = float((seq - stk).abs().max())
    check("stacked probes == one-at-a-time (bf16)", err < 2e-2, f"max |dL| {err:.2e}")
    eng.clear_step_cache()


def forward_check(dev):
    cfg = ModelConfig(vocab_size=100, input_size=64, hidden_size=512, num_heads=8)
    m32 = build_model(cfg, generator=torch.Generator().manual_seed(3), device="cpu")
    m16 = build_model(cfg.replace(dtype="bfloat16"), generator=torch.Generator().manual_seed(3), device=dev)
    tok = torch.randint(0, 100, (16, 40), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        a, _ = m32(tok)
        b, _ = m16(tok.to(dev), time_chunk=7)
    rel = float((a - b.float().cpu()).norm() / a.norm())
    check("bf16 CUDA LSTM forward ~ fp32 CPU reference", rel < 2e-2, f"rel err {rel:.2e}")
    for D_heads in (8, 12):  # head sizes 64 (no padding) and 42.67 -> use 480/12 = 40 (padded to 40) / 512/8
        hidden = 480 if D_heads == 12 else 512
        c32 = ModelConfig(vocab_size=100, input_size=64, hidden_size=hidden, num_heads=D_heads)
        ref = build_model(c32, generator=torch.Generator().manual_seed(5), device="cpu")
        for dt in ("float32", "bfloat16"):
            fz = build_model(c32.replace(dtype=dt, backend="fused"), generator=torch.Generator().manual_seed(5),
                             device=dev)
            with torch.inference_mode():
                a, _ = ref(tok)
                b, _ = fz(tok.to(dev), time_chunk=7)
            rel = float((a - b.float().cpu()).norm() / a.norm())
            check(f"fused backend {dt} (D={hidden // D_heads}) ~ fp32 CPU reference", rel < (2e-5 if dt == "float32" else 2e-2),
                  f"rel err {rel:.2e}")
    dnc = build_model(ModelConfig(model_type="DNC", vocab_size=20, input_size=16, hidden_size=64, num_heads=2,
                                  memory_size=16, head_size=16, dtype="bfloat16", backend="auto"),
                      generator=torch.Generator().manual_seed(0), device=dev)
    with torch.inference_mode():
        lg, _ = dnc(torch.randint(0, 20, (4, 30), generator=torch.Generator().manual_seed(1)).to(dev), time_chunk=8)
    check("bf16 DNC forward on CUDA is finite", bool(torch.isfinite(lg).all()))


def backend_checks(dev):
    """Every LSTM backend on CUDA against the fp32 CPU reference at padded head sizes (20, 50, 300
    -> 32, 64, 320 in the fused kernel): logits and stacked ZO losses within bf16 tolerance."""
    from models.lstm_backends import BACKENDS
    from models.lstm_flashrnn import FLASHRNN_BACKENDS
    from tasks import Batch
    g = torch.Generator().manual_seed(6)
    for hidden, heads in ((240, 12), (200, 4), (600, 2)):
        c32 = ModelConfig(vocab_size=100, input_size=100, hidden_size=hidden, num_heads=heads)
        ref = build_model(c32, generator=torch.Generator().manual_seed(7), device="cpu")
        tok = torch.randint(0, 100, (300, 11), generator=g)
        tgt = torch.randint(0, 100, (300, 11), generator=g)
        tgt[:, :2] = -100
        P = {n: torch.stack([p, p * 0.98, p * 1.03]) for n, p in ref.named_parameters()}
        with torch.inference_mode():
            a, _ = ref(tok, time_chunk=4)
            la = stacked_batch_loss(ref, P, Batch(inputs=tok, targets=tgt), time_chunk=4)
        for bk in [b for b in BACKENDS if b not in FLASHRNN_BACKENDS and b != "auto"]:
            m = build_model(c32.replace(dtype="bfloat16", backend=bk), generator=torch.Generator().manual_seed(7), device=dev)
            Pd = {n: t.to(dev, torch.bfloat16) for n, t in P.items()}
            bt = Batch(inputs=tok.to(dev), targets=tgt.to(dev))
            with torch.inference_mode():
                b, _ = m(tok.to(dev), time_chunk=4)
                lb = stacked_batch_loss(m, Pd, bt, time_chunk=4).cpu()
            rel = float((a - b.float().cpu()).norm() / a.norm())
            dl = float((la - lb).abs().max())
            check(f"{bk} bf16 D={hidden // heads} logits ~ fp32 CPU", rel < 2e-2, f"rel err {rel:.2e}")
            check(f"{bk} bf16 D={hidden // heads} stacked ZO losses ~ fp32 CPU", dl < 2e-2,
                  f"max abs diff {dl:.2e} (losses {la.tolist()})")


def step_form_checks(dev):
    """Each form of the fused per-step kernel (pointer and TMA loads, the TMA kernel's descriptor
    epilogue, prefetched cell loads, the weight-resident kernel, the warp-specialised Gluon kernel and
    its weight-resident ping-pong form;
    each config on top of this GPU's
    tuning entry, as a user's step config is) in the chunk forward of K = 2
    stacked bf16 LSTMs, against the fp32 CPU reference at D = 300 and 150 (Dk 320, 160), B = 300
    (a ragged last row tile), two chunks with the state threaded between them."""
    from models.lstm_fused import forward_chunk_stacked_fused, prepare_fused, step_tiles
    triton_forms = {
        "pointer": {"one_dot": True}, "TMA": {"tma": True}, "TMA prefetch": {"tma": True, "prefetch": True},
        "TMA + descriptor epilogue": {"tma": True, "tma_epi": True},
        "TMA + descriptor epilogue, prefetch": {"tma": True, "tma_epi": True, "prefetch": True},
        "weight-resident": {"wres": True, "tma": False, "BM": 64, "num_warps": 4, "num_stages": 1},
        "weight-resident, prefetch, 4 row tiles": {"wres": True, "tma": False, "prefetch": True, "row_tiles": 4,
                                                   "BM": 64, "num_warps": 4, "num_stages": 1, "BD": 32}}
    ws = {"ws": True, "tma": False, "BM": 64, "BK": 32, "num_stages": 3, "pingpong": False}
    ws_forms = {
        "warp-specialised (Gluon), four dots, alternate tiles": dict(ws, one_dot=False, coop=False, prefetch=False,
                                                                     stage_out=False, num_stages=4),
        "warp-specialised, one dot, alternate tiles, cell inputs staged": dict(ws, one_dot=True, coop=False,
                                                                               prefetch=True, stage_out=False),
        "warp-specialised, one dot, cooperative, staged in and out": dict(ws, one_dot=True, coop=True, prefetch=True,
                                                                          stage_out=True),
        "warp-specialised, one dot, cooperative": dict(ws, one_dot=True, coop=True, prefetch=False, stage_out=False,
                                                       num_stages=6),
        "warp-specialised ping-pong, weight-resident, BD 32": dict(ws, one_dot=True, coop=False, prefetch=False,
                                                                   stage_out=False, pingpong=True, BD=32, BK=64,
                                                                   num_stages=8, loader=False, tma_out=False),
        "warp-specialised ping-pong, BD 32, the loader's warp": dict(ws, one_dot=True, coop=False, prefetch=False,
                                                                     stage_out=False, pingpong=True, BD=32, BK=64,
                                                                     num_stages=8, loader=True, consumer_regs=208,
                                                                     tma_out=False),
        "warp-specialised ping-pong, BD 32, the loader's warp, c and h stored by TMA": dict(
            ws, one_dot=True, coop=False, prefetch=False, stage_out=False, pingpong=True, BD=32, BK=64, num_stages=8,
            loader=True, consumer_regs=208, tma_out=True),
        "warp-specialised ping-pong, BD 32, a ring stage a k-step, TMA stores": dict(
            ws, one_dot=True, coop=False, prefetch=False, stage_out=False, pingpong=True, BD=32, BK=64, num_stages=5,
            loader=True, consumer_regs=208, tma_out=True),
        "warp-specialised ping-pong, weight-resident, BD 16": dict(ws, one_dot=True, coop=False, prefetch=False,
                                                                   stage_out=False, pingpong=True, BD=16, BK=32,
                                                                   num_stages=12, loader=False, tma_out=False)}
    # every key a form leaves out comes from the GPU's tuning entry; ws False drops the entry's ws-only keys
    forms = {**{n: dict(c, ws=False) for n, c in triton_forms.items()}, **ws_forms,
             "step 0 as one matrix-vector product per head, then the tuning entry's kernel": {"first_gemv": True,
                                                                                              "step1_table": False},
             "step 0 as one matrix-vector product per head, then TMA": {"first_gemv": True, "step1_table": False,
                                                                         "ws": False, "tma": True},
             "steps 0 and 1 through token tables, then the tuning entry's kernel": {"first_gemv": True,
                                                                                   "step1_table": True},
             "steps 0 and 1 through token tables, then TMA": {"first_gemv": True, "step1_table": True, "ws": False,
                                                              "tma": True}}
    g = torch.Generator().manual_seed(8)
    for hidden, heads in ((600, 2), (300, 2)):
        c32 = ModelConfig(vocab_size=100, input_size=100, hidden_size=hidden, num_heads=heads)
        ref = build_model(c32, generator=torch.Generator().manual_seed(9), device="cpu")
        tok = torch.randint(0, 100, (300, 6), generator=g)
        P = {n: torch.stack([p, p * 0.98]) for n, p in ref.named_parameters()}
        with torch.inference_mode():
            a, _ = ref.forward_chunk_stacked(P, tok, ref.init_state_stacked(P, 300))
        m = build_model(c32.replace(dtype="bfloat16", backend="fused"), generator=torch.Generator().manual_seed(9),
                        device=dev)
        Pd = {n: t.to(dev, torch.bfloat16) for n, t in P.items()}
        td = tok.to(dev)
        Dk = step_tiles(hidden // heads)[0]
        for name, cfg in forms.items():
            cfg = dict(cfg, seq=None)
            if cfg.get("wres"):          # at most 8 weight chunks (the tuning entry's BK may be smaller)
                cfg["BK"] = 64 if Dk % 64 == 0 else 32
            if cfg.get("pingpong") and Dk % cfg["BK"]:
                cfg["BK"] = 32
            try:
                with torch.inference_mode():
                    Pf = prepare_fused(Pd, num_heads=heads)
                    b1, st = forward_chunk_stacked_fused(Pf, td[:, :3], m.init_state_stacked(Pd, 300), num_heads=heads,
                                                         step_config=cfg)
                    b2, _ = forward_chunk_stacked_fused(Pf, td[:, 3:], st, num_heads=heads, step_config=cfg)
                b = torch.cat([b1, b2], dim=2).float().cpu()
                rel = float((a - b).norm() / a.norm())
                check(f"fused step form '{name}' bf16 D={hidden // heads} logits ~ fp32 CPU", rel < 2e-2,
                      f"rel err {rel:.2e}")
            except Exception as e:  # noqa: BLE001  (a form that fails to compile or run is a failed check)
                check(f"fused step form '{name}' bf16 D={hidden // heads} logits ~ fp32 CPU", False,
                      f"{type(e).__name__}: {str(e)[:200]}")


def graph_checks(dev):
    """The CUDA-graph replay of the stacked probe loss equals the eager call, for new parameter
    values in the same buffers and a new batch (train/graphs.py), for the LSTM and the DNC."""
    from tasks import Batch
    from train.graphs import GraphedStackedLoss
    cfgs = {"LSTM": ModelConfig(vocab_size=100, input_size=100, hidden_size=240, num_heads=12, dtype="bfloat16"),
            "DNC": ModelConfig(model_type="DNC", vocab_size=23, input_size=32, hidden_size=64, num_heads=1,
                               memory_size=16, head_size=16, dtype="bfloat16")}
    for name, cfg in cfgs.items():
        m = build_model(cfg, generator=torch.Generator().manual_seed(8), device=dev)
        P = {n: torch.stack([p, p * 0.97, p * 1.02, p * 1.01]).detach().contiguous() for n, p in m.named_parameters()}
        g = torch.Generator().manual_seed(9)

        def batch(V=cfg.vocab_size):
            inp = torch.randint(0, V, (64, 11), generator=g)
            tgt = torch.randint(0, V, (64, 11), generator=g)
            tgt[:, :2] = -100
            return Batch(inputs=inp.to(dev), targets=tgt.to(dev))

        fn = lambda P_, b, m=m: stacked_batch_loss(m, P_, b, time_chunk=4)  # noqa: E731
        gr = GraphedStackedLoss(fn)
        worst = 0.0
        with torch.inference_mode():
            for i in range(4):
                for t in P.values():
                    t.mul_(1.0 + 0.01 * i)              # new values in the same buffers
                bt = batch()
                worst = max(worst, float((gr(P, bt) - fn(P, bt)).abs().max()))
        check(f"CUDA graph replay of the stacked {name} loss == eager", gr.replays >= 2 and worst == 0.0,
              f"{gr.replays} replays, max abs diff {worst:.2e}")


def kernel_checks(dev):
    try:
        from zo import kernels  # noqa: F401
    except ImportError:
        check("zo.kernels present", False, "module missing")
        return
    names = [n for n in ("triton_noise_flat", "triton_update", "triton_apply_probes") if hasattr(kernels, n)]
    if "triton_noise_flat" in names:
        for dist in ("rademacher", "uniform"):
            a = zn.noise_flat(7, 99, 3_000_017, distribution=dist, device=dev, start=5)
            b = kernels.triton_noise_flat(7, 99, 3_000_017, distribution=dist, device=dev, start=5)
            check(f"triton noise {dist} == torch noise bitwise", torch.equal(a, b))


def engine_kernel_checks(dev):
    """The engine's Triton path (small tensors grouped into one launch, large ones alone) against its
    torch path: probe writes, the update and the Adam gradient, bit for bit."""
    from zo import kernels as zk
    cfg = ModelConfig(vocab_size=100, input_size=32, hidden_size=256, num_heads=4, dtype="bfloat16")
    old = zk.MULTI_MAX_NUMEL
    zk.MULTI_MAX_NUMEL = 20_000  # so that this model has grouped and single tensors
    try:
        for zc in (ZOConfig(num_perturbations=4, master_dtype=torch.float32),
                   ZOConfig(num_perturbations=4, master_dtype=torch.float32, distribution="uniform",
                            probe_dropout_rate=0.25),
                   ZOConfig(num_perturbations=4, master_dtype=torch.float32, adam=True)):
            engs = []
            for use in (True, False):
                model = build_model(cfg, generator=torch.Generator().manual_seed(0), device=dev)
                e = ZOEngine(model.named_parameters(), config=zc, run_seed=3)
                e.use_kernels = use
                engs.append((e, model))
            got = []
            for e, model in engs:
                P_seen = {}

                def grab(P):
                    P_seen.update({n: t.clone() for n, t in P.items()})
                    return torch.zeros(next(iter(P.values())).shape[0], device=dev)
                e.evaluate_stacked(e.seeds(1), grab, lr=1e-2, models_per_pass=8)
                for step in (1, 2):
                    e.update(e.seeds(step), [0.3, -0.2, 0.05, 0.7], lr=1e-2)
                got.append((P_seen, [p.master.clone() for p in e.params],
                            [t.detach().clone() for t in model.parameters()]))
            (pa, ma, la), (pb, mb, lb) = got
            tag = f"{zc.distribution}{' dropout' if zc.probe_dropout_rate else ''}{' adam' if zc.adam else ''}"
            ke = engs[0][0]
            check(f"engine kernels ({len(ke._groups)} group(s) + {len(ke._singles)} single(s)) == torch path, "
                  f"probe writes, {tag}", all(torch.equal(pa[n], pb[n]) for n in pa))
            check(f"engine kernels == torch path, 2 updates (master, live), {tag}",
                  all(torch.equal(x, y) for x, y in zip(ma, mb)) and all(torch.equal(x, y) for x, y in zip(la, lb)))
    finally:
        zk.MULTI_MAX_NUMEL = old


def early_update_checks(dev):
    """zo_step's update queued before the sync (coefficients and the finiteness guard on the device)
    against the update made after it, over 3 steps, bit for bit; and a NaN loss: the step raises with
    master and live unchanged."""
    from train.zo_step import NonFiniteLossError, zo_step
    from zo.comm import LocalComm
    cfg = ModelConfig(vocab_size=100, input_size=32, hidden_size=256, num_heads=4, dtype="bfloat16")

    def run(early, nan_at=None, steps=3):
        model = build_model(cfg, generator=torch.Generator().manual_seed(0), device=dev)
        e = ZOEngine(model.named_parameters(), config=ZOConfig(num_perturbations=4, master_dtype=torch.float32),
                     run_seed=3)
        e.update_before_sync = early

        def stacked(P):
            loss = sum((t.float().reshape(t.shape[0], -1) * 0.1).sin().sum(1) for t in P.values())
            if nan_at is not None:
                loss[nan_at] = float("nan")
            return loss
        before = [(p.master.clone(), p.live.clone()) for p in e.params]
        try:
            for step in range(steps):
                zo_step(e, step=step, lr=1e-2, loss_for_probe=None, comm=LocalComm(dev), stacked_loss=stacked,
                        models_per_pass=2)
            raised = False
        except NonFiniteLossError:
            raised = True
        unchanged = all(torch.equal(p.master, m0) and torch.equal(p.live, l0) for p, (m0, l0) in zip(e.params, before))
        return e, raised, unchanged
    ea, _, unchanged_a = run(True)
    eb, _, _ = run(False)
    check("update queued before the sync == update after it, 3 steps (master, live), bitwise",
          ea.update_before_sync and not unchanged_a and all(torch.equal(p.master, q.master) and torch.equal(p.live, q.live)
                                                        for p, q in zip(ea.params, eb.params)))
    _, raised, unchanged = run(True, nan_at=1, steps=1)
    check("a NaN loss with the update queued before the sync: raises, master and live bitwise unchanged",
          raised and unchanged)


def step_graph_checks(dev):
    """The whole step replayed as CUDA graphs (train.graphs.GraphedZOStep) against the eager step with
    its early update: 10 steps with a new lr and a new batch each, one pass and three passes per step,
    the engine's pass buffers reallocated after step 3 (the graph is captured again) and a shorter batch
    from step 7 (a new graph); losses, mean loss, master and live bit for bit; a NaN on a replayed step
    raises with theta unchanged."""
    from tasks import Batch
    from train.evaluate import stack_layouts_fn
    from train.graphs import GraphedZOStep
    from train.zo_step import NonFiniteLossError, zo_step
    from zo import kernels as zk
    from zo.comm import LocalComm
    cfg = ModelConfig(vocab_size=100, input_size=100, hidden_size=240, num_heads=12, dtype="bfloat16")
    B = 64
    old = zk.MULTI_MAX_NUMEL
    zk.MULTI_MAX_NUMEL = 20_000  # grouped and single tensors, and the recurrent weights' gate-tile layout
    try:
        for mpp in (12, 4):
            runs = []
            for graphed in (True, False):
                model = build_model(cfg, generator=torch.Generator().manual_seed(0), device=dev)
                e = ZOEngine(model.named_parameters(), config=ZOConfig(num_perturbations=6, master_dtype=torch.float32),
                             run_seed=3)

                def fn(P, b, m=model):
                    poison = torch.where(b.inputs[0, 0] == 0, float("nan"), 0.0)
                    return stacked_batch_loss(m, P, b, time_chunk=4) + poison
                sg = GraphedZOStep(fn) if graphed else None
                g = torch.Generator().manual_seed(9)
                out = []
                last = 10
                for step in range(last + 1):
                    T = 11 if step < 7 else 9
                    inp = torch.randint(1, 100, (B, T), generator=g)
                    if step == last:
                        inp[0, 0] = 0                      # the last step's losses are NaN
                    tgt = torch.randint(0, 100, (B, T), generator=g)
                    if step == 4 and graphed:              # the pass buffers grow (reallocated), the graph must follow
                        e.evaluate_stacked(e.seeds(99) + e.seeds(98)[:2],
                                           lambda P: torch.zeros(next(iter(P.values())).shape[0], device=dev),
                                           lr=1e-2, models_per_pass=mpp + 4)
                    tgt[:, :2] = -100
                    bt = Batch(inputs=inp.to(dev), targets=tgt.to(dev))
                    lr = 1e-2 * (1.0 + 0.1 * step)
                    before = [(p.master.clone(), p.live.clone()) for p in e.params]
                    try:
                        r = zo_step(e, step=step, lr=lr, loss_for_probe=None, comm=LocalComm(dev),
                                    stacked_loss=lambda P, bt=bt: fn(P, bt), models_per_pass=mpp,
                                    stack_layouts=stack_layouts_fn(model, B, B), step_graph=sg, batch=bt)
                        out.append((r.losses.clone(), r.train_loss))
                    except NonFiniteLossError:
                        out.append(("raised", all(torch.equal(p.master, m0) and torch.equal(p.live, l0)
                                                  for p, (m0, l0) in zip(e.params, before))))
                runs.append((e, out, sg))
            (ea, oa, sg), (eb, ob, _) = runs
            same_losses = all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(oa[:last], ob[:last]))
            same_theta = all(torch.equal(p.master, q.master) and torch.equal(p.live, q.live)
                             for p, q in zip(ea.params, eb.params))
            check(f"whole step as CUDA graphs == eager step, {mpp} models per pass, {last} steps, new lr and batch, "
                  f"pass buffers moved, batch shape changed (losses, mean loss, master, live), bitwise",
                  sg.replays >= 5 and same_losses and same_theta, f"{sg.replays} replays, {len(sg._ents)} graphs kept")
            check(f"whole step as CUDA graphs, {mpp} models per pass: a NaN on a replayed step raises, master and "
                  f"live bitwise unchanged", oa[last] == ("raised", True) and ob[last] == ("raised", True),
                  str(oa[last]))
    finally:
        zk.MULTI_MAX_NUMEL = old


def fused_loss_checks(dev):
    """The fused output projection + loss kernel (models/logits_ce.py) against the bf16 logits scored
    by masked_ce_sum_stacked, at the tiny and small presets' widths and the paper's B, T and V."""
    from models import preset
    from tasks import Batch
    g = torch.Generator().manual_seed(11)
    for size in ("tiny", "small"):
        m = build_model(preset(size, vocab_size=100, input_size=100, dtype="bfloat16", backend="fused"),
                        generator=torch.Generator().manual_seed(12), device=dev)
        P = {n: torch.stack([p, p * 0.99, p * 1.01]).contiguous() for n, p in m.named_parameters()}
        tgt = torch.randint(0, 100, (1024, 11), generator=g)
        tgt[:, :2] = -100
        bt = Batch(inputs=torch.randint(0, 100, (1024, 11), generator=g).to(dev), targets=tgt.to(dev))
        with torch.inference_mode():
            fused = stacked_batch_loss(m, P, bt, time_chunk=4)
            m.loss_chunk_stacked = lambda *a, **k: None          # the unfused path: logits, then the loss
            ref = stacked_batch_loss(m, P, bt, time_chunk=4)
        rel = float(((fused - ref).abs() / ref.abs()).max())
        check(f"cross-entropy kernel on the fused logits == masked_ce_sum_stacked ({size})", rel < 1e-3,
              f"max rel diff {rel:.2e} (losses {ref.tolist()})")
        # scored_from = 2 with 3-step chunks: the first chunk's first two steps get no logits (skip_steps)
        del m.loss_chunk_stacked
        with torch.inference_mode():
            promised = stacked_batch_loss(m, P, Batch(inputs=bt.inputs, targets=bt.targets, scored_from=2), time_chunk=3)
            plain = stacked_batch_loss(m, P, bt, time_chunk=3)
        rel = float(((promised - plain).abs() / plain.abs()).max())
        check(f"fused loss skipping the unscored steps of a chunk (scored_from 2, chunks of 3) == without ({size})",
              rel < 1e-6, f"max rel diff {rel:.2e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/gpu_checks.md")
    ap.add_argument("--only", default="", help="comma-separated check groups to run (function names, e.g. "
                                                "step_graph_checks); default all")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_checks needs a CUDA device", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    t0 = time.time()
    groups = (noise_checks, restore_check, forward_check, backend_checks, step_form_checks, fused_loss_checks,
              graph_checks, kernel_checks, engine_kernel_checks, early_update_checks, step_graph_checks)
    only = [x for x in args.only.split(",") if x]
    unknown = sorted(set(only) - {f.__name__ for f in groups})
    if unknown:
        print(f"gpu_checks: unknown check group(s) {unknown}; choose from {[f.__name__ for f in groups]}",
              file=sys.stderr)
        return 2
    for fn in groups:
        if only and fn.__name__ not in only:
            continue
        try:
            fn(dev)
        except Exception as e:  # report and continue: one broken check must not hide the others
            check(fn.__name__, False, f"{type(e).__name__}: {e}")
    lines = [f"# GPU correctness checks ({time.strftime('%Y-%m-%d')}, {torch.cuda.get_device_name(0)}, "
             f"torch {torch.__version__}, CUDA {torch.version.cuda})", "",
             f"Command: `python bench/gpu_checks.py --out {args.out}{' --only ' + args.only if only else ''}`  "
             f"({time.time() - t0:.0f} s)", "",
             "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {n} | {'PASS' if ok else 'FAIL'} | {d} |" for n, ok, d in RESULTS]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    bad = sum(not ok for _, ok, _ in RESULTS)
    print(f"{len(RESULTS) - bad} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
