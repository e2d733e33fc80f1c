"""CPU inference speed: dense vs unstructured vs OATS, prefill and batch-1 decode, per engine.

Everything timed in one process with interleaved repeats (each repeat runs every variant once,
in a rotated order), reported as median and min-max, tokens/s, the speedup over the **fastest
dense engine** of the same phase, and the memory-bandwidth-ideal speedup: dense weight bytes /
the variant's weight bytes (fp32 values + int32 CSR indices + factors), i.e. what a kernel limited
only by reading its weights would gain.

Two levels:

* a whole causal LM (:func:`model_speed`, used by ``eval.speed`` in a pipeline run): the target
  linears (see :func:`oats.export.target_modules`) are swapped between dense and compressed CPU
  modules; attention, norms and the head stay in torch. Prefill = one forward over
  ``prefill_tokens``; decode = ``decode_tokens`` single-token steps with the KV cache, after an
  untimed prompt.
* synthetic Llama-shaped blocks (:func:`block_speed`, ``reproduce/bench_speed.py``): the seven
  projections of a decoder layer with random weights of the exact budget (``oats.budget``), large
  enough to leave the cache; in-process engines, ONNX Runtime and (if the user installed it)
  DeepSparse.
"""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..budget import layer_budget
from ..export import (DENSE_ENGINES, ExportedLinear, build_engine_modules, export_modules, mkl_error, mkl_module,
                      sparse_engine, swap_modules, weight_bytes, weight_params)

ENGINE_PACKAGES = ("torch", "numpy", "scipy", "sparse-dot-mkl", "mkl", "onnx", "onnxruntime", "deepsparse")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KMP_BLOCKTIME", "MKL_THREADING_LAYER",
              "OMP_WAIT_POLICY", "NM_DISABLE_ANALYTICS")


def set_thread_env(threads: int) -> None:
    """One thread pool: torch and MKL share GNU OpenMP (``MKL_THREADING_LAYER=GNU``) with ``threads``
    threads, OpenBLAS (numpy) gets the same count but never runs concurrently with them,
    ``KMP_BLOCKTIME=0`` (no spinning if Intel OpenMP is loaded). Call before numpy/torch/MKL load
    for the environment variables to take effect everywhere."""
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = str(threads)
    os.environ["KMP_BLOCKTIME"] = "0"
    os.environ.setdefault("MKL_THREADING_LAYER", "GNU")
    torch.set_num_threads(threads)
    mkl = mkl_module()
    if mkl is not None:
        mkl.mkl_set_num_threads(threads)


def thread_settings() -> dict[str, Any]:
    out: dict[str, Any] = {k: os.environ.get(k) for k in THREAD_ENV}
    out["torch_threads"] = torch.get_num_threads()
    mkl = mkl_module()
    out["mkl_threads"] = mkl.mkl_get_max_threads() if mkl is not None else None
    try:
        from threadpoolctl import threadpool_info

        out["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
                              for p in threadpool_info()]
    except ImportError:
        pass
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def engine_versions() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ENGINE_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    mkl = mkl_module()
    out["mkl_runtime"] = mkl.mkl_get_version_string() if mkl is not None else f"unavailable ({mkl_error()})"
    out["sparse_engine"] = sparse_engine()
    out["cpu"] = cpu_name()
    out["cpu_count"] = os.cpu_count()
    return out


def available_engines() -> dict[str, bool]:
    import importlib.util

    has_onnx = importlib.util.find_spec("onnx") is not None
    return {"inprocess": True, "mkl": mkl_module() is not None, "onnx": has_onnx,
            "onnxruntime": has_onnx and importlib.util.find_spec("onnxruntime") is not None,
            "deepsparse": importlib.util.find_spec("deepsparse") is not None}


# ---------------------------------------------------------------- timing

class Runner:
    """One (variant, engine) to time: ``prefill()`` and ``decode()`` each return the seconds of their
    timed section (decode: all ``decode_tokens`` steps)."""

    def __init__(self, variant: str, engine: str, nbytes: int, params: int,
                 prefill: Callable[[], float] | None, decode: Callable[[], float] | None) -> None:
        self.variant, self.engine, self.nbytes, self.params = variant, engine, nbytes, params
        self.prefill, self.decode = prefill, decode


