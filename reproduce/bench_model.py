"""Whole-model compression cost: wall time and peak resident memory per method, per phase, and their growth.

    python reproduce/bench_model.py methods --iterations 20  # SmolLM2-135M at 50%, every method
    python reproduce/bench_model.py memory                  # per-phase profile (eager / lazy / stream) and the
                                                            # growth with calibration size and model size (PNG)
    python reproduce/bench_model.py time                    # OATS at 80 iterations, seconds per phase

Each measurement runs in a fresh subprocess, so its peak RSS is its own (the largest of the
per-phase peaks: the profile resets the kernel's high-water mark at each phase). ``memory``
prints, for Wanda and OATS on SmolLM2-135M loaded each way (``load=eager|lazy|stream``), the
seconds and the peak RSS of each phase (:mod:`oats.profile`: load, capture, statistics,
compress, propagate, checkpoint, evaluate); then peak RSS and seconds for nsamples 8..128
(SmolLM2, 512 tokens) and for synthetic Llamas of SmolLM2's shapes with 2..30 blocks
(eager against streamed), plotted to ``results/bench/memory_growth.png``.
The calibration set is fixed (local Wikipedia text cut into windows, seed 42; random ids for
the synthetic models). --threads sets torch threads.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oats.runtime import cpu_model  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "bench"
SMOLLM2_SHAPES = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
                  "vocab_size": 49152}


def methods(iterations: int) -> list[tuple[str, dict]]:
    """(label, method config) of conf/table/bench_methods.yaml's rows, OATS at ``iterations``."""
    from reproduce.tables import method_cells

    return [(row, mcfg) for row, _, mcfg, _, _ in method_cells("bench_methods", [f"method.iterations={iterations}"])]


def child(spec: dict) -> None:
    """Runs in the subprocess: load, calibrate, compress (and evaluate); print one JSON line."""
    import torch

    from oats.config import build_method
    from oats.data.calibration import get_calibration
    from oats.models.loading import load_model
    from oats.profile import Profile, phase
    from oats.sequential import compress_model

    torch.set_num_threads(spec.get("threads") or os.cpu_count() or 1)
    load = spec.get("load", "eager")
    with tempfile.TemporaryDirectory() as work, Profile() as prof:
        with phase("load"):
            if spec.get("synthetic"):
                from oats.models.lazy import load_lazy
                from oats.models.pretrained import own_memory

                folder = Path(spec["synthetic"])
                if load == "eager":
                    from transformers import AutoModelForCausalLM

                    model = AutoModelForCausalLM.from_pretrained(folder).eval()
                    own_memory(model)
                else:
                    model = load_lazy(folder, torch.float32, streaming=load == "stream")
                calib = torch.randint(model.config.vocab_size, (spec["nsamples"], spec["seqlen"]),
                                      generator=torch.Generator().manual_seed(42))
            else:
                model, tok = load_model("smollm2-135m", load=load)
        loaded = prof.peak_mib * 1024  # KiB, as ru_maxrss
        if not spec.get("synthetic"):
            calib = get_calibration(tok, source="wiki_vital_en", nsamples=spec["nsamples"], seqlen=spec["seqlen"],
                                    style="concat", seed=42)
        method = build_method(spec["method"])
        t = time.perf_counter()
        report = compress_model(model, calib, method, 0.5, device=spec.get("device", "cpu"), progress=False,
                                checkpoint_dir=Path(work) / "ckpt" if load == "stream" else None,
                                layer_workers=spec.get("layer_workers"))
        seconds = time.perf_counter() - t
        if spec.get("evaluate"):
            from oats.eval.blockwise import blockwise_window_nll

            with phase("evaluate"):
                blockwise_window_nll(model, calib[:4])
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, prof.peak_mib * 1024)  # KiB
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak / 1024, "rss_after_load_mib": loaded / 1024,
                      "compression": report.totals()["compression"], "phases": prof.rows}))


