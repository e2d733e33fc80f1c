"""CPU inference speed: dense vs unstructured vs OATS at equal parameter count, per engine.

    python reproduce/bench_speed.py --threads 2                      # the full benchmark (see README)
    python reproduce/bench_speed.py --threads 1 --sizes llama3-8b-block --hidden 1024 --intermediate 3584 --kv 256

Times, in one process with interleaved repeats, prefill (``--prefill`` tokens in one forward) and
batch-1 decode (``--decode`` single-token steps) for

* ``llama3-8b-block``: ``--blocks`` synthetic Llama-3-8B-shaped decoder layers (the seven
  projections, 4096/14336/1024, random weights of the exact budget; 0.87 GB fp32 each: leaves the
  cache) on the in-process engines (torch, numpy/OpenBLAS and MKL dense; MKL CSR sparse), ONNX
  Runtime (extra ``.[speed]``) and DeepSparse if you installed it yourself (never a dependency:
  evaluation-only licence; ``NM_DISABLE_ANALYTICS=1`` is set before it is imported);
* ``smollm2``: the real SmolLM2-135M (whole model, in-process engines), its linears given each
  variant's structure; every layer is under 32 MB, so this is labelled cache-resident.

Reports median, min-max, tokens/s, speedup over the fastest dense engine and the bandwidth-ideal
speedup; writes ``<out>/speed_<size>_<compression>.{json,md}``. Thread settings are set before
numpy/torch load: one pool (torch and MKL on GNU OpenMP, ``KMP_BLOCKTIME=0``).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # OpenBLAS threads sleep after a call instead of spinning
# ~0.07 s (2^28 cycles) on the cores the next kernel needs; read when numpy loads, so set before any import of it
REPO = Path(__file__).resolve().parents[1]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="threads of every engine (default 1)")
    p.add_argument("--sizes", nargs="+", default=["llama3-8b-block", "smollm2"], choices=["llama3-8b-block", "smollm2"])
    p.add_argument("--compression", type=float, nargs="+", default=[0.4, 0.5, 0.7])
    p.add_argument("--rank-ratio", type=float, default=0.25, help="OATS share of the kept parameters in U, V")
    p.add_argument("--blocks", type=int, default=1, help="synthetic Llama blocks stacked (0.87 GB fp32 each)")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--kv", type=int, default=1024, help="k/v projection width (8 KV heads x 128)")
    p.add_argument("--prefill", type=int, default=128)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--engines", nargs="+", default=["inprocess", "onnxruntime", "deepsparse"],
                   help="engines to try; missing optional ones are reported and skipped")
    p.add_argument("--out", type=Path, default=REPO / "results" / "speed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="also time bf16 dense (torch) against bf16 bitmask (native) engines")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    os.environ["NM_DISABLE_ANALYTICS"] = "1"
    sys.path.insert(0, str(REPO))
    from oats.speed.env import set_thread_env

    set_thread_env(args.threads)  # first: before numpy/torch/MKL load
    from oats.io import atomic_write_json, atomic_write_text
    from oats.speed import format_report, model_structure_speed
    from reproduce.speed_blocks import block_speed

    model = None
    for size in args.sizes:
        for c in args.compression:
            t = time.perf_counter()
            print(f"== {size} at compression {c} ({args.threads} thread(s))", flush=True)
            if size == "llama3-8b-block":
                report = block_speed(args.blocks, c, args.rank_ratio, args.prefill, args.decode, args.repeats,
                                     args.engines, args.threads, seed=args.seed, progress=True, bf16=args.bf16,
                                     hidden=args.hidden,
                                     intermediate=args.intermediate, kv=args.kv)
            else:
                if model is None:
                    from oats.models.loading import load_model

                    model, _ = load_model("smollm2-135m")
                report = model_structure_speed(model, c, args.rank_ratio, args.prefill, args.decode, args.repeats,
                                               "SmolLM2-135M whole model, in-process (each layer cache-resident)",
                                               seed=args.seed, progress=True, bf16=args.bf16)
                skipped = [e for e in args.engines if e != "inprocess"]
                if skipped:
                    report["notes"].append(f"{', '.join(skipped)}: block level only (not run on whole models)")
            gc.collect()  # the runners' closures form reference cycles that can hold every engine's weights
            report["command"] = " ".join(["python", "reproduce/bench_speed.py", *(argv or sys.argv[1:])])
            report["wall_s"] = round(time.perf_counter() - t, 1)
            md = format_report(report)
            stem = args.out / f"speed_{size}_{int(round(c * 100))}"
            atomic_write_json(stem.with_suffix(".json"), report)
            atomic_write_text(stem.with_suffix(".md"), md + f"\ncommand: `{report['command']}`\n")
            print(md, flush=True)
            print(f"wrote {stem}.md/.json ({report['wall_s']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
