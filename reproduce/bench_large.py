"""A model larger than the memory it is compressed in: a seeded synthetic Llama written as safetensors,
compressed and evaluated block by block (load=stream), with its peak resident memory per phase.

    python reproduce/bench_large.py make --out /data/llama-synth --blocks 14     # 13.3 GB fp32 (Llama-3-8B shapes)
    python reproduce/bench_large.py run --folder /data/llama-synth --method wanda
    python reproduce/bench_large.py run --folder /data/llama-synth --method oats --iterations 2
    python reproduce/bench_large.py run --folder /data/llama-synth --method oats --iterations 2 --resume
                                                                                 # evaluate the finished one again
    python reproduce/bench_large.py agree                                        # streamed == whole model, small

``make`` writes one shard per block (hidden 4096, MLP 14336, 32 heads / 8 KV heads, vocabulary
32000, untied head: real Llama-3-8B layer shapes), weights N(0, 0.02) from ``--seed``, never
holding more than one block. ``run`` streams it: each block is read when the driver reaches it,
compressed, written to the checkpoint folder (the compressed model) and freed; then WikiText-style
perplexity on random-token windows is computed block by block from those files. It prints the
model's size on disk, the peak RSS (whole process) and its ratio to the size, and the per-phase
profile (:mod:`oats.profile`). Calibration and evaluation tokens are seeded random ids: the
model is random, so only memory, time and agreement are measured here, not quality.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oats.runtime import cpu_model  # noqa: E402

LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
             "vocab_size": 32000}


def write_synthetic_llama(out: str | Path, blocks: int, seed: int = 0, hidden_size: int = 4096,
                          intermediate_size: int = 14336, num_attention_heads: int = 32,
                          num_key_value_heads: int = 8, vocab_size: int = 32000) -> int:
    """Write a seeded random Llama (fp32, one safetensors shard per block + index) to ``out``; its bytes.

    Only one block's tensors are in memory at a time. The folder is written whole or not at all.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from oats.io import atomic_folder

    config = LlamaConfig(hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=blocks,
                         num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                         vocab_size=vocab_size, max_position_embeddings=4096, tie_word_embeddings=False,
                         rms_norm_eps=1e-5)
    head_dim = hidden_size // num_attention_heads
    kv = num_key_value_heads * head_dim
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).mul_(0.02).float()

    def block(i: int) -> dict[str, torch.Tensor]:
        p = f"model.layers.{i}."
        return {p + "self_attn.q_proj.weight": normal(hidden_size, hidden_size),
                p + "self_attn.k_proj.weight": normal(kv, hidden_size),
                p + "self_attn.v_proj.weight": normal(kv, hidden_size),
                p + "self_attn.o_proj.weight": normal(hidden_size, hidden_size),
                p + "mlp.gate_proj.weight": normal(intermediate_size, hidden_size),
                p + "mlp.up_proj.weight": normal(intermediate_size, hidden_size),
                p + "mlp.down_proj.weight": normal(hidden_size, intermediate_size),
                p + "input_layernorm.weight": torch.ones(hidden_size),
                p + "post_attention_layernorm.weight": torch.ones(hidden_size)}

    shards = [("model-outside.safetensors", lambda: {"model.embed_tokens.weight": normal(vocab_size, hidden_size),
                                                     "model.norm.weight": torch.ones(hidden_size),
                                                     "lm_head.weight": normal(vocab_size, hidden_size)})]
    shards += [(f"model-block-{i:04d}.safetensors", lambda i=i: block(i)) for i in range(blocks)]
    weight_map, total = {}, 0
    with atomic_folder(Path(out)) as tmp:
        config.save_pretrained(tmp)
        for name, make in shards:
            tensors = make()
            save_file(tensors, str(tmp / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, name))
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            del tensors
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return total


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def run(folder: Path, method: str, compression: float, iterations: int, nsamples: int, seqlen: int, windows: int,
        work: Path, threads: int, resume: bool = False) -> dict:
    """Stream-compress the model in ``folder`` and evaluate it block by block; the figures. ``resume``: keep
    the checkpoint folder ``work`` (a finished one: compression is skipped and only the evaluation runs)."""
    import torch

    from oats.eval.blockwise import blockwise_window_nll
    from oats.models.lazy import load_lazy
    from oats.profile import Profile, phase
    from oats.registry import get_method
    from oats.sequential import compress_model

    torch.set_num_threads(threads)
    params = {"iterations": iterations} if method == "oats" else {}
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    with Profile() as prof:
        with phase("load"):
            model = load_lazy(folder, torch.float32, streaming=True)
        vocab = model.config.vocab_size
        gen = torch.Generator().manual_seed(0)
        calib = torch.randint(vocab, (nsamples, seqlen), generator=gen)
        report = compress_model(model, calib, get_method(method, **params), compression, checkpoint_dir=work,
                                progress=True)
        with phase("evaluate"):
            ids = torch.randint(vocab, (windows, seqlen), generator=gen)
            nll = blockwise_window_nll(model, ids, progress=True)
    seconds = time.perf_counter() - t0
    size = folder_bytes(folder)
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, prof.peak_mib * 2**20)
    ppl = float(torch.exp(nll.sum() / (windows * (seqlen - 1))))
    print(prof.table())
    return {"cpu": cpu_model(), "method": method, "iterations": iterations if method == "oats" else None,
            "compression": round(report.totals()["compression"], 4), "blocks": model.config.num_hidden_layers,
            "model_gb": size / 1e9, "peak_rss_gb": peak / 1e9, "peak_over_size": peak / size, "seconds": seconds,
            "perplexity": ppl, "calibration": f"{nsamples} x {seqlen}", "windows": f"{windows} x {seqlen}"}


