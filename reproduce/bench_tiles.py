"""tile + GEMM at several tile sizes against PyTorch's dense GEMM, on Llama-3-8B-shaped layers.

    python reproduce/bench_tiles.py                       # bf16, 128 tokens, densities 0.5 and 0.3
    python reproduce/bench_tiles.py --dtype float32 --sizes 2 4 8

Prints, per layer shape and density, the best of 5 calls of the dense GEMM (W x^T) and of
:class:`oats.speed.bitmask_engine.BitmaskLinear` on its tile + GEMM path with each tile size (MiB), and
the ratio dense / tiled. Which sizes pay depends on the machine (the GEMM's cost per call, the caches):
the layer times ``TILE_SIZES`` itself; this shows why those.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from oats import native  # noqa: E402
from oats.runtime import cpu_model  # noqa: E402
from oats.sparse_format import BitmaskTensor  # noqa: E402
from oats.speed.bitmask_engine import BitmaskLinear  # noqa: E402


def best_ms(f, calls: int = 5) -> float:
    f()
    best = float("inf")
    for _ in range(calls):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16, 32], help="tile sizes in MiB")
    p.add_argument("--density", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dt = getattr(torch, args.dtype)
    print(f"CPU: {cpu_model()}, ISA path {native.isa_in_use()}; {args.threads} threads; {args.dtype}; "
          f"{args.tokens} tokens; best of 5 calls")
    g = torch.Generator().manual_seed(0)
    for density in args.density:
        for d_out, d_in in ((14336, 4096), (4096, 14336)):
            W = torch.randn(d_out, d_in, generator=g)
            W[torch.rand(d_out, d_in, generator=g) > density] = 0
            x = torch.randn(args.tokens, d_in, generator=g)
            Wd, xd = W.to(dt), x.to(dt)
            layer = BitmaskLinear(BitmaskTensor.from_dense(W, dt), path="tile-gemm")
            dense = best_ms(lambda: Wd @ xd.t())
            cells = []
            for mb in args.sizes:
                ms = best_ms(lambda: layer._apply(x, "tile-gemm", mb << 20))
                cells.append(f"{mb} MiB {ms:6.2f} ms ({dense / ms:.2f}x)")
            print(f"{d_out}x{d_in} density {density}: dense {dense:6.2f} ms; tile-gemm " + ", ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
