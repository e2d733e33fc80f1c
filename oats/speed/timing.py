"""The timing harness: every (variant, engine) timed in one process with interleaved repeats.

Each repeat runs every runner once, in a rotated order, so slow drifts of the machine spread over
all of them. Rows report the median and min-max, tokens/s, the speedup over the **fastest dense
engine** of the same phase and value type (fp32 against fp32, bf16 against bf16: the one with the
lowest median; the speedup is the median over repeats of the ratio within each repeat, so a machine
whose memory bandwidth drifts between repeats moves both sides of a ratio together), and the
memory-bandwidth-ideal speedup: dense weight bytes / the bytes of the format this engine reads
(bitmask or CSR indices, values, factors), i.e. what a kernel limited only by reading its weights
would gain, and the share of it the engine reaches.
"""
from __future__ import annotations

import statistics
from typing import Callable


class Runner:
    """One (variant, engine) to time: ``prefill()`` and ``decode()`` each return the seconds of their
    timed section (decode: all ``decode_tokens`` steps); None skips that phase. ``nbytes`` and
    ``params``: the variant's weight bytes and parameters, for the ideal speedups."""

    def __init__(self, variant: str, engine: str, nbytes: int, params: int,
                 prefill: Callable[[], float] | None, decode: Callable[[], float] | None,
                 dtype: str = "fp32", fmt: str = "csr") -> None:
        self.variant, self.engine, self.nbytes, self.params = variant, engine, nbytes, params
        self.prefill, self.decode = prefill, decode
        self.dtype, self.fmt = dtype, fmt


def measure(runners: list[Runner], repeats: int, prefill_tokens: int, decode_tokens: int, warmup: int = 1,
            progress: bool = False) -> list[dict]:
    """Interleaved timing of every runner; one row per (variant, engine, phase).

    Row keys: variant, engine, dtype, format, phase, tokens, repeats, median_ms / min_ms / max_ms
    (prefill: per forward; decode: per token), tokens_per_s, weight_params, weight_bytes,
    ideal_speedup (dense bytes / this format's bytes, same value type), ideal_values_speedup (no
    index cost), and where a dense variant of the same value type ran, speedup (median over repeats of
    that repeat's dense time / this time), vs_dense_engine (the fastest dense engine of the phase: lowest
    median) and of_ideal (speedup / ideal_speedup).
    """
    times: dict[tuple[int, str], list[float]] = {}
    for rep in range(-warmup, repeats):
        shift = rep % len(runners) if rep >= 0 else 0
        for i in list(range(shift, len(runners))) + list(range(shift)):
            r = runners[i]
            for phase, fn in (("prefill", r.prefill), ("decode", r.decode)):
                if fn is None:
                    continue
                t = fn()
                if rep >= 0:
                    times.setdefault((i, phase), []).append(t)
        if progress:
            print(f"  repeat {rep + 1}/{repeats}", flush=True)
    dense_bytes = {dt: max((r.nbytes for r in runners if r.variant == "dense" and r.dtype == dt), default=None)
                   for dt in {r.dtype for r in runners}}
    dense_params = max((r.params for r in runners if r.variant == "dense"), default=None)
    rows, samples = [], []
    for (i, phase), ts in times.items():
        r = runners[i]
        tokens = prefill_tokens if phase == "prefill" else decode_tokens
        med = statistics.median(ts)
        dbytes = dense_bytes[r.dtype]
        rows.append({
            "variant": r.variant, "engine": r.engine, "dtype": r.dtype, "format": r.fmt, "phase": phase,
            "tokens": tokens, "repeats": len(ts),
            "median_ms": 1e3 * med / (1 if phase == "prefill" else tokens),
            "min_ms": 1e3 * min(ts) / (1 if phase == "prefill" else tokens),
            "max_ms": 1e3 * max(ts) / (1 if phase == "prefill" else tokens),
            "tokens_per_s": tokens / med, "weight_params": r.params, "weight_bytes": r.nbytes,
            "ideal_speedup": dbytes / r.nbytes if dbytes else None,  # this format's bytes
            "ideal_values_speedup": dense_params / r.params if dense_params else None,  # no index cost
        })
        samples.append(ts)
    for phase in ("prefill", "decode"):
        for dt in dense_bytes:
            dense = [x for x in rows if x["phase"] == phase and x["variant"] == "dense" and x["dtype"] == dt]
            if not dense:
                continue
            best = min(dense, key=lambda x: x["median_ms"])
            best_ts = samples[rows.index(best)]
            for x, ts in zip(rows, samples):
                if x["phase"] == phase and x["dtype"] == dt:
                    x["speedup"] = statistics.median(b / t for b, t in zip(best_ts, ts))
                    x["vs_dense_engine"] = best["engine"]
                    x["of_ideal"] = x["speedup"] / x["ideal_speedup"] if x["ideal_speedup"] else None
    return rows
