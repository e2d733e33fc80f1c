"""File sizes of a compressed SmolLM2-135M per method: the bitmask format against dense storage.

    python reproduce/bench_storage.py                      # magnitude, Wanda, SparseGPT, OATS at 50%, fp32 + bf16
    python reproduce/bench_storage.py --methods wanda oats --compression 0.6

Compresses the real SmolLM2-135M (offline, 8 x 512 local calibration tokens) with each method, then
writes ``save_compressed`` in the compact bitmask format (default) and with dense sparse parts, and,
for sparse-only methods, the compressed-tensors folder (:mod:`oats.ct_export`). Prints each file's
size against the dense size of the same layers (fp32, or bf16 for the ``bf16`` rows) and checks
that the compact file loads back to identical layers. Sizes depend on the budget, not on the
values, so OATS runs ``--iterations`` (default 2) iterations here; the structure (nonzeros per row,
rank) is the same at 80.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt", "oats"])
    p.add_argument("--compression", type=float, default=0.5)
    p.add_argument("--iterations", type=int, default=2, help="OATS iterations (sizes do not depend on them)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    from oats.config import build_method
    from oats.ct_export import save_compressed_tensors
    from oats.data.calibration import get_calibration
    from oats.layers import compressed_linears, iter_compressed, load_compressed, save_compressed
    from oats.models.loading import load_model
    from oats.runtime import cpu_model
    from oats.sequential import compress_model

    torch.set_num_threads(args.threads)
    base, tok = load_model("smollm2-135m")
    calib = get_calibration(tok, source="wiki_vital_en", nsamples=8, seqlen=512, style="concat", seed=42)
    print(f"SmolLM2-135M at compression {args.compression}; CPU {cpu_model()}; sizes in MB (1e6 bytes)")
    print(f"{'method':<12}{'values':>7}{'dense layers':>14}{'compact':>10}{'ratio':>7}{'dense S':>10}{'ratio':>7}"
          f"{'c-tensors':>11}  loads back identical")
    for name in args.methods:
        mcfg = {"name": name, **({"iterations": args.iterations} if name == "oats" else {})}
        model = copy.deepcopy(base)
        compress_model(model, calib, build_method(mcfg), args.compression, progress=False)
        for dtype in (torch.float32, torch.bfloat16):
            m = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
            layers = [lin for _, c in iter_compressed(m) for lin in compressed_linears(c)]
            dense_bytes = sum(lin.sparse.numel() * lin.sparse.element_size() for lin in layers)
            with tempfile.TemporaryDirectory() as tmp:
                compact = save_compressed(m, Path(tmp) / "compact.safetensors")
                plain = save_compressed(m, Path(tmp) / "dense.safetensors", compact=False)
                ct = "-"
                if all(lin.rank == 0 for lin in layers):
                    folder = save_compressed_tensors(m, Path(tmp) / "ct")
                    ct = f"{(folder / 'model.safetensors').stat().st_size / 1e6:.1f}*"
                back = load_compressed(copy.deepcopy(base).to(dtype), compact)
                same = all(torch.equal(a.sparse, b.sparse) and torch.equal(a.U, b.U) and torch.equal(a.V, b.V)
                           for (_, x), (_, y) in zip(iter_compressed(m), iter_compressed(back))
                           for a, b in zip(compressed_linears(x), compressed_linears(y)))
                cs, ps = compact.stat().st_size, plain.stat().st_size
                print(f"{name:<12}{str(dtype).split('.')[-1]:>7}{dense_bytes / 1e6:>14.1f}{cs / 1e6:>10.1f}"
                      f"{cs / dense_bytes:>7.2f}{ps / 1e6:>10.1f}{ps / dense_bytes:>7.2f}{ct:>11}  {same}", flush=True)
    print("dense layers: the compressed linears' dense size in that dtype; compact: save_compressed (bitmask); "
          "dense S: save_compressed(compact=False); c-tensors*: the whole model (embeddings included) in "
          "compressed-tensors' sparse-bitmask format, sparse-only methods")
    return 0


if __name__ == "__main__":
    sys.exit(main())
