"""A speed report (rows of :func:`oats.speed.timing.measure` with its provenance) as Markdown."""
from __future__ import annotations

from .env import ENGINE_PACKAGES, THREAD_ENV


def format_report(report: dict) -> str:
    """A Markdown table of a report's rows, with its engines, CPU and thread settings.

    ``report``: ``label``, ``rows``, ``versions`` and ``threads`` (:func:`oats.speed.env.provenance`)
    and optionally ``notes`` (each printed once).
    """
    lines = [f"**{report['label']}**", "",
             "| phase | variant | engine | format | median ms | min-max ms | tokens/s | speedup vs fastest dense | "
             "ideal (its format's bytes) | of ideal | ideal, values only |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    order = {"dense": 0, "unstructured": 1, "compressed": 1, "oats": 2}
    nan = float("nan")
    for r in sorted(report["rows"], key=lambda r: (r["phase"] != "prefill", r.get("dtype", "fp32"),
                                                   order.get(r["variant"], 3), r["engine"])):
        unit = "" if r["phase"] == "prefill" else "/token"
        fmt = f"{r.get('format', 'csr')} {r.get('dtype', 'fp32')}"
        lines.append(f"| {r['phase']} ({r['tokens']} tok) | {r['variant']} | {r['engine']} | {fmt} | "
                     f"{r['median_ms']:.2f}{unit} | {r['min_ms']:.2f}-{r['max_ms']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{r.get('speedup', nan):.2f}x (vs {r.get('vs_dense_engine')}) | "
                     f"{r['ideal_speedup']:.2f}x | {100 * (r.get('of_ideal') or nan):.0f}% | "
                     f"{r['ideal_values_speedup']:.2f}x |")
    v, t = report["versions"], report["threads"]
    lines += ["", "speedup: median over repeats of the fastest dense engine's time / this time in the same repeat (same "
              "phase and value type; fastest: lowest median). ideal: "
              "dense weight bytes / the bytes of the format this engine reads (csr: values + int32 indices; bitmask: "
              "values + 1 bit per weight; values only: no index cost); of ideal: speedup / ideal.",
              "", "engines: " + ", ".join(f"{k} {v[k]}" for k in ENGINE_PACKAGES if v.get(k)),
              f"native engine: kernels {v.get('native_kernels')}, ISA path {v.get('native_isa')}",
              f"MKL runtime: {v['mkl_runtime']}; sparse engine: {v['sparse_engine']}; CPU: {v['cpu']} "
              f"({v['cpu_count']} logical cores, torch kernels {v['cpu_capability']})",
              "threads: " + ", ".join(f"{k}={t[k]}" for k in (*THREAD_ENV, "torch_threads", "mkl_threads")
                                      if t.get(k) is not None)]
    for note in dict.fromkeys(report.get("notes") or []):
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"
