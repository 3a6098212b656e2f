"""FlashRNN backends on a CUDA device: bf16 numerics against the torch reference, and one timed forward.

    PYTHONUNBUFFERED=1 python bench/flashrnn_checks.py --out bench/results/flashrnn_checks.md

For each of flashrnn_triton_fused, flashrnn_cuda_fused and flashrnn_cuda (models/lstm_flashrnn.py):
- recurrence at head sizes 16 and 20 (20 runs padded: 32, 32, 24), batch 6 (FlashRNN pads the batch),
  carried over two chunks, in bf16, against the fp32 torch reference on the same bf16 values;
- a cell state driven to -60 (FlashRNN's shipped Triton tanh gives NaN below -44): finite, equal to the
  reference;
- a whole bf16 LSTM model (head size 20, chunked) against the same model on the `torch` backend: logits and
  loss;
- one large-ish forward (T 11, N 32, B 1024, D 128 by default; `--time_shape`): first call (JIT compile or
  cache load), median of 5 after it, the recurrent matmul's TFLOP/s against the dense bf16 peak measured
  in the same run, the speed-up over the `torch` and `fused` backends, and its error against the fp32
  reference.
The CUDA backends compile once per (hidden, batch, heads, dtype), 18-50 s each, into TORCH_EXTENSIONS_DIR
(<repo>/.cache/torch_extensions when unset; a warm device machine keeps it between calls).
Prints PASS/FAIL lines and exits non-zero on any FAIL.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import ModelConfig, build_model  # noqa: E402
from models.lstm_backends import recurrence, recurrence_torch  # noqa: E402
from models.lstm_flashrnn import availability  # noqa: E402

CUDA_BACKENDS = ("flashrnn_triton_fused", "flashrnn_cuda_fused", "flashrnn_cuda")
BF16_TOL = 3e-2          # max abs error of h, c in bf16 against the fp32 reference (as the `fused` check)


def _inputs(T, N, B, D, *, seed, device, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    xg = torch.randn(T, N, B, 4, D, generator=g) * 0.5
    R = torch.randn(4, N, D, D, generator=g) / D ** 0.5
    b = torch.randn(4, N, D, generator=g) * 0.1
    h = torch.randn(N, B, D, generator=g) * 0.1
    c = torch.randn(N, B, D, generator=g) * 0.1
    return xg.to(device, dtype), R.to(device, dtype), b.to(device, dtype), h.to(device), c.to(device)


def _err(out, ref) -> float:
    return max(float((o.float() - r.float()).abs().max()) for o, r in zip(out, ref))


def _reference(xg, R, b, h, c):
    """fp32 torch reference on the same (bf16-rounded) values."""
    hs, (hT, cT) = recurrence_torch(xg.float(), R.float(), b.float(), h.float(), c.float())
    return hs, hT, cT


def _chunked(backend, xg, R, b, h, c, split):
    o1, s = recurrence(xg[:split], R, b, h, c, backend=backend)
    o2, (hT, cT) = recurrence(xg[split:], R, b, *s, backend=backend)
    return torch.cat([o1.float(), o2.float()]), hT, cT


def _time(fn, reps: int = 5) -> list[float]:
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    return ts


def _dense_peak_tflops(dev) -> float:
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    bb = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ bb
    t = statistics.median(_time(lambda: a @ bb, reps=10))
    return 2 * 8192 ** 3 / t / 1e12


def flashrnn_gpu_checks(device="cuda", *, backends=CUDA_BACKENDS, time_shape=(11, 32, 1024, 128), report=print):
    """Run the checks of this file's docstring; returns [(name, ok, detail)] and reports each line."""
    dev = torch.device(device)
    results = []

    def check(name, ok, detail=""):
        results.append((name, bool(ok), detail))
        report(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}")

    def guarded(name, fn):
        try:
            fn()
        except Exception as e:  # report and go on: one broken backend must not hide the others
            tb = traceback.format_exc().strip().splitlines()
            check(name, False, f"{type(e).__name__}: {str(e)[:400]} (at {tb[-3].strip() if len(tb) > 2 else ''})")

    peak = None
    T, N, B, D = time_shape
    flops = 2 * T * B * N * 4 * D * D
    if time_shape[0] > 0:
        peak = _dense_peak_tflops(dev)
        report(f"dense bf16 peak (8192^3 mm, median of 10): {peak:.0f} TFLOP/s")
        xt = _inputs(T, N, B, D, seed=9, device=dev)
        ref_t = _reference(*xt)
        base = {}
        for other in ("torch", "fused"):
            try:
                with torch.inference_mode():
                    recurrence(*xt, backend=other)
                    torch.cuda.synchronize()
                    base[other] = statistics.median(_time(lambda o=other: recurrence(*xt, backend=o)))
                report(f"timing {other} backend T{T} N{N} B{B} D{D} bf16: {base[other] * 1e3:.2f} ms "
                       f"({flops / base[other] / 1e12:.1f} TFLOP/s recurrent matmul)")
            except Exception as e:
                report(f"timing {other} backend: not run ({type(e).__name__}: {str(e)[:200]})")

    for be in backends:
        ok, why = availability(be, dev)
        if not ok:
            check(f"{be} available", False, why)
            continue

        def numerics(be=be):
            for D_, seed in ((16, 1), (20, 2)):
                x = _inputs(7, 4, 6, D_, seed=seed, device=dev)
                t0 = time.time()
                with torch.inference_mode():
                    out = _chunked(be, *x, split=3)
                torch.cuda.synchronize()
                ref = _reference(*x)
                with torch.inference_mode():
                    tb = recurrence_torch(*x)
                e, e_torch = _err(out, ref), _err((tb[0], *tb[1]), ref)
                check(f"{be} bf16 D={D_} N=4 B=6 T=3+4 ~ fp32 reference", e < BF16_TOL,
                      f"max abs err {e:.2e} (torch bf16: {e_torch:.2e}; tol {BF16_TOL}); first call "
                      f"{time.time() - t0:.1f} s")

        def saturated(be=be):
            Ts = 60
            xg = torch.zeros(Ts, 4, 6, 4, 16, device=dev, dtype=torch.bfloat16)
            xg[:, :, :, 0] = 30
            xg[:, :, :, 1] = 30
            xg[:, :, :, 2] = -60
            R = torch.zeros(4, 4, 16, 16, device=dev, dtype=torch.bfloat16)
            b = torch.zeros(4, 4, 16, device=dev, dtype=torch.bfloat16)
            z = torch.zeros(4, 6, 16, device=dev)
            with torch.inference_mode():
                out = _chunked(be, xg, R, b, z, z, split=25)
            ref = _reference(xg, R, b, z, z)
            finite = all(bool(torch.isfinite(t).all()) for t in out)
            e = _err(out, ref)
            # c reaches -60 exactly; bf16 holds integers up to 256 exactly
            check(f"{be} cell state driven to -60: finite, == reference", finite and e < BF16_TOL,
                  f"finite {finite}, min c {float(out[2].min()):.1f}, max abs err {e:.2e}")

        def model(be=be):
            cfg = ModelConfig(vocab_size=100, input_size=32, hidden_size=80, num_heads=4, dtype="bfloat16")
            mt = build_model(cfg.replace(backend="torch"), generator=torch.Generator().manual_seed(3), device=dev)
            mf = build_model(cfg.replace(backend=be), generator=torch.Generator().manual_seed(3), device=dev)
            tok = torch.randint(0, 100, (6, 9), generator=torch.Generator().manual_seed(4)).to(dev)
            with torch.inference_mode():
                a, _ = mt(tok, time_chunk=4)
                f, _ = mf(tok, time_chunk=4)
                la = float(F.cross_entropy(a[:, :-1].float().reshape(-1, 100), tok[:, 1:].reshape(-1)))
                lf = float(F.cross_entropy(f[:, :-1].float().reshape(-1, 100), tok[:, 1:].reshape(-1)))
            e = float((a.float() - f.float()).abs().max())
            check(f"{be} bf16 LSTM model (D=20, chunks of 4) ~ torch backend", abs(la - lf) < 2e-2 and e < 5e-2,
                  f"loss {lf:.4f} vs {la:.4f}, max |dlogit| {e:.2e}")

        def timing(be=be):
            t0 = time.time()
            with torch.inference_mode():
                out = recurrence(*xt, backend=be)
                torch.cuda.synchronize()
                first = time.time() - t0
                t = statistics.median(_time(lambda: recurrence(*xt, backend=be)))
            e = _err((out[0], *out[1]), ref_t)
            vs = ", ".join(f"{base[k] / t:.2f}x {k}" for k in base)
            check(f"{be} T{T} N{N} B{B} D{D} bf16 forward", e < BF16_TOL,
                  f"{t * 1e3:.2f} ms (median of 5; first call {first:.1f} s), {flops / t / 1e12:.1f} TFLOP/s = "
                  f"{flops / t / 1e12 / peak:.1%} of the measured peak; speed-up {vs}; max abs err {e:.2e}")

        guarded(f"{be} numerics", numerics)
        guarded(f"{be} saturated cell", saturated)
        guarded(f"{be} model", model)
        if peak is not None:
            guarded(f"{be} timing", timing)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/results/flashrnn_checks.md")
    ap.add_argument("--backends", default=",".join(CUDA_BACKENDS), help="comma-separated flashrnn_* names")
    ap.add_argument("--time_shape", default="11,32,1024,128", help="T,N,B,D of the timed forward; T=0 skips it")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("flashrnn_checks needs a CUDA device", file=sys.stderr)
        return 2
    t0 = time.time()
    lines = []

    def report(msg):
        lines.append(msg)
        print(msg, flush=True)
    try:
        version = importlib.metadata.version("flashrnn")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    report(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, flashrnn {version}")
    shape = tuple(int(v) for v in args.time_shape.split(","))
    results = flashrnn_gpu_checks("cuda", backends=[b for b in args.backends.split(",") if b], time_shape=shape,
                                  report=report)
    bad = sum(not ok for _, ok, _ in results)
    report(f"{len(results) - bad} passed, {bad} failed ({time.time() - t0:.0f} s)")
    head = [f"# FlashRNN backend checks ({time.strftime('%Y-%m-%d')})", "",
            f"Command: `python bench/flashrnn_checks.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
            "```"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(head + lines + ["```"]) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
