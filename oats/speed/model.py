"""Speed of a whole causal LM: its target linears swapped between dense and compressed CPU modules.

The target linears (:func:`oats.speed.export.target_modules`) take, in turn, each variant's
in-process modules; attention, norms and the head stay in torch. Prefill = one forward over
``prefill_tokens``; decode = ``decode_tokens`` single-token steps with the KV cache, after an
untimed prompt. :func:`evaluate_speed` is ``eval.speed`` of a pipeline run (compressed model vs its
merged dense equivalent); :func:`model_structure_speed` gives a dense model's shapes the structure
of unstructured and OATS layers at equal parameter count (``reproduce/bench_speed.py``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..budget import layer_budget
from .engines import build_engine_modules, engine_dtype, engine_format, engines_here, swap_modules
from .env import provenance, set_thread_env
from .export import (ExportedLinear, export_modules, has_compressed, rowwise_csr, target_modules, weight_bytes,
                     weight_params)
from .report import format_report
from .timing import Runner, measure


def model_runners(model: nn.Module, variants: Mapping[str, Mapping], prefill_tokens: int, decode_tokens: int,
                  engines: list[str] | tuple = ("inprocess",), prompt_tokens: int = 16, seed: int = 0,
                  bf16: bool = False) -> list[Runner]:
    """Runners for a causal LM whose target linears take, in turn, each variant's exported modules.

    ``variants``: name -> exported modules (:func:`oats.speed.export.export_modules`); a dense
    variant gets the dense engines (torch, numpy, mkl), the others the sparse engines available here
    (:func:`oats.speed.engines.engines_here`; ``bf16``: also their bf16 engines). Inputs: random token ids, (1, prefill_tokens) for
    prefill and a (1, prompt_tokens) prompt before decode, drawn with ``seed``.
    """
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(seed)
    prefill_ids = torch.randint(0, vocab, (1, prefill_tokens), generator=g)
    prompt_ids = torch.randint(0, vocab, (1, prompt_tokens), generator=g)
    runners = []
    if "inprocess" not in engines:
        return runners
    for variant, exported in variants.items():
        for engine in engines_here(dense=not has_compressed(exported), bf16=bf16):
            modules = build_engine_modules(exported, engine)

            def prefill(modules=modules) -> float:
                swap_modules(model, modules)
                with torch.no_grad():
                    t = time.perf_counter()
                    model(input_ids=prefill_ids, use_cache=False)
                    return time.perf_counter() - t

            def decode(modules=modules) -> float:
                swap_modules(model, modules)
                with torch.no_grad():
                    out = model(input_ids=prompt_ids, use_cache=True)
                    past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
                    t = time.perf_counter()
                    for _ in range(decode_tokens):
                        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
                    return time.perf_counter() - t

            fmt, value_bytes = engine_format(engine, not has_compressed(exported))
            runners.append(Runner(variant, f"inprocess-{engine}", weight_bytes(exported, fmt, value_bytes),
                                  weight_params(exported), prefill, decode, engine_dtype(engine), fmt))
    return runners


def time_variants(model: nn.Module, variants: Mapping[str, Mapping], prefill_tokens: int, decode_tokens: int,
                  repeats: int, engines: list[str] | tuple = ("inprocess",), warmup: int = 1, seed: int = 0,
                  progress: bool = False, bf16: bool = False) -> list[dict]:
    """:func:`oats.speed.timing.measure` rows of :func:`model_runners`; ``model``'s own target
    linears are put back afterwards, whatever happens."""
    originals = dict(target_modules(model))
    try:
        runners = model_runners(model, variants, prefill_tokens, decode_tokens, engines, seed=seed, bf16=bf16)
        return measure(runners, repeats, prefill_tokens, decode_tokens, warmup=warmup, progress=progress)
    finally:
        swap_modules(model, originals)


def model_speed(model: nn.Module, scfg: Mapping[str, Any], progress: bool = False) -> dict:
    """Time ``model`` as it is (compressed or not) against its dense equivalent; returns a report dict
    with ``rows`` (see :func:`oats.speed.timing.measure`), ``versions``, ``threads``, and ``label``."""
    if scfg.get("threads"):
        set_thread_env(int(scfg["threads"]))
    exported = export_modules(model)
    variants = {"dense": export_modules(model, dense=True)}
    if has_compressed(exported):
        variants["compressed"] = exported
    rows = time_variants(model, variants, scfg.get("prefill_tokens", 128), scfg.get("decode_tokens", 32),
                         scfg.get("repeats", 10), scfg.get("engines", ["inprocess"]), warmup=scfg.get("warmup", 1),
                         progress=progress)
    skipped = [e for e in scfg.get("engines", []) if e != "inprocess"]
    return {"rows": rows, **provenance(), "label": scfg.get("label", "whole model"),
            "engines_not_run_at_model_level": skipped}


def speed_records(report: dict) -> list[dict]:
    """Pipeline metric records (``speed/...``): the compressed model's best engine vs the fastest dense."""
    recs = []
    for phase in ("prefill", "decode"):
        rows = [r for r in report["rows"] if r["phase"] == phase]
        comp = [r for r in rows if r["variant"] == "compressed"] or [r for r in rows if r["variant"] == "dense"]
        if not comp:
            continue
        best = min(comp, key=lambda r: r["median_ms"])
        dense = min((r for r in rows if r["variant"] == "dense"), key=lambda r: r["median_ms"])
        for metric, value in ((f"{phase}_speedup", best["speedup"]), (f"{phase}_ideal_speedup", best["ideal_speedup"]),
                              (f"{phase}_ms", best["median_ms"]), (f"{phase}_tokens_per_s", best["tokens_per_s"]),
                              (f"{phase}_dense_ms", dense["median_ms"])):
            recs.append({"task": "speed", "metric": metric, "value": float(value), "engine": best["engine"],
                         "dense_engine": dense["engine"], "label": report["label"]})
    return recs


