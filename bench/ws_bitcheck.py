"""One step of the warp-specialised Gluon kernel against the Triton per-step kernel on the same
inputs: the largest |difference| of h and of c (0.0: bit for bit equal). Needs a Hopper GPU.

    python bench/ws_bitcheck.py STAGES K N D B V [PREFETCH COOP ONE_DOT STAGE_OUT [PINGPONG [BK [LOADER [TMA_OUT]]]]]
    python bench/ws_bitcheck.py 5 2 220 300 1024 100 1 1 1 0      # the large preset's shapes and entry
    python bench/ws_bitcheck.py 12 4 220 300 1024 100 0 0 1 0 1   # the weight-resident ping-pong form (BK 32)
    python bench/ws_bitcheck.py 8 4 220 300 1024 100 0 0 1 0 1 64 1 1 # ... the large preset's entry (BK 64, loader,
                                                                    # c and h stored by TMA)

K stacked models of N heads of D units (padded to the kernel's Dk; BD 64 where it divides Dk, else
32; BK 32 unless given; BD 32 with PINGPONG), B batch rows, vocabulary V; the flags 0/1 are the
step-config keys of the same names (LOADER with consumer_regs 208; TMA_OUT: `tma_out`). The Gluon kernel gets the real
D, as the model passes it (the ping-pong form then skips the last k-step's padding columns; h's
padding here is random, not zero, and still adds nothing, since W's padding rows are zero). The Gluon kernel's outputs start as NaN,
so a unit it does not write shows. c's and G's padding units are zero, as in every state and table
the model makes, and the kernel also runs with c updated in place (c_in is c_out, as in the trainer's
steps after a chunk's first): the ping-pong form then neither reads nor writes c's padding, which
must come out equal too.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.lstm_fused import lstm_step_, step_tiles, tile_recurrent_weight  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 6 or not all(a.isdigit() for a in argv):
        print(__doc__, file=sys.stderr)
        return 2
    st, K, N, D, B, V = map(int, argv[:6])
    pre, coop, one, so, pp = (bool(int(argv[i])) if len(argv) > i else False for i in range(6, 11))
    BK = int(argv[11]) if len(argv) > 11 else 32
    ld = {"loader": True, "consumer_regs": 208} if len(argv) > 12 and int(argv[12]) else {}
    if len(argv) > 13 and int(argv[13]):
        ld["tma_out"] = True
    if not torch.cuda.is_available():
        print("ws_bitcheck needs a CUDA device (Hopper)", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    Dk = step_tiles(D)[0]
    BD = 64 if Dk % 64 == 0 and not pp else 32
    g = torch.Generator(device=dev).manual_seed(0)
    R = (torch.randn(K, 4, N, D, D, device=dev, generator=g) / D ** .5).to(torch.bfloat16)
    W = tile_recurrent_weight(R, N=N, Dk=Dk, BD=BD)
    G = (torch.randn(K, V, N, 4 * Dk, device=dev, generator=g) * .5).to(torch.bfloat16)
    G.view(K, V, N, 4, Dk)[..., D:] = 0                 # zero in the padding units, as the input table
    h = (torch.rand(K, B, N, Dk, device=dev, generator=g) - .5).to(torch.bfloat16)
    c = torch.randn(K * N, B, Dk, device=dev, generator=g) * .3
    c[..., D:] = 0
    tok = torch.randint(0, V, (B, 3), device=dev, generator=g)
    h1, c1 = torch.empty_like(h), torch.empty_like(c)
    lstm_step_(h, h1, W, G, tok, 1, c, c1, K=K, N=N, Dk=Dk, BD=BD, BK=BK, BM=64, one_dot=True, num_warps=4)
    h2, c2 = torch.full_like(h, float("nan")), torch.full_like(c, float("nan"))
    lstm_step_(h, h2, W, G, tok, 1, c, c2, K=K, N=N, Dk=Dk, BD=BD, BK=BK, D=D, BM=64, ws=True, num_stages=st,
               prefetch=pre, coop=coop, one_dot=one, stage_out=so, pingpong=pp, **ld)
    h3, c3 = torch.full_like(h, float("nan")), c.clone()
    lstm_step_(h, h3, W, G, tok, 1, c3, c3, K=K, N=N, Dk=Dk, BD=BD, BK=BK, D=D, BM=64, ws=True, num_stages=st,
               prefetch=pre, coop=coop, one_dot=one, stage_out=so, pingpong=pp, **ld)
    torch.cuda.synchronize()
    dh, dc = float((h1.float() - h2.float()).abs().max()), float((c1 - c2).abs().max())    # NaN if any is
    dh3, dc3 = float((h1.float() - h3.float()).abs().max()), float((c1 - c3).abs().max())
    print(f"ws {' '.join(argv)}: max |dh| {dh} max |dc| {dc}; c in place: max |dh| {dh3} max |dc| {dc3}")
    return 0 if dh == 0.0 and dc == 0.0 and dh3 == 0.0 and dc3 == 0.0 else 1         # NaN compares unequal


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
