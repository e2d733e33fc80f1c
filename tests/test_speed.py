"""CPU export (in-process MKL / scipy CSR + dense low rank, ONNX) and the speed benchmark, on tiny models."""
from __future__ import annotations

import copy
import importlib.util
import re

import numpy as np
import pytest
import torch

import oats
from oats.layers import CompressedLinear
from oats.speed import (CPULinear, ExportedLinear, detect_nm, evaluate_speed, export_linear, export_modules,
                        export_onnx, format_report, mkl_error, mkl_module, sparse_engine, to_engine)
from reproduce import speed_blocks
from tiny_models import calib_ids, tiny_llama, tiny_phi3

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
needs_mkl = pytest.mark.skipif(mkl_module() is None, reason=f"MKL engine unavailable ({mkl_error()}): "
                               "install the extra `pip install -c constraints.txt -e '.[speed]'`")
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime not installed: the extra "
                               "`pip install -c constraints.txt -e '.[speed]'`")
needs_native = pytest.mark.skipif(not oats.native.available(), reason=f"native kernels: {oats.native.status()}")
SPARSE_ENGINES = ["scipy", pytest.param("mkl", marks=needs_mkl), pytest.param("native", marks=needs_native)]


@pytest.fixture(scope="module")
def oats_llama():
    torch.set_num_threads(1)
    m = tiny_llama()
    oats.compress(m, calib_ids(), method="oats", compression=0.5, rank_ratio=0.3)
    return m


def _layer(rank: int, nm: bool = False, bias: bool = True) -> CompressedLinear:
    g = torch.Generator().manual_seed(0)
    S = torch.randn(24, 32, generator=g)
    if nm:  # keep 2 of every 4
        keep = torch.rand(24, 8, 4, generator=g).argsort(-1) < 2
        S = S * keep.reshape(24, 32)
    else:
        S = S * (torch.rand(24, 32, generator=g) < 0.4)
    U, V = torch.randn(24, rank, generator=g), torch.randn(rank, 32, generator=g)
    return CompressedLinear(S, U, V, torch.randn(24, generator=g) if bias else None)


