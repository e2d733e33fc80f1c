"""Synthetic Llama-shaped decoder blocks for ``reproduce/bench_speed.py``: dense vs unstructured vs OATS.

The seven projections of a decoder layer (Llama-3-8B by default) with random fp32 weights of the
exact budget (:func:`oats.budget.layer_budget`), large enough to leave the cache, timed with
:mod:`oats.speed.timing` on the in-process engines (:mod:`oats.speed.engines`), ONNX Runtime on a
hand-built ONNX graph of the same blocks and, if the user installed it, DeepSparse.
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from oats.budget import layer_budget
from oats.speed.engines import CPULinear, engine_dtype, engine_format, engines_here
from oats.speed.env import available_engines, provenance
from oats.speed.export import ExportedLinear, rowwise_csr
from oats.speed.timing import Runner, measure

Layer = Callable[[np.ndarray], np.ndarray]  # (n, d_in) -> (n, d_out), fp32


def llama_block_shapes(hidden: int = 4096, intermediate: int = 14336, kv: int = 1024) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of the seven projections of a Llama decoder layer (Llama-3-8B by default)."""
    return {"q": (hidden, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, hidden),
            "gate": (intermediate, hidden), "up": (intermediate, hidden), "down": (hidden, intermediate)}


def synthetic_linear(d_out: int, d_in: int, variant: str, compression: float | None, rank_ratio: float,
                     rng: np.random.Generator) -> ExportedLinear:
    """Random fp32 weights with the exact structure of ``variant``: ``dense`` (d_out, d_in);
    ``unstructured`` (the same count of nonzeros in every row, as row-wise Wanda keeps); ``oats``
    (row-wise sparse part plus U (d_out, r), V (r, d_in) with r from :func:`oats.budget.layer_budget`
    at ``rank_ratio``). Values do not change the timing."""
    scale = float(1.0 / np.sqrt(d_in))  # a Python float keeps float32 arrays float32
    if variant == "dense":
        return ExportedLinear(d_out, d_in, weight=(rng.standard_normal((d_out, d_in), dtype=np.float32) * scale))
    budget = layer_budget(d_out, d_in, compression, rank_ratio if variant == "oats" else 0.0)
    k = budget.row_nnz
    cols = np.argpartition(rng.random((d_out, d_in), dtype=np.float32), k - 1, axis=1)[:, :k] if k else \
        np.zeros((d_out, 0), dtype=np.int64)
    cols.sort(axis=1)
    csr = rowwise_csr(rng.standard_normal(d_out * k, dtype=np.float32) * scale, cols, d_in)
    U = V = None
    if budget.rank:
        U = rng.standard_normal((d_out, budget.rank), dtype=np.float32) * scale
        V = rng.standard_normal((budget.rank, d_in), dtype=np.float32) / float(np.sqrt(budget.rank))
    return ExportedLinear(d_out, d_in, sparse=csr, U=U, V=V)


def synthetic_blocks(n_blocks: int, variant: str, compression: float | None, rank_ratio: float, seed: int = 0,
                     **shape) -> list[dict[str, ExportedLinear]]:
    """``n_blocks`` blocks of :func:`synthetic_linear` projections (name -> layer), shapes from
    :func:`llama_block_shapes` (``shape``: hidden, intermediate, kv)."""
    rng = np.random.default_rng(seed)
    return [{name: synthetic_linear(o, i, variant, compression, rank_ratio, rng)
             for name, (o, i) in llama_block_shapes(**shape).items()} for _ in range(n_blocks)]


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def block_forward(x: np.ndarray, blocks: list[dict[str, Layer]]) -> np.ndarray:
    """The projections' data flow of a decoder layer, attention and norms left out, x (n, hidden) ->
    (n, hidden): ``x + o(q(x)) + down(silu(gate(x)) * up(x))`` with k(x), v(x) computed (and unused)
    as a layer does."""
    for b in blocks:
        q = b["q"](x)
        b["k"](x), b["v"](x)
        h = _silu(b["gate"](x)) * b["up"](x)
        x = x + b["o"](q) + b["down"](h)
    return x


def layer_fn(spec: ExportedLinear, engine: str, keep: list | None = None) -> Layer:
    """``spec`` as a numpy function on ``engine`` (bias left out; the synthetic layers have none):
    ``torch`` through ``F.linear``, the others :attr:`oats.speed.engines.CPULinear.matmul` (the
    CPULinear appended to ``keep`` if given)."""
    if engine == "torch":
        w = torch.from_numpy(spec.weight)
        return lambda x: torch.nn.functional.linear(torch.from_numpy(x), w).numpy()
    layer = CPULinear(spec, engine)  # torch-bf16 included (its weight converted once)
    if keep is not None:
        keep.append(layer)
    return layer.matmul