def measure(runners: list[Runner], repeats: int, prefill_tokens: int, decode_tokens: int, warmup: int = 1,
            progress: bool = False) -> list[dict]:
    """Interleaved timing of every runner; one row per (variant, engine, phase)."""
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
    dense_bytes = max((r.nbytes for r in runners if r.variant == "dense"), default=None)
    dense_params = max((r.params for r in runners if r.variant == "dense"), default=None)
    rows = []
    for (i, phase), ts in times.items():
        r = runners[i]
        tokens = prefill_tokens if phase == "prefill" else decode_tokens
        med = statistics.median(ts)
        rows.append({
            "variant": r.variant, "engine": r.engine, "phase": phase, "tokens": tokens, "repeats": len(ts),
            "median_ms": 1e3 * med / (1 if phase == "prefill" else tokens),
            "min_ms": 1e3 * min(ts) / (1 if phase == "prefill" else tokens),
            "max_ms": 1e3 * max(ts) / (1 if phase == "prefill" else tokens),
            "tokens_per_s": tokens / med, "weight_params": r.params, "weight_bytes": r.nbytes,
            "ideal_speedup": dense_bytes / r.nbytes if dense_bytes else None,  # CSR int32 bytes
            "ideal_values_speedup": dense_params / r.params if dense_params else None,  # no index cost
        })
    for phase in ("prefill", "decode"):
        dense = [x for x in rows if x["phase"] == phase and x["variant"] == "dense"]
        if not dense:
            continue
        best = min(dense, key=lambda x: x["median_ms"])
        for x in rows:
            if x["phase"] == phase:
                x["speedup"] = best["median_ms"] / x["median_ms"]
                x["vs_dense_engine"] = best["engine"]
    return rows


# ---------------------------------------------------------------- whole models

def _has_compressed(exported: Mapping) -> bool:
    return any((s[0] if isinstance(s, list) else s).kind != "dense" for s in exported.values())


def model_runners(model: nn.Module, variants: Mapping[str, Mapping], prefill_tokens: int, decode_tokens: int,
                  engines: list[str] | tuple = ("inprocess",), prompt_tokens: int = 16, seed: int = 0
                  ) -> list[Runner]:
    """Runners for a causal LM whose target linears take, in turn, each variant's exported modules.

    ``variants``: name -> exported modules (:func:`oats.export.export_modules`); ``"dense"`` gets the
    dense engines (torch, numpy, mkl), the others the sparse engine available here.
    """
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(seed)
    prefill_ids = torch.randint(0, vocab, (1, prefill_tokens), generator=g)
    prompt_ids = torch.randint(0, vocab, (1, prompt_tokens), generator=g)
    runners = []
    if "inprocess" not in engines:
        return runners
    for variant, exported in variants.items():
        engine_names = [e for e in DENSE_ENGINES if e != "mkl" or mkl_module() is not None] \
            if not _has_compressed(exported) else [sparse_engine()]
        for engine in engine_names:
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

            runners.append(Runner(variant, f"inprocess-{engine}", weight_bytes(exported), weight_params(exported),
                                  prefill, decode))
    return runners


def model_speed(model: nn.Module, scfg: Mapping[str, Any], progress: bool = False) -> dict:
    """Time ``model`` as it is (compressed or not) against its dense equivalent; returns a report dict
    with ``rows`` (see :func:`measure`), ``versions``, ``threads``, and ``model_label``."""
    if scfg.get("threads"):
        set_thread_env(int(scfg["threads"]))
    exported = export_modules(model)
    variants = {"dense": export_modules(model, dense=True)}
    if _has_compressed(exported):
        variants["compressed"] = exported
    from ..export import target_modules

    originals = dict(target_modules(model))
    try:
        runners = model_runners(model, variants, scfg.get("prefill_tokens", 128), scfg.get("decode_tokens", 32),
                                scfg.get("engines", ["inprocess"]))
        rows = measure(runners, scfg.get("repeats", 10), scfg.get("prefill_tokens", 128),
                       scfg.get("decode_tokens", 32), warmup=scfg.get("warmup", 1), progress=progress)
    finally:
        swap_modules(model, originals)
    skipped = [e for e in scfg.get("engines", []) if e != "inprocess"]
    return {"rows": rows, "versions": engine_versions(), "threads": thread_settings(),
            "label": scfg.get("label", "whole model"), "engines_not_run_at_model_level": skipped}


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
    ``oats`` keeps fewer of them plus random factors of the budget's rank. For timing only."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in export_modules(model).items():
        if isinstance(spec, list):
            raise ValueError(f"{name}: split (fused) layers are not supported by structure_like")
        w = spec.dense_weight()
        budget = layer_budget(spec.d_out, spec.d_in, compression, rank_ratio if variant == "oats" else 0.0)
        k = budget.row_nnz
        cols = np.sort(np.argpartition(-np.abs(w), k - 1, axis=1)[:, :k], axis=1)
        csr = sp.csr_matrix((np.take_along_axis(w, cols, 1).reshape(-1), cols.reshape(-1).astype(np.int32),
                             np.arange(0, spec.d_out * k + 1, k, dtype=np.int32)), shape=w.shape)
        U = V = None
        if budget.rank:
            scale = float(1e-3 / np.sqrt(budget.rank))
            U = rng.standard_normal((spec.d_out, budget.rank), dtype=np.float32) * scale
            V = rng.standard_normal((budget.rank, spec.d_in), dtype=np.float32) * scale
        out[name] = ExportedLinear(spec.d_out, spec.d_in, sparse=csr, U=U, V=V, bias=spec.bias)
    return out