@pytest.mark.parametrize("engine", SPARSE_ENGINES)
@pytest.mark.parametrize("rank", [0, 5])
def test_cpu_linear_matches_compressed_linear(engine, rank):
    layer = _layer(rank)
    spec = export_linear(layer)
    assert spec.kind == ("sparse+lowrank" if rank else "sparse") and spec.rank == rank
    assert spec.params == layer.num_params(include_bias=False)
    x = torch.randn(3, 7, 32)
    torch.testing.assert_close(CPULinear(spec, engine)(x), layer(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("engine", ["torch", "numpy", pytest.param("mkl", marks=needs_mkl),
                                    pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("tokens", [5, 1])  # 1: the native engine's streaming gemv
def test_dense_engines_match(engine, tokens):
    layer = _layer(4)
    spec = export_linear(layer, dense=True)
    assert spec.kind == "dense"
    x = torch.randn(tokens, 32)
    torch.testing.assert_close(CPULinear(spec, engine)(x), layer(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="cannot run a dense layer"):
        CPULinear(spec, "scipy")


def test_nm_pattern_is_detected_and_weight_bytes_count_each_format():
    spec = export_linear(_layer(0, nm=True))
    assert spec.nm == "2:4" and detect_nm(torch.ones(2, 8, dtype=torch.bool)) is None
    assert spec.weight_bytes() == 8 * spec.nnz + 4 * (24 + 1)
    assert spec.weight_bytes("bitmask") == 4 * spec.nnz + 24 * 4 + 8 * 24  # 32 columns: 4 mask bytes per row
    assert spec.weight_bytes("bitmask", 2) == 2 * spec.nnz + 24 * 4 + 8 * 24
    lowrank = export_linear(_layer(3))
    assert lowrank.weight_bytes("bitmask") == 4 * lowrank.nnz + 24 * 4 + 8 * 24 + 4 * 3 * (24 + 32)
    assert ExportedLinear(24, 32, weight=np.zeros((24, 32), np.float32)).weight_bytes() == 4 * 24 * 32
    assert ExportedLinear(24, 32, weight=np.zeros((24, 32), np.float32)).weight_bytes("bitmask", 2) == 2 * 24 * 32
    with pytest.raises(ValueError, match="weight format 'coo' unknown; allowed: dense, csr, bitmask"):
        spec.weight_bytes("coo")


@needs_native
@pytest.mark.parametrize("rank", [0, 5])
def test_bf16_engines_match_within_bf16_rounding(rank):
    layer = _layer(rank)
    x = torch.randn(4, 32)
    ref = layer(x)
    tol = 2e-2 * float(ref.abs().max())
    torch.testing.assert_close(CPULinear(export_linear(layer), "native-bf16")(x), ref, atol=tol, rtol=0)
    torch.testing.assert_close(CPULinear(export_linear(layer, dense=True), "torch-bf16")(x), ref, atol=tol, rtol=0)
    for tokens in (1, 4):  # the native dense engine: streaming gemv (one token), PyTorch's bf16 GEMM (more)
        dense = CPULinear(export_linear(layer, dense=True), "native-bf16")
        torch.testing.assert_close(dense(x[:tokens]), ref[:tokens], atol=tol, rtol=0)


@pytest.mark.parametrize("engine", SPARSE_ENGINES)
def test_exported_model_matches_pytorch_prefill_and_decode(oats_llama, engine):
    ids = calib_ids(1, 16, seed=3)
    cpu = to_engine(copy.deepcopy(oats_llama), engine)
    assert sum(isinstance(m, CPULinear) for m in cpu.modules()) == 14  # 7 projections x 2 blocks
    with torch.no_grad():
        ref, out = oats_llama(ids).logits, cpu(ids).logits
        assert (out - ref).abs().max().item() < 1e-4
        g_ref = oats_llama.generate(ids, max_new_tokens=4, do_sample=False)
        g_cpu = cpu.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(g_ref, g_cpu)


def test_split_linear_exports_as_concatenated_parts():
    m = tiny_phi3()
    oats.compress(m, calib_ids(), method="wanda", compression=0.5)
    exported = export_modules(m)
    assert any(isinstance(s, list) for s in exported.values())  # Phi-3's fused qkv / gate_up
    ids = calib_ids(1, 12, seed=1)
    with torch.no_grad():
        ref = m(ids).logits
        out = to_engine(copy.deepcopy(m), "scipy")(ids).logits
    assert (out - ref).abs().max().item() < 1e-4


@needs_ort
def test_onnx_export_matches_pytorch(oats_llama, tmp_path):
    import onnxruntime as ort

    ids = calib_ids(1, 16, seed=5)
    path = export_onnx(oats_llama, ids, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input_ids": ids.numpy()})[0]
    with torch.no_grad():
        ref = oats_llama(ids).logits.numpy()
    assert out.shape == ref.shape and np.abs(out - ref).max() < 1e-4


def test_synthetic_layers_have_the_budget():
    rng = np.random.default_rng(0)
    un = speed_blocks.synthetic_linear(64, 96, "unstructured", 0.5, 0.25, rng)
    oa = speed_blocks.synthetic_linear(64, 96, "oats", 0.5, 0.25, rng)
    assert un.rank == 0 and un.nnz == 64 * 48
    assert oa.rank > 0 and abs(oa.params - un.params) < 64  # equal parameter count up to row rounding
    assert np.all(np.diff(oa.sparse.indptr) == oa.nnz // 64)


def test_block_forward_agrees_across_engines():
    layer_fn = speed_blocks.layer_fn
    blocks = speed_blocks.synthetic_blocks(1, "oats", 0.5, 0.25, hidden=64, intermediate=128, kv=16)
    x = np.random.default_rng(1).standard_normal((5, 64), dtype=np.float32)
    dense = [{k: ExportedLinear(s.d_out, s.d_in, weight=s.dense_weight().astype(np.float32)) for k, s in b.items()}
             for b in blocks]
    ref = speed_blocks.block_forward(x, [{k: layer_fn(s, "numpy") for k, s in b.items()} for b in dense])
    out = speed_blocks.block_forward(x, [{k: layer_fn(s, sparse_engine()) for k, s in b.items()} for b in blocks])
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=1e-3)


def test_block_speed_reports_every_engine_and_the_fastest_dense():
    engines = ["inprocess", "onnxruntime", "deepsparse"]
    r = speed_blocks.block_speed(1, 0.5, 0.25, prefill_tokens=8, decode_tokens=2, repeats=2, engines=engines,
                                 threads=1, hidden=64, intermediate=128, kv=16)
    rows = r["rows"]
    assert {x["variant"] for x in rows} == {"dense", "unstructured", "oats"}
    for phase in ("prefill", "decode"):
        ph = [x for x in rows if x["phase"] == phase]
        for dt in {x["dtype"] for x in ph}:  # the fastest dense engine (lowest median) is the reference: 1.0x
            dense = [x for x in ph if x["variant"] == "dense" and x["dtype"] == dt]
            best = min(dense, key=lambda x: x["median_ms"])
            assert best["speedup"] == pytest.approx(1.0) and all(x["vs_dense_engine"] == best["engine"] for x in ph
                                                                   if x["dtype"] == dt)
        assert all(x["min_ms"] <= x["median_ms"] <= x["max_ms"] and x["repeats"] == 2 for x in ph)
    assert ("onnxruntime" in {x["engine"] for x in rows}) == HAS_ORT
    if importlib.util.find_spec("deepsparse") is None:
        assert "deepsparse: not installed" in r["notes"]
    md = format_report(r)
    assert "threads:" in md and "torch" in md and "fastest dense" in md
    if oats.native.available():  # the native engine says which way it applied S to the 8-token prefill
        picks = [n for n in r["notes"] if n.startswith("oats on native, up to 8 tokens:")]
        assert len(picks) == 1
        assert sum(int(k) for k in re.findall(r"in (\d+) layers", picks[0])) == 7  # the 7 projections
        bitmask = [x for x in rows if x["engine"] == "inprocess-native" and x["variant"] != "dense"]
        assert bitmask and all(x["format"] == "bitmask" for x in bitmask)
        assert all(x["format"] == "dense" for x in rows if x["variant"] == "dense")


def test_pipeline_speed_records(oats_llama, tmp_path):
    scfg = {"prefill_tokens": 8, "decode_tokens": 2, "repeats": 2, "engines": ["inprocess"], "label": "tiny"}
    model = copy.deepcopy(oats_llama)
    before = [type(m).__name__ for m in model.modules()]
    recs = evaluate_speed(model, scfg, tmp_path)
    assert [type(m).__name__ for m in model.modules()] == before  # the model's modules are put back
    got = {r["metric"]: r for r in recs}
    assert {"prefill_speedup", "decode_speedup", "prefill_ideal_speedup"} <= set(got)
    assert got["prefill_speedup"]["engine"] in {f"inprocess-{e}" for e in ("native", "mkl", "scipy")}
    assert sparse_engine() == ("native" if oats.native.available() else "mkl" if mkl_module() else "scipy")
    assert (tmp_path / "speed.json").exists() and "tiny" in (tmp_path / "speed.md").read_text()