def agree(work: Path) -> None:
    """On a small synthetic Llama: streamed compression + block-by-block perplexity == whole model in memory."""
    import torch
    from transformers import AutoModelForCausalLM

    from oats.eval.blockwise import blockwise_window_nll
    from oats.models.lazy import load_lazy
    from oats.sequential import compress_model

    shutil.rmtree(work, ignore_errors=True)
    folder = work / "model"
    write_synthetic_llama(folder, blocks=3, hidden_size=256, intermediate_size=640, num_attention_heads=8,
                          num_key_value_heads=2, vocab_size=1000)
    gen = torch.Generator().manual_seed(0)
    calib, ids = torch.randint(1000, (8, 128), generator=gen), torch.randint(1000, (4, 128), generator=gen)
    for method in ("wanda", "oats"):
        whole = AutoModelForCausalLM.from_pretrained(folder).eval()
        compress_model(whole, calib, method, 0.5, progress=False)
        with torch.no_grad():
            logits = whole(ids, use_cache=False).logits.float()
        nll_whole = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 1000), ids[:, 1:].reshape(-1),
                                                      reduction="sum").double()
        streamed = load_lazy(folder, torch.float32, streaming=True)
        compress_model(streamed, calib, method, 0.5, checkpoint_dir=work / method, progress=False)
        nll_stream = blockwise_window_nll(streamed, ids).sum()
        n = ids.shape[0] * (ids.shape[1] - 1)
        a, b = float(torch.exp(nll_whole / n)), float(torch.exp(nll_stream / n))
        print(f"{method}: perplexity whole model in memory {a:.6f}, streamed block by block {b:.6f} "
              f"(relative difference {abs(a - b) / a:.2e})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--blocks", type=int, default=14)
    m.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("--folder", required=True)
    r.add_argument("--method", default="wanda")
    r.add_argument("--compression", type=float, default=0.5)
    r.add_argument("--iterations", type=int, default=80, help="OATS iterations")
    r.add_argument("--nsamples", type=int, default=8)
    r.add_argument("--seqlen", type=int, default=512)
    r.add_argument("--windows", type=int, default=4)
    r.add_argument("--work", default=None, help="checkpoint folder (the compressed model); default FOLDER-METHOD")
    r.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    r.add_argument("--resume", action="store_true",
                   help="keep the checkpoint folder: resume its compression (a finished one: evaluate only)")
    a = sub.add_parser("agree")
    a.add_argument("--work", default="outputs/bench_large_agree")
    args = p.parse_args()
    if args.what == "make":
        if args.blocks < 1:
            raise SystemExit(f"--blocks {args.blocks}: give at least 1")
        t = time.perf_counter()
        size = write_synthetic_llama(args.out, args.blocks, args.seed, **LLAMA3_8B)
        print(f"wrote {args.out}: {args.blocks} blocks, {size / 1e9:.2f} GB fp32 in {time.perf_counter() - t:.0f} s")
    elif args.what == "run":
        folder = Path(args.folder)
        if not (folder / "config.json").is_file():
            raise SystemExit(f"{folder} is not a model folder (no config.json): write one with `make --out {folder}`")
        work = Path(args.work or f"{folder}-{args.method}")
        out = run(folder, args.method, args.compression, args.iterations, args.nsamples, args.seqlen, args.windows,
                  work, args.threads, args.resume)
        print(json.dumps(out))
    else:
        agree(Path(args.work))


if __name__ == "__main__":
    main()