def model_structure_speed(model: nn.Module, compression: float, rank_ratio: float, prefill_tokens: int,
                          decode_tokens: int, repeats: int, label: str, seed: int = 0, progress: bool = False) -> dict:
    """Dense vs unstructured vs OATS (equal parameter count) on a real model's shapes (in-process)."""
    variants = {"dense": export_modules(model),
                "unstructured": structure_like(model, "unstructured", compression, rank_ratio, seed),
                "oats": structure_like(model, "oats", compression, rank_ratio, seed)}
    from ..export import target_modules

    originals = dict(target_modules(model))
    try:
        runners = model_runners(model, variants, prefill_tokens, decode_tokens, seed=seed)
        rows = measure(runners, repeats, prefill_tokens, decode_tokens, progress=progress)
    finally:
        swap_modules(model, originals)
    return {"rows": rows, "versions": engine_versions(), "threads": thread_settings(),
            "label": f"{label}, compression {compression}, OATS rank ratio {rank_ratio}", "notes": []}


# ---------------------------------------------------------------- synthetic Llama-shaped blocks

def llama_block_shapes(hidden: int = 4096, intermediate: int = 14336, kv: int = 1024) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of the seven projections of a Llama decoder layer (Llama-3-8B by default)."""
    return {"q": (hidden, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, hidden),
            "gate": (intermediate, hidden), "up": (intermediate, hidden), "down": (hidden, intermediate)}


def synthetic_linear(d_out: int, d_in: int, variant: str, compression: float | None, rank_ratio: float,
                     rng: np.random.Generator) -> ExportedLinear:
    """Random fp32 weights with the exact structure of ``variant``: ``dense``; ``unstructured`` (the same
    count of nonzeros in every row, as row-wise Wanda keeps); ``oats`` (row-wise sparse part plus rank
    from :func:`oats.budget.layer_budget` at ``rank_ratio``). Values do not change the timing."""
    import scipy.sparse as sp

    scale = float(1.0 / np.sqrt(d_in))  # a Python float keeps float32 arrays float32
    if variant == "dense":
        return ExportedLinear(d_out, d_in, weight=(rng.standard_normal((d_out, d_in), dtype=np.float32) * scale))
    budget = layer_budget(d_out, d_in, compression, rank_ratio if variant == "oats" else 0.0)
    k = budget.row_nnz
    cols = np.argpartition(rng.random((d_out, d_in), dtype=np.float32), k - 1, axis=1)[:, :k] if k else \
        np.zeros((d_out, 0), dtype=np.int64)
    cols.sort(axis=1)
    indptr = np.arange(0, d_out * k + 1, k, dtype=np.int32) if k else np.zeros(d_out + 1, dtype=np.int32)
    data = rng.standard_normal(d_out * k, dtype=np.float32) * scale
    csr = sp.csr_matrix((data, cols.reshape(-1).astype(np.int32), indptr), shape=(d_out, d_in))
    U = V = None
    if budget.rank:
        U = rng.standard_normal((d_out, budget.rank), dtype=np.float32) * scale
        V = rng.standard_normal((budget.rank, d_in), dtype=np.float32) / float(np.sqrt(budget.rank))
    return ExportedLinear(d_out, d_in, sparse=csr, U=U, V=V)


def synthetic_blocks(n_blocks: int, variant: str, compression: float | None, rank_ratio: float, seed: int = 0,
                     **shape) -> list[dict[str, ExportedLinear]]:
    rng = np.random.default_rng(seed)
    return [{name: synthetic_linear(o, i, variant, compression, rank_ratio, rng)
             for name, (o, i) in llama_block_shapes(**shape).items()} for _ in range(n_blocks)]


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def block_forward(x: np.ndarray, blocks: list[dict[str, Callable[[np.ndarray], np.ndarray]]]) -> np.ndarray:
    """The projections' data flow of a decoder layer, attention and norms left out:
    ``x + o(q(x)) + down(silu(gate(x)) * up(x))`` with k(x), v(x) computed (and unused) as a layer does."""
    for b in blocks:
        q = b["q"](x)
        b["k"](x), b["v"](x)
        h = _silu(b["gate"](x)) * b["up"](x)
        x = x + b["o"](q) + b["down"](h)
    return x


def _numpy_fn(spec: ExportedLinear, engine: str) -> Callable[[np.ndarray], np.ndarray]:
    from ..export import CPULinear

    if engine == "torch":
        w = torch.from_numpy(spec.weight)
        return lambda x: torch.nn.functional.linear(torch.from_numpy(x), w).numpy()
    return CPULinear(spec, engine)._run


def block_onnx(blocks: list[dict[str, ExportedLinear]], tokens: int, path: Path) -> Path:
    """The same block stack as an ONNX graph (fp32, static input (1, tokens, hidden)): dense or sparse
    layers as MatMul with a dense initialiser (zeros kept), low-rank as two more MatMuls."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden = blocks[0]["q"].d_in
    nodes, inits = [], []

    def linear(x: str, spec: ExportedLinear, name: str) -> str:
        w = spec.weight if spec.weight is not None else spec.sparse.toarray()
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"{name}.wt"))
        nodes.append(helper.make_node("MatMul", [x, f"{name}.wt"], [f"{name}.s"]))
        if not spec.rank:
            return f"{name}.s"
        inits.append(numpy_helper.from_array(np.ascontiguousarray(spec.V.T), f"{name}.vt"))
        inits.append(numpy_helper.from_array(np.ascontiguousarray(spec.U.T), f"{name}.ut"))
        nodes.append(helper.make_node("MatMul", [x, f"{name}.vt"], [f"{name}.t"]))
        nodes.append(helper.make_node("MatMul", [f"{name}.t", f"{name}.ut"], [f"{name}.l"]))
        nodes.append(helper.make_node("Add", [f"{name}.s", f"{name}.l"], [f"{name}.y"]))
        return f"{name}.y"

    x = "x"
    outputs = []
    for i, b in enumerate(blocks):
        p = f"b{i}"
        q = linear(x, b["q"], f"{p}.q")
        outputs += [linear(x, b["k"], f"{p}.k"), linear(x, b["v"], f"{p}.v")]
        g, u = linear(x, b["gate"], f"{p}.gate"), linear(x, b["up"], f"{p}.up")
        nodes += [helper.make_node("Sigmoid", [g], [f"{p}.sig"]), helper.make_node("Mul", [g, f"{p}.sig"], [f"{p}.silu"]),
                  helper.make_node("Mul", [f"{p}.silu", u], [f"{p}.h"])]
        o, d = linear(q, b["o"], f"{p}.o"), linear(f"{p}.h", b["down"], f"{p}.down")
        nodes += [helper.make_node("Add", [x, o], [f"{p}.r"]), helper.make_node("Add", [f"{p}.r", d], [f"{p}.out"])]
        x = f"{p}.out"
    shape = [1, tokens, hidden]
    graph = helper.make_graph(nodes, "oats_blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)]
                              + [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return path


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _deepsparse_engine(path: Path, threads: int):
    os.environ["NM_DISABLE_ANALYTICS"] = "1"  # before the import: it otherwise contacts analytics servers
    from deepsparse import compile_model  # noqa: PLC0415 - optional, user-installed, evaluation-only licence

    return compile_model(str(path), batch_size=1, num_cores=threads)


def block_runners(variants: Mapping[str, list[dict[str, ExportedLinear]]], prefill_tokens: int, decode_tokens: int,
                  engines: list[str], threads: int, workdir: Path, seed: int = 0) -> tuple[list[Runner], list[str]]:
    """Runners for synthetic block stacks; returns (runners, notes about engines not run)."""
    avail = available_engines()
    notes = []
    rng = np.random.default_rng(seed + 1)
    hidden = next(iter(variants.values()))[0]["q"].d_in
    xs = {n: rng.standard_normal((n, hidden), dtype=np.float32) for n in (prefill_tokens, 1)}
    runners = []

    def timed(call: Callable[[np.ndarray], Any], phase: str) -> Callable[[], float]:
        if phase == "prefill":
            x = xs[prefill_tokens]

            def run() -> float:
                t = time.perf_counter()
                call(x)
                return time.perf_counter() - t
            return run
        x1 = xs[1]

        def run_decode() -> float:
            t = time.perf_counter()
            for _ in range(decode_tokens):
                call(x1)
            return time.perf_counter() - t
        return run_decode

    for variant, blocks in variants.items():
        specs = [s for b in blocks for s in b.values()]
        nbytes, params = sum(s.weight_bytes() for s in specs), sum(s.params for s in specs)
        if "inprocess" in engines:
            dense = variant == "dense"
            names = [e for e in DENSE_ENGINES if e != "mkl" or avail["mkl"]] if dense else [sparse_engine()]
            for engine in names:
                fns = [{k: _numpy_fn(s, engine) for k, s in b.items()} for b in blocks]
                call = (lambda x, fns=fns: block_forward(x, fns))
                runners.append(Runner(variant, f"inprocess-{engine}", nbytes, params,
                                      timed(call, "prefill"), timed(call, "decode")))
        for engine in ("onnxruntime", "deepsparse"):
            if engine not in engines:
                continue
            if not avail[engine] or not avail["onnx"]:
                notes.append(f"{engine}: not installed" if avail["onnx"] else f"{engine}: needs the onnx package")
                continue
            paths = {n: block_onnx(blocks, n, workdir / f"{variant}_{n}.onnx") for n in (prefill_tokens, 1)}
            if engine == "onnxruntime":
                sess = {n: _ort_session(p, threads) for n, p in paths.items()}
                out = sess[1].get_outputs()[0].name
                calls = {n: (lambda x, s=s: s.run([out], {"x": x[None]})) for n, s in sess.items()}
            else:
                try:
                    eng = {n: _deepsparse_engine(p, threads) for n, p in paths.items()}
                except Exception as e:  # noqa: BLE001 - report and go on with the other engines
                    notes.append(f"deepsparse: failed to compile ({type(e).__name__}: {e})")
                    continue
                calls = {n: (lambda x, e=e: e.run([x[None]])) for n, e in eng.items()}
            runners.append(Runner(variant, engine, nbytes, params,
                                  timed(calls[prefill_tokens], "prefill"), timed(calls[1], "decode")))
    return runners, notes


def block_speed(n_blocks: int, compression: float, rank_ratio: float, prefill_tokens: int, decode_tokens: int,
                repeats: int, engines: list[str], threads: int, seed: int = 0, progress: bool = False,
                **shape) -> dict:
    """Dense vs unstructured vs OATS (equal parameter count) on ``n_blocks`` synthetic Llama blocks."""
    variants = {"dense": synthetic_blocks(n_blocks, "dense", None, 0.0, seed, **shape),
                "unstructured": synthetic_blocks(n_blocks, "unstructured", compression, 0.0, seed, **shape),
                "oats": synthetic_blocks(n_blocks, "oats", compression, rank_ratio, seed, **shape)}
    with tempfile.TemporaryDirectory(prefix="oats_speed_") as tmp:
        runners, notes = block_runners(variants, prefill_tokens, decode_tokens, engines, threads, Path(tmp), seed)
        rows = measure(runners, repeats, prefill_tokens, decode_tokens, progress=progress)
    shapes = llama_block_shapes(**shape)
    ranks = {k: (s.rank, s.nnz) for k, s in variants["oats"][0].items()}
    return {"rows": rows, "notes": notes, "versions": engine_versions(), "threads": thread_settings(),
            "label": f"{n_blocks} synthetic Llama block(s) {shapes['q'][0]}/{shapes['gate'][0]}, "
                     f"compression {compression}, OATS rank ratio {rank_ratio} (leaves the cache)",
            "oats_rank_nnz": ranks}


# ---------------------------------------------------------------- report

def format_report(report: dict) -> str:
    """A Markdown table of a report's rows, with its engines and thread settings."""
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
              f"({v['cpu_count']} logical cores)",
              "threads: " + ", ".join(f"{k}={t[k]}" for k in (*THREAD_ENV, "torch_threads", "mkl_threads")
                                      if t.get(k) is not None)]
    for note in dict.fromkeys(report.get("notes") or []):
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"
