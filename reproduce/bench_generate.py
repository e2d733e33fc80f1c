"""Generation speed of a compressed SmolLM2-135M on the CPU engines: prompt + N new tokens, tokens/s.

    python reproduce/bench_generate.py --threads 2                        # OATS at 50% (20 iterations)
    python reproduce/bench_generate.py --method wanda --compression 0.5
    python reproduce/bench_generate.py --compressed outputs/<run>/compressed.safetensors

Compresses the real SmolLM2-135M (offline, 8 x 512 local calibration tokens; or loads a saved
``compressed.safetensors``), then times greedy generation (``--prompt`` tokens of WikiText-2, then
``--new`` tokens, KV cache) with the model's linears on each engine, interleaved over ``--repeats``:
the dense equivalent (merged weights) in PyTorch and on the native dense engine (fp32 and bf16
weights), the compressed model in PyTorch (``CompressedLinear``: S dense + factors), the native
bitmask engine (fp32 and bf16 values) and the CSR engine. Prints tokens/s of the generation (prefill
included), the speedup over the fastest dense engine of the same value type, and whether each
engine's greedy tokens equal the compressed PyTorch model's. SmolLM2's layers are small (the largest 3.5 MB), so this is cache-resident
speed; the out-of-cache Llama-3-8B-shaped blocks are ``reproduce/bench_speed.py``.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # OpenBLAS threads sleep after a call instead of spinning
# ~0.07 s (2^28 cycles) on the cores the next kernel needs; read when numpy loads, so set before any import of it
REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="oats")
    p.add_argument("--iterations", type=int, default=20, help="OATS iterations")
    p.add_argument("--compression", type=float, default=0.5)
    p.add_argument("--compressed", type=Path, default=None, help="a saved compressed.safetensors of SmolLM2-135M")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    if args.prompt < 1 or args.new < 1 or args.repeats < 1:
        raise SystemExit(f"--prompt {args.prompt}, --new {args.new}, --repeats {args.repeats}: each must be >= 1")
    sys.path.insert(0, str(REPO))
    from oats.speed.env import set_thread_env

    set_thread_env(args.threads)
    import torch

    from oats import native
    from oats.config import build_method
    from oats.data.calibration import get_calibration
    from oats.data.text import wikitext2_test_text
    from oats.layers import load_compressed, merge_all
    from oats.models.loading import load_model
    from oats.runtime import cpu_model
    from oats.sequential import compress_model
    from oats.speed.engines import engines_here, to_engine

    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2-135m")
    if args.compressed:
        load_compressed(model, args.compressed)
        what = f"loaded {args.compressed}"
    else:
        mcfg = {"name": args.method, **({"iterations": args.iterations} if args.method == "oats" else {})}
        calib = get_calibration(tok, source="wiki_vital_en", nsamples=8, seqlen=512, style="concat", seed=42)
        t = time.perf_counter()
        compress_model(model, calib, build_method(mcfg), args.compression, progress=True)
        what = f"{args.method} at {args.compression} ({time.perf_counter() - t:.0f} s to compress)"
    text = wikitext2_test_text("local" if os.environ.get("HF_HUB_OFFLINE") else "auto")[0]
    ids = tok(text[:20000], return_tensors="pt").input_ids[:, : args.prompt]
    gen_kw = {"max_new_tokens": args.new, "min_new_tokens": args.new, "do_sample": False,
              "pad_token_id": tok.eos_token_id}

    dense = merge_all(copy.deepcopy(model))
    models = {"dense fp32 (torch)": dense}
    if native.available():
        models["dense fp32 (native)"] = to_engine(copy.deepcopy(dense), "native", dense=True)
        models["dense bf16 (native)"] = to_engine(copy.deepcopy(dense), "native-bf16", dense=True)
    models["compressed (torch)"] = model
    for engine in engines_here(dense=False, bf16=True):
        models[f"compressed ({engine})"] = to_engine(copy.deepcopy(model), engine)
    tokens, times = {}, {k: [] for k in models}
    with torch.no_grad():
        for rep in range(-1, args.repeats):  # one untimed warm-up round
            for name, m in models.items():
                t = time.perf_counter()
                out = m.generate(ids, **gen_kw)
                if rep >= 0:
                    times[name].append(time.perf_counter() - t)
                tokens[name] = out[0, ids.shape[1]:]
    ref = tokens["compressed (torch)"]
    med = {name: statistics.median(ts) for name, ts in times.items()}
    fastest = {dt: min((n for n in med if n.startswith(f"dense {dt}")), key=med.get, default="dense fp32 (torch)")
               for dt in ("fp32", "bf16")}
    print(f"SmolLM2-135M, {what}; prompt {ids.shape[1]} + {args.new} new tokens, greedy, {args.repeats} repeats; "
          f"CPU {cpu_model()}, {args.threads} threads, native kernels {native.status()}"
          + (f", ISA {native.isa_in_use()}" if native.available() else ""))
    print(f"fastest dense: {fastest['fp32']} (fp32 engines), {fastest['bf16']} (bf16 engines)")
    print(f"{'engine':<30}{'median s':>10}{'tokens/s':>10}{'vs dense':>10}  greedy tokens = compressed (torch)")
    for name, ts in times.items():
        dt = "bf16" if "bf16" in name else "fp32"
        same = "(reference)" if name == "compressed (torch)" else \
            ("yes" if torch.equal(tokens[name], ref) else
             f"no: first difference at token {int((tokens[name] != ref).nonzero()[0])}")
        print(f"{name:<30}{med[name]:>10.3f}{args.new / med[name]:>10.1f}{med[fastest[dt]] / med[name]:>9.2f}x  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