def picked_paths(layers: dict[str, list[CPULinear]]) -> list[str]:
    """Which way each native engine's layers applied S per token bucket (:class:`BitmaskLinear` choices)."""
    notes = []
    for label, mods in layers.items():
        counts: dict[int, Counter] = {}
        for m in mods:
            for bucket in (m._bitmask.choices if m._bitmask is not None else {}):
                counts.setdefault(bucket, Counter())[m._bitmask.way(bucket)] += 1
        for bucket, c in sorted(counts.items()):
            notes.append(f"{label}, up to {bucket} tokens: " + ", ".join(f"{p} in {k} layers" for p, k in c.items()))
    return notes


def block_onnx(blocks: list[dict[str, ExportedLinear]], tokens: int, path: Path) -> Path:
    """The same block stack as an ONNX graph (fp32, static input x (1, tokens, hidden) -> (1, tokens,
    hidden), plus the k, v outputs): dense or sparse layers as MatMul with a dense initialiser (zeros
    kept), low-rank as two more MatMuls."""
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
                  engines: list[str], threads: int, workdir: Path, seed: int = 0, bf16: bool = False,
                  native_layers: dict[str, list[CPULinear]] | None = None) -> tuple[list[Runner], list[str]]:
    """Runners for synthetic block stacks; returns (runners, notes about engines not run); the native
    engines' layers are collected in ``native_layers`` (by "variant on engine"). Inputs:
    random x (prefill_tokens, hidden) for prefill and (1, hidden) for each decode step."""
    avail = available_engines()
    notes = []
    native_layers = native_layers if native_layers is not None else {}
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
        params = sum(s.params for s in specs)
        dense_storage = sum(s.weight_bytes("dense") for s in specs)  # ONNX graphs hold S densely (zeros kept)
        if "inprocess" in engines:
            for engine in engines_here(dense=variant == "dense", bf16=bf16):
                keep = native_layers.setdefault(f"{variant} on {engine}", []) if engine.startswith("native") else None
                fns = [{k: layer_fn(s, engine, keep) for k, s in b.items()} for b in blocks]
                call = (lambda x, fns=fns: block_forward(x, fns))
                fmt, value_bytes = engine_format(engine, variant == "dense")
                runners.append(Runner(variant, f"inprocess-{engine}", sum(s.weight_bytes(fmt, value_bytes) for s in specs),
                                      params, timed(call, "prefill"), timed(call, "decode"), engine_dtype(engine), fmt))
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
            runners.append(Runner(variant, engine, dense_storage, params,
                                  timed(calls[prefill_tokens], "prefill"), timed(calls[1], "decode"), fmt="dense"))
    return runners, notes


def block_speed(n_blocks: int, compression: float, rank_ratio: float, prefill_tokens: int, decode_tokens: int,
                repeats: int, engines: list[str], threads: int, seed: int = 0, progress: bool = False,
                bf16: bool = False, **shape) -> dict:
    """Dense vs unstructured vs OATS (equal parameter count) on ``n_blocks`` synthetic Llama blocks;
    a report dict as :func:`oats.speed.report.format_report` takes it, plus ``oats_rank_nnz``."""
    variants = {"dense": synthetic_blocks(n_blocks, "dense", None, 0.0, seed, **shape),
                "unstructured": synthetic_blocks(n_blocks, "unstructured", compression, 0.0, seed, **shape),
                "oats": synthetic_blocks(n_blocks, "oats", compression, rank_ratio, seed, **shape)}
    with tempfile.TemporaryDirectory(prefix="oats_speed_") as tmp:
        native_layers: dict[str, list[CPULinear]] = {}
        runners, notes = block_runners(variants, prefill_tokens, decode_tokens, engines, threads, Path(tmp), seed,
                                       bf16, native_layers)
        rows = measure(runners, repeats, prefill_tokens, decode_tokens, progress=progress)
        notes += picked_paths(native_layers)
    shapes = llama_block_shapes(**shape)
    ranks = {k: (s.rank, s.nnz) for k, s in variants["oats"][0].items()}
    return {"rows": rows, "notes": notes, **provenance(),
            "label": f"{n_blocks} synthetic Llama block(s) {shapes['q'][0]}/{shapes['gate'][0]}, "
                     f"compression {compression}, OATS rank ratio {rank_ratio} (leaves the cache)",
            "oats_rank_nnz": ranks}
