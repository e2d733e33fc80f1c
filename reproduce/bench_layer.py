"""Every method on the same layer at the same budget: reconstruction error and wall time.

    python reproduce/bench_layer.py                    # a real SmolLM2-135M layer and its real inputs
    python reproduce/bench_layer.py --layer all --rows sparsegpt "oats (subspace SVD)" "hassle (rank ratio 0.1)"
                                                       # every layer of block 15, three methods
    python reproduce/bench_layer.py --synthetic        # the seeded synthetic 576x1536 layer
    python reproduce/bench_layer.py --tiny-model       # wall time of compressing a tiny Llama per method

The methods are the rows of a table config (``--table``, default conf/table/bench_methods.yaml) at the
same budget. Prints the relative output error ||X W^T - X W_hat^T|| / ||X W^T||, the D-scaled weight
error OATS minimises, parameters kept, and seconds (per layer: the error table, lowest marked).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from oats.config import build_method
from oats.runtime import cpu_model
from oats.sequential import compress_model
from oats.stats import LayerStats
from reproduce.layer_regression import synthetic_layer as seeded_layer
from reproduce.tables import method_cells

TABLE = "bench_methods"  # the methods compared: conf/table/bench_methods.yaml


MODELS = {"smollm2-135m": ("SmolLM2-135M", False), "gemma3-270m": ("Gemma-3-270M", True)}  # name, BOS per window


def real_layers(block: int, layers: list[str] | None, nsamples: int, seqlen: int, model_name: str = "smollm2-135m",
                ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], str]:
    """{layer: (weight, its inputs)} of block ``block`` of a real offline model on local calibration text
    (the dense model's inputs, as the table runs calibrate it); ``layers`` None = every linear of the block."""
    from oats.data.calibration import get_calibration
    from oats.data.paths import data_file
    from oats.models.adapters import get_adapter, text_config
    from oats.models.loading import load_model

    if model_name not in MODELS:
        raise ValueError(f"model {model_name!r} unknown; allowed: {', '.join(MODELS)}")
    title, bos = MODELS[model_name]
    model, tok = load_model(model_name)
    calib = get_calibration(tok, source=str(data_file("calib/wiki_vital_en.txt")), nsamples=nsamples,
                            seqlen=seqlen, style="concat", seed=42, bos_per_window=bos)
    blk = get_adapter(model).blocks(model)[block]
    names = layers or [u.path for u in get_adapter(model).units(blk, text_config(model))]
    xs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [blk.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: xs[n].append(i[0].reshape(-1, i[0].shape[-1]).float())) for n in names]
    with torch.no_grad():
        for row in calib:
            model(row[None])
    for h in hooks:
        h.remove()
    out = {n: (blk.get_submodule(n).weight.detach().float().clone(), torch.cat(xs[n])) for n in names}
    return out, f"{title} layers.{block} (dense inputs), {nsamples}x{seqlen} wiki tokens"


def synthetic_layer(d_out: int = 576, d_in: int = 1536, n: int = 4096) -> tuple[torch.Tensor, torch.Tensor, str]:
    W, X = seeded_layer(d_out, d_in, n)
    return W, X, f"synthetic {d_out}x{d_in} (reproduce/layer_regression.py's seeded layer), {n} input rows"


def layer_table(W: torch.Tensor, X: torch.Tensor, cells: list) -> list[dict]:
    """One line per method cell: relative output and D-scaled weight errors, rank, parameters, seconds."""
    from oats.budget import parse_nm
    from oats.stats import STATISTICS

    st = LayerStats(W.shape[1], tuple(STATISTICS))
    st.add(X)
    d = st.column_rms()
    ref = X @ W.T
    rows = []
    for label, _, mcfg, compression, nm in cells:
        method = build_method(mcfg)
        budget = method.budget(*W.shape, compression, parse_nm(nm))
        t = time.perf_counter()
        out = method.compress(W, st, budget)
        seconds = time.perf_counter() - t
        W_hat = out.merged().float()
        rank = 0 if out.U is None else out.U.shape[1]
        rows.append({
            "method": label,
            "rel_output_error": float(torch.linalg.norm(ref - X @ W_hat.T) / torch.linalg.norm(ref)),
            "scaled_weight_error": float(torch.linalg.norm((W - W_hat) * d) / torch.linalg.norm(W * d)),
            "rank": rank,
            "params": int((out.sparse != 0).sum()) + rank * sum(W.shape),
            "seconds": seconds,
        })
    return rows


def tiny_model_times(compression: float) -> list[dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    rows = []
    calib = torch.randint(0, 512, (16, 128), generator=torch.Generator().manual_seed(0))
    for label, _, mcfg, _, _ in method_cells(TABLE, [f"compression={compression}"]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                                             bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
        t = time.perf_counter()
        report = compress_model(model, calib, build_method(mcfg), compression, progress=False)
        rows.append({"method": label, "seconds": time.perf_counter() - t,
                     "compression": report.totals()["compression"]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--tiny-model", action="store_true")
    p.add_argument("--model", default="smollm2-135m", choices=sorted(MODELS), help="the real model (offline)")
    p.add_argument("--block", type=int, default=15)
    p.add_argument("--layer", default="mlp.down_proj", help="a linear of the block, or 'all'")
    p.add_argument("--table", default=TABLE, help="the table whose methods are compared")
    p.add_argument("--rows", nargs="*", default=None, help="only these rows of the table")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--compression", type=float, default=0.5)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    import pandas as pd

    pd.set_option("display.width", 200)
    if args.tiny_model:
        print("tiny Llama (4 blocks, hidden 256, mlp 768), 16x128 calibration tokens, "
              f"compression {args.compression}, threads {torch.get_num_threads()}")
        print(pd.DataFrame(tiny_model_times(args.compression)).to_string(index=False, float_format="%.4f"))
        return
    cells = [c for c in method_cells(args.table, [f"compression={args.compression}"])
             if args.rows is None or c[0] in args.rows]
    if len({c[1] for c in cells}) > 1:  # several columns: name each cell "row | col"
        cells = [(f"{row} | {col}", col, *rest) for row, col, *rest in cells]
    if args.synthetic:
        W, X, desc = synthetic_layer()
        layers = {"synthetic": (W, X)}
    else:
        layers, desc = real_layers(args.block, None if args.layer == "all" else [args.layer], args.nsamples,
                                   args.seqlen, args.model)
    print(f"{desc}; table {args.table}; compression {args.compression}; threads {torch.get_num_threads()}; "
          f"CPU {cpu_model()}")
    frames = [pd.DataFrame(layer_table(W, X, cells)).assign(layer=name) for name, (W, X) in layers.items()]
    df = pd.concat(frames, ignore_index=True)
    if len(layers) == 1:
        print(df.drop(columns="layer").to_string(index=False, float_format="%.4f"))
        return
    err = df.pivot(index="layer", columns="method", values="rel_output_error")
    print("relative output error ||X W^T - X W_hat^T|| / ||X W^T|| per layer (lowest marked *):")
    print(err.apply(lambda r: r.map(lambda v: f"{v:.4f}{'*' if v == r.min() else ' '}"), axis=1).to_string())
    print("\nseconds per layer:")
    print(df.pivot(index="layer", columns="method", values="seconds").to_string(float_format="%.2f"))


if __name__ == "__main__":
    main()
