"""A speed report (rows of :func:`oats.speed.timing.measure` with its provenance) as Markdown."""
from __future__ import annotations

from .env import ENGINE_PACKAGES, THREAD_ENV


def format_report(report: dict) -> str:
    """A Markdown table of a report's rows, with its engines, CPU and thread settings.

    ``report``: ``label``, ``rows``, ``versions`` and ``threads`` (:func:`oats.speed.env.provenance`)
    and optionally ``notes`` (each printed once).
    """
    lines = [f"**{report['label']}**", "",
             "| phase | variant | engine | median ms | min-max ms | tokens/s | speedup vs fastest dense | "
             "ideal, CSR bytes | ideal, values only |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    order = {"dense": 0, "unstructured": 1, "compressed": 1, "oats": 2}
    for r in sorted(report["rows"], key=lambda r: (r["phase"] != "prefill", order.get(r["variant"], 3), r["engine"])):
        unit = "" if r["phase"] == "prefill" else "/token"
        lines.append(f"| {r['phase']} ({r['tokens']} tok) | {r['variant']} | {r['engine']} | "
                     f"{r['median_ms']:.2f}{unit} | {r['min_ms']:.2f}-{r['max_ms']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{r.get('speedup', float('nan')):.2f}x (vs {r.get('vs_dense_engine')}) | "
                     f"{r['ideal_speedup']:.2f}x | {r['ideal_values_speedup']:.2f}x |")
    v, t = report["versions"], report["threads"]
    lines += ["", "speedup: the fastest dense engine's median / this median (same phase). ideal: dense fp32 weight "
              "bytes / this variant's (CSR: fp32 values + int32 indices; values only: no index cost).",
              "", "engines: " + ", ".join(f"{k} {v[k]}" for k in ENGINE_PACKAGES if v.get(k)),
              f"MKL runtime: {v['mkl_runtime']}; sparse engine: {v['sparse_engine']}; CPU: {v['cpu']} "
              f"({v['cpu_count']} logical cores, torch kernels {v['cpu_capability']})",
              "threads: " + ", ".join(f"{k}={t[k]}" for k in (*THREAD_ENV, "torch_threads", "mkl_threads")
                                      if t.get(k) is not None)]
    for note in dict.fromkeys(report.get("notes") or []):
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"
