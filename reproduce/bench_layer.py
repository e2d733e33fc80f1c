"""Every method on the same layer at the same budget: reconstruction error and wall time.

    python reproduce/bench_layer.py                    # a real SmolLM2-135M layer and its real inputs
    python reproduce/bench_layer.py --synthetic        # random 576x1536 weight, correlated inputs
    python reproduce/bench_layer.py --tiny-model       # wall time of compressing a tiny Llama per method

Prints a table: relative output error ||X W^T - X W_hat^T|| / ||X W^T||, the
D-scaled weight error OATS minimises, parameters kept, and seconds.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from oats.config import build_method
from oats.sequential import compress_model
from oats.stats import LayerStats
from reproduce.layer_regression import synthetic_layer as seeded_layer
from reproduce.tables import method_cells

TABLE = "bench_methods"  # the methods compared: conf/table/bench_methods.yaml


def real_layer(block: int, layer: str, nsamples: int, seqlen: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Weight of ``model.layers[block].<layer>`` of SmolLM2-135M and its inputs on local calibration text."""
    from oats.data.calibration import get_calibration
    from oats.data.paths import data_file
    from oats.models.loading import load_model

    model, tok = load_model("smollm2-135m")
    calib = get_calibration(tok, source=str(data_file("calib/wiki_vital_en.txt")), nsamples=nsamples,
                            seqlen=seqlen, style="concat", seed=42)
    lin = model.model.layers[block].get_submodule(layer)
    xs: list[torch.Tensor] = []
    h = lin.register_forward_hook(lambda m, i, o: xs.append(i[0].reshape(-1, i[0].shape[-1]).float()))
    with torch.no_grad():
        for row in calib:
            model(row[None])
    h.remove()
    desc = f"SmolLM2-135M layers.{block}.{layer} {tuple(lin.weight.shape)}, {nsamples}x{seqlen} wiki tokens"
    return lin.weight.detach().float().clone(), torch.cat(xs), desc


def synthetic_layer(d_out: int = 576, d_in: int = 1536, n: int = 4096) -> tuple[torch.Tensor, torch.Tensor, str]:
    W, X = seeded_layer(d_out, d_in, n)
    return W, X, f"synthetic {d_out}x{d_in} (reproduce/layer_regression.py's seeded layer), {n} input rows"


def layer_table(W: torch.Tensor, X: torch.Tensor, compression: float) -> list[dict]:
    st = LayerStats(W.shape[1], ("second_moment", "hessian"))
    st.add(X)
    d = st.column_rms()
    ref = X @ W.T
    rows = []
    for label, _, mcfg, _, _ in method_cells(TABLE, [f"compression={compression}"]):
        method = build_method(mcfg)
        budget = method.budget(*W.shape, compression, None)
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
    p.add_argument("--block", type=int, default=15)
    p.add_argument("--layer", default="mlp.down_proj")
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
    W, X, desc = synthetic_layer() if args.synthetic else real_layer(args.block, args.layer, args.nsamples,
                                                                      args.seqlen)
    print(f"{desc}; compression {args.compression}; threads {torch.get_num_threads()}")
    print(pd.DataFrame(layer_table(W, X, args.compression)).to_string(index=False, float_format="%.4f"))


if __name__ == "__main__":
    main()
