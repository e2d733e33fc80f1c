"""One token through Llama-3-8B-shaped layers on two builds of the native kernels, interleaved in one process.

    python reproduce/bench_kernels.py --old /path/to/other/oats/_kernels*.so         # old vs this tree
    python reproduce/bench_kernels.py --old A.so --new B.so --compression 0.5 --repeats 25

Times ``oats_bitmask_matmul`` (unstructured) and ``oats_bitmask_lowrank_decode`` (OATS, rank ratio 0.25)
of each build on the same layers (exact budgets, :func:`oats.budget.layer_budget`; 14336 x 4096 and
4096 x 14336), fp32 and bf16 values, alternating builds every call; prints the median ms per token
and the ratio. A build of another commit: check it out beside this one and run
``python setup.py build_ext --inplace`` there with this environment's Python. Both builds must keep
this C ABI (all commits since the fused decode do).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # OpenBLAS threads sleep after a call instead of spinning
REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="the other build's _kernels*.so")
    p.add_argument("--new", default=None, help="default: this tree's built kernels")
    p.add_argument("--compression", type=float, nargs="+", default=[0.4, 0.5, 0.7])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--isa", default=None, help="the path both builds take (avx2, avx512, ...; default: OATS_ISA "
                                                 "or the best this CPU has)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from oats.speed.env import set_thread_env

    set_thread_env(args.threads)
    import importlib.util

    import torch

    from oats.budget import layer_budget
    from oats.native import _isa_code, declare, isa_in_use
    from oats.runtime import cpu_model
    from oats.sparse_format import BitmaskTensor

    new = args.new or importlib.util.find_spec("oats._kernels").origin
    for path in (args.old, new):
        if not Path(path).is_file():
            raise SystemExit(f"kernels {path!r}: no such file")
    libs = {k: declare(ctypes.CDLL(path), ("oats_bitmask_matmul", "oats_bitmask_lowrank_decode"))
            for k, path in (("old", args.old), ("new", new))}

    def layer(d_out: int, d_in: int, c: float, rr: float, dt: torch.dtype, seed: int):
        b = layer_budget(d_out, d_in, c, rr)
        g = torch.Generator().manual_seed(seed)
        idx = torch.rand(d_out, d_in, generator=g).argsort(1)[:, : b.row_nnz]
        S = torch.zeros(d_out, d_in)
        S.scatter_(1, idx, torch.randn(d_out, b.row_nnz, generator=g))
        U = torch.randn(d_out, b.rank, generator=g).to(dt) if b.rank else None
        V = torch.randn(b.rank, d_in, generator=g).to(dt) if b.rank else None
        return BitmaskTensor.from_dense(S, dt), U, V, b.rank

    isa = _isa_code(args.isa) if args.isa else _isa_code(isa_in_use())  # checked: names the allowed paths
    print(f"old {args.old}\nnew {new}\nCPU {cpu_model()}, {args.threads} threads, ISA path "
          f"{args.isa or isa_in_use()}; ms per token, median of "
          f"{args.repeats}, builds alternating")
    for c in args.compression:
        for d_out, d_in in ((14336, 4096), (4096, 14336)):
            for dt in (torch.float32, torch.bfloat16):
                line = f"{int(round(c * 100))}% {d_out}x{d_in} {str(dt)[6:]:8s}"
                for variant, rr in (("unstructured", 0.0), ("oats", 0.25)):
                    layers = [layer(d_out, d_in, c, rr, dt, s) for s in range(2)]  # alternated: neither stays cached
                    x, y, bf = torch.randn(d_in), torch.empty(d_out), int(dt == torch.bfloat16)
                    times = {k: [] for k in libs}
                    for rep in range(args.repeats):
                        for name, lib in libs.items():
                            b, U, V, r = layers[rep % 2]
                            z = torch.empty(max(1, r))
                            t = time.perf_counter()
                            if r:
                                lib.oats_bitmask_lowrank_decode(
                                    b.values.data_ptr(), bf, b.bitmask.data_ptr(), b.row_offsets.data_ptr(), b.nnz,
                                    d_out, d_in, x.data_ptr(), y.data_ptr(), 0, V.data_ptr(), U.data_ptr(), bf, r,
                                    z.data_ptr(), isa, args.threads)
                            else:
                                lib.oats_bitmask_matmul(b.values.data_ptr(), bf, b.bitmask.data_ptr(),
                                                        b.row_offsets.data_ptr(), b.nnz, d_out, d_in, x.data_ptr(), 1,
                                                        y.data_ptr(), 0, isa, args.threads)
                            times[name].append(time.perf_counter() - t)
                    old, nw = (1e3 * statistics.median(times[k]) for k in ("old", "new"))
                    line += f" | {variant} old {old:.3f} new {nw:.3f} ({old / nw:.2f}x)"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