def measure(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"measurement {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def phase_table(label: str, r: dict) -> str:
    from oats.profile import peak_cell

    lines = [f"{label}: {r['seconds']:.1f} s compressing, peak RSS {r['peak_rss_mib']:.0f} MiB "
             f"(after load {r['rss_after_load_mib']:.0f} MiB)",
             f"  {'phase':<16}{'calls':>6}{'seconds':>10}{'peak RSS MiB':>14}"]
    lines += [f"  {name:<16}{int(v['calls']):>6}{v['seconds']:>10.2f}{peak_cell(v['peak_mib'], 14)}"
              for name, v in r["phases"].items()]
    if any(not v["peak_mib"] for v in r["phases"].values()):
        lines.append("  (-: phases of the layer workers, thread-seconds summed over the workers)")
    return "\n".join(lines)


def memory(args) -> None:
    import pandas as pd

    base = {"seqlen": args.seqlen, "device": args.device, "threads": args.threads}
    print(f"CPU {cpu_model()}, {args.threads} threads; SmolLM2-135M at 0.5, "
          f"calibration {args.nsamples} x {args.seqlen}")
    oats = {"name": "oats", "iterations": args.iterations}
    for label, mcfg in (("Wanda", {"name": "wanda"}), (f"OATS ({args.iterations} it)", oats)):
        for load in args.loads:
            r = measure({**base, "method": mcfg, "nsamples": args.nsamples, "load": load, "evaluate": True})
            print(phase_table(f"{label}, load={load}", r), flush=True)
    rows = []
    for n in args.nsamples_sweep:
        for load in ("eager", "stream"):
            r = measure({**base, "method": {"name": "wanda"}, "nsamples": n, "load": load})
            rows.append({"sweep": "nsamples", "x": n, "load": load, "seconds": r["seconds"],
                         "peak_rss_mib": r["peak_rss_mib"]})
            print(f"  Wanda, nsamples {n}, load={load}: {r['seconds']:.1f} s, peak {r['peak_rss_mib']:.0f} MiB",
                  flush=True)
    from reproduce.bench_large import write_synthetic_llama

    with tempfile.TemporaryDirectory() as tmp:
        for blocks in args.blocks_sweep:
            folder = Path(tmp) / f"synth{blocks}"
            size = write_synthetic_llama(folder, blocks, **SMOLLM2_SHAPES)
            for load in ("eager", "stream"):
                r = measure({**base, "method": {"name": "wanda"}, "nsamples": 8, "load": load,
                             "synthetic": str(folder)})
                rows.append({"sweep": "blocks", "x": blocks, "load": load, "seconds": r["seconds"],
                             "peak_rss_mib": r["peak_rss_mib"], "model_mib": size / 2**20})
                print(f"  Wanda, synthetic {blocks} blocks ({size / 2**20:.0f} MiB), load={load}: "
                      f"{r['seconds']:.1f} s, peak {r['peak_rss_mib']:.0f} MiB", flush=True)
    table = pd.DataFrame(rows)
    print()
    print(table.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    OUT.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT / "memory_growth.csv", index=False)
    plot(table, OUT / "memory_growth.png", args)


def timing(args) -> None:
    """OATS's whole-model compression time with the per-phase split (SVD, threshold, statistics, propagation)."""
    from oats import native

    workers = "automatic" if args.layer_workers is None else args.layer_workers
    print(f"CPU {cpu_model()}, {args.threads} threads; SmolLM2-135M, OATS at 0.5, {args.iterations} iterations, "
          f"svd={args.svd}, calibration {args.nsamples} x {args.seqlen}, layer workers {workers}; "
          f"native kernels: {native.status()}")
    r = measure({"method": {"name": "oats", "iterations": args.iterations, "svd": args.svd}, "nsamples": args.nsamples,
                 "seqlen": args.seqlen, "device": args.device, "threads": args.threads,
                 "layer_workers": args.layer_workers})
    print(phase_table(f"OATS ({args.iterations} it, svd={args.svd})", r))


def plot(table, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for col, (sweep, xlabel) in enumerate((("nsamples", f"calibration sequences ({args.seqlen} tokens), SmolLM2"),
                                           ("blocks", "blocks (synthetic Llama, SmolLM2 shapes; 8 x 512 calib)"))):
        part = table[table.sweep == sweep]
        for load, grp in part.groupby("load"):
            axes[0, col].plot(grp.x, grp.peak_rss_mib, "o-", label=f"load={load}")
            axes[1, col].plot(grp.x, grp.seconds, "o-", label=f"load={load}")
        if sweep == "blocks":
            sizes = part.drop_duplicates("x")
            axes[0, col].plot(sizes.x, sizes.model_mib, "k--", label="model size (fp32)")
        for row, ylabel in enumerate(("peak RSS (MiB)", "compression seconds (Wanda)")):
            axes[row, col].set(xlabel=xlabel, ylabel=ylabel, xscale="log", xticks=sorted(part.x.unique()))
            axes[row, col].xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axes[row, col].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            axes[row, col].legend()
    fig.suptitle(f"Peak memory and time vs calibration and model size ({cpu_model()},"
                 f" {args.threads} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", choices=["methods", "memory", "time"], default="methods",
                   help="methods: every method's time and peak memory; memory: per-phase profiles and the growth "
                        "sweeps (PNG); time: OATS's compression time split by phase")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--iterations", type=int, default=80, help="OATS iterations")
    p.add_argument("--svd", default="subspace", choices=["subspace", "full"], help="time: OATS's SVD solver")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--layer-workers", type=int, default=None,
                   help="time: linears compressed at once (default: automatic, see oats.sequential)")
    p.add_argument("--rows", nargs="+", default=None, help="methods: only these rows of bench_methods")
    p.add_argument("--loads", nargs="+", default=["eager", "lazy", "stream"], choices=["eager", "lazy", "stream"],
                   help="memory: the ways to load the model for the per-phase profile")
    p.add_argument("--nsamples-sweep", nargs="+", type=int, default=[8, 16, 32, 64, 128])
    p.add_argument("--blocks-sweep", nargs="+", type=int, default=[2, 4, 8, 16, 30])
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.what == "memory":
        memory(args)
        return
    if args.what == "time":
        timing(args)
        return
    import pandas as pd

    chosen = [(label, m) for label, m in methods(args.iterations) if args.rows is None or label in args.rows]
    unknown = sorted(set(args.rows or ()) - {label for label, _ in chosen})
    if unknown:
        raise SystemExit(f"--rows {unknown} unknown; the rows of bench_methods: "
                         f"{', '.join(label for label, _ in methods(args.iterations))}")
    rows = []
    print(f"SmolLM2-135M, compression 0.5, calibration {args.nsamples} x {args.seqlen} tokens "
          f"(wiki_vital_en, concat, seed 42), device {args.device}, {args.threads} threads, "
          f"CPU {cpu_model()}")
    for label, method in chosen:
        r = measure({"method": method, "nsamples": args.nsamples, "seqlen": args.seqlen, "device": args.device,
                     "threads": args.threads})
        rows.append({"method": label, "seconds": r["seconds"], "peak_rss_mib": r["peak_rss_mib"]})
        print(f"  {label}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    print()
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.1f}"))


if __name__ == "__main__":
    main()
