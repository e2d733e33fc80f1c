"""OATS solver benchmark: the exact full-SVD reference vs the warm-started subspace solver.

    python reproduce/bench_solver.py                          # SmolLM2 real layers + Llama-3-8B shapes
    python reproduce/bench_solver.py --shapes smollm2 --iterations 80
    python reproduce/bench_solver.py --shapes llama3 --iterations 10 --device cuda

For each matrix both solvers run the same number of iterations on the same weight and
statistics, in one process, one after the other; the table gives their wall times, their
final objectives ||D (W - S - L)||_F and the ratios. SmolLM2-135M layers are real weights
with real input statistics (local calibration text); Llama-3-8B shapes are synthetic weights
with a decaying spectrum and heavy-tailed columns, and lognormal column scales with a few
outlier features.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from oats import native
from oats.budget import layer_budget
from oats.runtime import cpu_model
from oats.methods.oats import TruncatedSVD, oats_decompose

LLAMA3_SHAPES = {"q_proj 4096x4096": (4096, 4096), "k_proj 1024x4096": (1024, 4096),
                 "gate/up 14336x4096": (14336, 4096), "down 4096x14336": (4096, 14336)}
SMOLLM2_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj", "mlp.down_proj")
ALL_SMOLLM2_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                      "mlp.up_proj", "mlp.down_proj")


def synthetic(d_out: int, d_in: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight with singular values ~ i^-0.6, lognormal column norms; D lognormal with 8 outlier features."""
    g = torch.Generator().manual_seed(seed)
    r = min(d_out, d_in)
    s = torch.arange(1, r + 1, dtype=torch.float32).pow(-0.6)
    A = torch.randn(d_out, r, generator=g) / d_out**0.5
    B = torch.randn(r, d_in, generator=g) / d_in**0.5
    W = (A * s) @ B
    col = torch.exp(0.5 * torch.randn(d_in, generator=g))
    W = W * col
    d = torch.exp(0.7 * torch.randn(d_in, generator=g))
    d[torch.randperm(d_in, generator=g)[:8]] *= 30.0
    return W, d


def smollm2_layers(block: int, nsamples: int, seqlen: int,
                   layers: tuple[str, ...] = SMOLLM2_LAYERS) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from oats.data.calibration import get_calibration
    from oats.models.loading import load_model
    from oats.stats import LayerStats

    model, tok = load_model("smollm2-135m")
    calib = get_calibration(tok, source="wiki_vital_en", nsamples=nsamples, seqlen=seqlen, style="concat", seed=42)
    blk = model.model.layers[block]
    stats = {name: LayerStats(blk.get_submodule(name).in_features) for name in layers}
    hooks = [blk.get_submodule(n).register_forward_hook(lambda m, i, o, st=st: st.add(i[0])) for n, st in stats.items()]
    with torch.no_grad():
        for row in calib:
            model(row[None])
    for h in hooks:
        h.remove()
    out = {}
    for name, st in stats.items():
        W = blk.get_submodule(name).weight.detach().float().clone()
        out[f"SmolLM2 L{block} {name.split('.')[-1]} {W.shape[0]}x{W.shape[1]}"] = (W, st.column_rms())
    return out


def run_one(W, d, compression, rank_ratio, iterations, solver, device) -> tuple[float, float]:
    W, d = W.to(device), d.to(device)
    budget = layer_budget(*W.shape, compression, rank_ratio)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    dec = oats_decompose(W, d, budget, iterations, solver)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    objective = float(torch.linalg.norm((W - dec.sparse - dec.U @ dec.V) * d))
    return seconds, objective


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", choices=["smollm2", "llama3", "all"], default="all")
    p.add_argument("--iterations", type=int, default=80)
    p.add_argument("--llama-iterations", type=int, default=None,
                   help="iterations for the Llama-3-8B shapes (default: --iterations)")
    p.add_argument("--compression", type=float, default=0.5)
    p.add_argument("--rank-ratio", type=float, default=0.3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--block", type=int, nargs="+", default=[15], help="SmolLM2 block(s)")
    p.add_argument("--all-layers", action="store_true", help="every linear of the SmolLM2 block(s), not four")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    import pandas as pd

    mats: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
    if args.shapes in ("smollm2", "all"):
        for block in args.block:
            layers = ALL_SMOLLM2_LAYERS if args.all_layers else SMOLLM2_LAYERS
            for k, (W, d) in smollm2_layers(block, 16, 512, layers).items():
                mats[k] = (W, d, args.iterations)
    if args.shapes in ("llama3", "all"):
        for k, shape in LLAMA3_SHAPES.items():
            W, d = synthetic(*shape)
            mats[f"Llama-3-8B {k} (synthetic)"] = (W, d, args.llama_iterations or args.iterations)
    print(f"compression {args.compression}, rank ratio {args.rank_ratio}, device {device}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    probe = TruncatedSVD(1, "subspace")
    print(f"subspace solver: oversample {probe.oversample}, one subspace step + {probe.power_iters} power steps per "
          f"call ({probe.cold_power_iters} on the first, cold call); CPU {cpu_model()}; native threshold: "
          f"{native.status()}")
    rows = []
    for name, (W, d, iters) in mats.items():
        t_ref, o_ref = run_one(W, d, args.compression, args.rank_ratio, iters, "full", device)
        t_fast, o_fast = run_one(W, d, args.compression, args.rank_ratio, iters, "subspace", device)
        rows.append({"matrix": name, "iters": iters, "rank": layer_budget(*W.shape, args.compression,
                                                                         args.rank_ratio).rank,
                     "full_s": t_ref, "subspace_s": t_fast, "speedup": t_ref / t_fast,
                     "obj_full": o_ref, "obj_subspace": o_fast, "obj_delta": o_fast / o_ref - 1})
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1,
                                                float_format=lambda x: f"{x:.4g}"), flush=True)
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print()
    print(df.to_string(index=False, formatters={"obj_delta": "{:+.3%}".format, "speedup": "{:.1f}x".format},
                       float_format=lambda x: f"{x:.4g}"))
    worst = df.loc[df.obj_delta.abs().idxmax()]
    print(f"largest |objective difference|: {worst.obj_delta:+.3%} ({worst.matrix}); "
          f"subspace total {df.subspace_s.sum():.1f} s vs full {df.full_s.sum():.1f} s")


if __name__ == "__main__":
    main()
