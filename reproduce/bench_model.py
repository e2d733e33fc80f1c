"""Whole-model compression cost: wall time and peak resident memory per method, and memory vs calibration size.

    python reproduce/bench_model.py methods --iterations 20  # SmolLM2-135M at 50%, every method
    python reproduce/bench_model.py memory                  # peak memory vs nsamples and seqlen (Wanda)

Each measurement runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own.
The model is loaded from the dequantised cache; the calibration set is fixed (local
Wikipedia text cut into windows, seed 42). --threads sets torch threads.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time



def methods(iterations: int) -> list[tuple[str, dict]]:
    """(label, method config) of conf/table/bench_methods.yaml's rows, OATS at ``iterations``."""
    from reproduce.tables import method_cells

    return [(row, mcfg) for row, _, mcfg, _, _ in method_cells("bench_methods", [f"method.iterations={iterations}"])]


def child(spec: dict) -> None:
    """Runs in the subprocess: load, calibrate, compress; print one JSON line."""
    import torch

    from oats.config import build_method
    from oats.data.calibration import get_calibration
    from oats.models.loading import load_model
    from oats.sequential import compress_model

    torch.set_num_threads(spec.get("threads") or os.cpu_count() or 1)
    model, tok = load_model("smollm2-135m")
    calib = get_calibration(tok, source="wiki_vital_en", nsamples=spec["nsamples"], seqlen=spec["seqlen"],
                            style="concat", seed=42)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    method = build_method(spec["method"])
    t = time.perf_counter()
    report = compress_model(model, calib, method, 0.5, device=spec.get("device", "cpu"), progress=False)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak / 1024, "rss_before_compress_mib": before / 1024,
                      "compression": report.totals()["compression"]}))


def measure(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", choices=["methods", "memory"], default="methods")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--iterations", type=int, default=80, help="OATS iterations (both solvers)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    import pandas as pd

    rows = []
    if args.what == "methods":
        print(f"SmolLM2-135M, compression 0.5, calibration {args.nsamples} x {args.seqlen} tokens "
              f"(wiki_vital_en, concat, seed 42), device {args.device}, {args.threads} threads")
        for label, method in methods(args.iterations):
            r = measure({"method": method, "nsamples": args.nsamples, "seqlen": args.seqlen, "device": args.device,
                         "threads": args.threads})
            rows.append({"method": label, **r})
            print(f"  {label}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    else:
        print("Wanda on SmolLM2-135M at 0.5: peak RSS vs calibration size (activations of one block, "
              "kept for all sequences, plus the model)")
        for n, L in [(8, 512), (32, 512), (128, 512), (32, 128), (32, 2048)]:
            r = measure({"method": {"name": "wanda"}, "nsamples": n, "seqlen": L, "device": args.device,
                         "threads": args.threads})
            act_mib = n * L * 576 * 4 / 2**20
            rows.append({"nsamples": n, "seqlen": L, "activations_mib": act_mib, **r})
            print(f"  {n} x {L}: peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    print()
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.1f}"))


if __name__ == "__main__":
    main()