def evaluate_speed(model: nn.Module, scfg: Mapping[str, Any], out_dir: Path | None = None,
                   progress: bool = False) -> list[dict]:
    """``eval.speed`` of a pipeline run: writes ``speed.json`` and ``speed.md`` to ``out_dir``."""
    report = model_speed(model, scfg, progress=progress)
    if out_dir is not None:
        from ..io import atomic_write_json, atomic_write_text

        atomic_write_json(Path(out_dir) / "speed.json", report)
        atomic_write_text(Path(out_dir) / "speed.md", format_report(report))
    return speed_records(report)


def structure_like(model: nn.Module, variant: str, compression: float, rank_ratio: float, seed: int = 0) -> dict:
    """The target linears of a dense ``model`` with ``variant``'s structure and parameter count
    (:func:`oats.budget.layer_budget`, row-wise): ``unstructured`` keeps each row's largest weights;
    ``oats`` keeps fewer of them plus random factors U (d_out, r), V (r, d_in) of the budget's rank r.
    For timing only."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in export_modules(model).items():
        if isinstance(spec, list):
            raise ValueError(f"{name}: split (fused) layers are not supported by structure_like")
        w = spec.dense_weight()
        budget = layer_budget(spec.d_out, spec.d_in, compression, rank_ratio if variant == "oats" else 0.0)
        k = budget.row_nnz
        cols = np.sort(np.argpartition(-np.abs(w), k - 1, axis=1)[:, :k], axis=1)
        csr = rowwise_csr(np.take_along_axis(w, cols, 1), cols, spec.d_in)
        U = V = None
        if budget.rank:
            scale = float(1e-3 / np.sqrt(budget.rank))
            U = rng.standard_normal((spec.d_out, budget.rank), dtype=np.float32) * scale
            V = rng.standard_normal((budget.rank, spec.d_in), dtype=np.float32) * scale
        out[name] = ExportedLinear(spec.d_out, spec.d_in, sparse=csr, U=U, V=V, bias=spec.bias)
    return out


def model_structure_speed(model: nn.Module, compression: float, rank_ratio: float, prefill_tokens: int,
                          decode_tokens: int, repeats: int, label: str, seed: int = 0, progress: bool = False,
                          bf16: bool = False) -> dict:
    """Dense vs unstructured vs OATS (equal parameter count) on a real model's shapes (in-process)."""
    variants = {"dense": export_modules(model),
                "unstructured": structure_like(model, "unstructured", compression, rank_ratio, seed),
                "oats": structure_like(model, "oats", compression, rank_ratio, seed)}
    rows = time_variants(model, variants, prefill_tokens, decode_tokens, repeats, seed=seed, progress=progress,
                         bf16=bf16)
    return {"rows": rows, **provenance(),
            "label": f"{label}, compression {compression}, OATS rank ratio {rank_ratio}", "notes": []}
