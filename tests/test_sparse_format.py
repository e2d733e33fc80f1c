"""The bitmask format and its native kernels: exact layout, products equal to PyTorch on every ISA path."""
import numpy as np
import pytest
import torch

from oats import native
from oats.sparse_format import BitmaskTensor
from oats.speed.bitmask_engine import BitmaskLinear

needs_native = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.status()}")
ISAS = [i for i in native.ISAS if native.available() and native.ISAS[i] <= native.ISAS[native.best_isa()]]


def sparse_matrix(d_out, d_in, density, seed=0, pattern=None):
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(d_out, d_in, generator=g)
    if pattern:  # N:M along the input columns
        n, m = pattern
        groups = torch.rand(d_out, d_in // m, m, generator=g).argsort(-1) < n
        return S * groups.reshape(d_out, d_in)
    S = S * (torch.rand(d_out, d_in, generator=g) < density)
    if d_out > 2:
        S[0] = 0.0  # an empty row
        S[1] = torch.randn(d_in, generator=g)  # a full row
    return S


SHAPES = [(1, 1, 1), (5, 3, 1), (7, 17, 3), (33, 100, 9), (16, 31, 20), (64, 257, 1), (40, 64, 8), (24, 48, 2),
          (8, 48, 1), (9, 40, 1), (6, 24, 1),  # n = 1: the decode path (odd and even chunk counts, tails)
          (5, 64, 1), (7, 96, 1), (9, 130, 1), (33, 200, 1), (12, 1000, 1), (3, 161, 1),  # 64-column words, 32-groups
          (5, 8197, 1), (4, 8256, 1)]  # wide rows (x more than L1 holds), tails


def test_layout_is_compressed_tensors_sparse_bitmask():
    S = torch.tensor([[0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    b = BitmaskTensor.from_dense(S)
    assert b.values.tolist() == [2.0, 3.0, 1.0]
    assert b.bitmask.tolist() == [[0b10, 0b1], [0b1, 0]]  # little bit order, rows padded to whole bytes
    assert b.row_offsets.tolist() == [0, 2]
    sd = b.state_dict("w")
    assert sorted(sd) == ["w.bitmask", "w.compressed", "w.row_offsets", "w.shape"]
    assert sd["w.shape"].tolist() == [2, 9]
    np.testing.assert_array_equal(b.bitmask.numpy(), np.packbits((S != 0).numpy(), axis=-1, bitorder="little"))
    assert torch.equal(BitmaskTensor.from_state_dict(sd, "w").to_dense(), S)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d_out,d_in,n", SHAPES)
def test_to_dense_and_mask_are_exact(d_out, d_in, n, dtype):
    S = sparse_matrix(d_out, d_in, 0.4).to(dtype)
    b = BitmaskTensor.from_dense(S)
    assert torch.equal(b.to_dense(dtype), S)
    assert torch.equal(b.mask(), S != 0)
    for isa in ISAS:
        assert torch.equal(native.bitmask_to_dense(b.values, b.bitmask, b.row_offsets, d_in, isa=isa), S.float())
        if dtype == torch.bfloat16:  # bf16 rows straight from bf16 values
            assert torch.equal(native.bitmask_to_dense(b.values, b.bitmask, b.row_offsets, d_in, isa=isa,
                                                       dtype=torch.bfloat16), S)
        if d_out > 2:
            rows = native.bitmask_to_dense(b.values, b.bitmask, b.row_offsets, d_in, rows=(1, d_out - 1), isa=isa)
            assert torch.equal(rows, S[1:-1].float())


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d_out,d_in,n", SHAPES)
def test_kernel_matches_pytorch(d_out, d_in, n, dtype, isa):
    S = sparse_matrix(d_out, d_in, 0.35, seed=d_in)
    b = BitmaskTensor.from_dense(S, dtype)
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(1))
    ref = x.double() @ b.to_dense().double().T  # the stored (bf16-rounded) values, exact product
    y, used = native.bitmask_matmul(b.values, b.bitmask, b.row_offsets, d_in, x, isa=isa)
    assert used == isa
    scale = x.double().abs() @ b.to_dense().double().abs().T  # fp32 accumulation error bound
    assert float(((y.double() - ref).abs() / scale.clamp_min(1e-30)).max()) < 1e-5
    y2 = torch.ones(n, d_out)
    native.bitmask_matmul(b.values, b.bitmask, b.row_offsets, d_in, x, out=y2, accumulate=True, isa=isa)
    assert torch.allclose(y2, y + 1, atol=1e-5 * float(scale.max()) + 1e-6)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d_out,d_in,r", [(1, 1, 1), (5, 3, 2), (9, 40, 0), (37, 53, 5), (64, 257, 1), (130, 96, 33),
                                          (8, 48, 70), (20, 1000, 130), (11, 161, 64),  # tails, r > d_in
                                          (7, 8219, 3), (6, 8256, 0)])  # wide rows
def test_lowrank_decode_matches_pytorch(d_out, d_in, r, dtype, isa):
    """One token through S + U V in one native call: S x + U (V x) within the fp32 bound, y += with accumulate."""
    g = torch.Generator().manual_seed(d_out + d_in)
    b = BitmaskTensor.from_dense(sparse_matrix(d_out, d_in, 0.4, seed=d_in), dtype)
    U, V = torch.randn(d_out, r, generator=g).to(dtype), torch.randn(r, d_in, generator=g).to(dtype)
    x = torch.randn(d_in, generator=g)
    y, used = native.bitmask_lowrank_decode(b.values, b.bitmask, b.row_offsets, d_in, x, V, U, isa=isa)
    assert used == isa and y.shape == (d_out,)
    Sd, Ud, Vd, xd = b.to_dense().double(), U.double(), V.double(), x.double()
    ref = Sd @ xd + Ud @ (Vd @ xd)
    scale = Sd.abs() @ xd.abs() + Ud.abs() @ (Vd.abs() @ xd.abs())  # fp32 accumulation error bound
    assert float(((y.double() - ref).abs() / scale.clamp_min(1e-30)).max()) < 1e-5
    y2 = torch.full((d_out,), 2.0)
    native.bitmask_lowrank_decode(b.values, b.bitmask, b.row_offsets, d_in, x, V, U, out=y2, accumulate=True, isa=isa)
    assert torch.allclose(y2, y + 2, atol=1e-5 * float(scale.max()) + 1e-6)
    shifted = torch.cat([torch.zeros(1), x])[1:]  # x 4 bytes past a 64-byte boundary: read from an aligned copy
    assert shifted.data_ptr() % 64 != 0
    assert torch.equal(native.bitmask_lowrank_decode(b.values, b.bitmask, b.row_offsets, d_in, shifted, V, U, isa=isa)[0], y)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d_out,d_in,r", [(300, 1000, 299), (1000, 64, 40), (4, 4096, 3), (9, 8200, 5)])
def test_lowrank_decode_same_on_any_thread_count(d_out, d_in, r, dtype):
    """The fused decode gives the same bits on 1, 2 or 3 threads (rows split differently over threads),
    for tall, wide and one-block layers, fp32 and bf16."""
    g = torch.Generator().manual_seed(r)
    b = BitmaskTensor.from_dense(sparse_matrix(d_out, d_in, 0.45, seed=d_out), dtype)
    U, V = torch.randn(d_out, r, generator=g).to(dtype), torch.randn(r, d_in, generator=g).to(dtype)
    x = torch.randn(d_in, generator=g)
    before = torch.get_num_threads()
    try:
        ys = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            ys.append(native.bitmask_lowrank_decode(b.values, b.bitmask, b.row_offsets, d_in, x, V, U)[0])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(ys[0], ys[1]) and torch.equal(ys[0], ys[2])
    ref = b.to_dense().double() @ x.double() + U.double() @ (V.double() @ x.double())
    assert torch.allclose(ys[0].double(), ref, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif("avx2" not in ISAS, reason="the prefill kernel needs AVX2 or AVX-512")
@pytest.mark.parametrize("isa", [i for i in ISAS if native.ISAS[i] >= native.ISAS["avx2"]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d_out,d_in,n,r", [(5, 3, 2, 0), (33, 100, 9, 4), (40, 130, 70, 0), (17, 64, 64, 3),
                                            (20, 200, 129, 65), (37, 257, 300, 130), (1, 1, 2, 1), (70, 64, 16, 0),
                                            (300, 190, 33, 1), (9, 129, 100, 2)])
def test_prefill_matches_pytorch(d_out, d_in, n, r, dtype, isa):
    """Many tokens through S (+ U V) in one native call: token chunks of 1-128 and more (300), column panels
    and their tails, rank 0, odd ranks (a lone row of U), within the fp32 bound; y += with accumulate. On the
    avx512bf16 path bf16 layers take x in bf16 (as a bf16 GEMM does) and round Z = x V^T to bf16 before U."""
    g = torch.Generator().manual_seed(n + r)
    b = BitmaskTensor.from_dense(sparse_matrix(d_out, d_in, 0.4, seed=n), dtype)
    U, V = (torch.randn(d_out, r, generator=g).to(dtype), torch.randn(r, d_in, generator=g).to(dtype)) if r else (None, None)
    x = torch.randn(n, d_in, generator=g)
    y = native.bitmask_prefill(b.values, b.bitmask, b.row_offsets, d_in, x, V, U, isa=isa)
    pairs = isa == "avx512bf16" and dtype == torch.bfloat16
    Sd, xd = b.to_dense().double(), (x.bfloat16() if pairs else x).double()
    ref, scale = xd @ Sd.T, xd.abs() @ Sd.abs().T
    allowed = 1e-5 * scale
    if r:
        z = xd @ V.double().T
        ref = ref + (z.float().bfloat16() if pairs else z).double() @ U.double().T
        zscale = (xd.abs() @ V.double().abs().T) @ U.double().abs().T
        allowed = allowed + (2.0 ** -8 if pairs else 1e-5) * zscale  # Z's rounding to bf16: half an ulp either way
    assert bool(((y.double() - ref).abs() <= allowed + 1e-30).all())
    y2 = torch.ones(n, d_out)
    native.bitmask_prefill(b.values, b.bitmask, b.row_offsets, d_in, x, V, U, out=y2, accumulate=True, isa=isa)
    assert torch.equal(y2, y + 1)
    with pytest.raises(ValueError, match=rf"x must be contiguous fp32 \(n, {d_in}\)"):
        native.bitmask_prefill(b.values, b.bitmask, b.row_offsets, d_in, torch.randn(n, d_in + 1))


@pytest.mark.skipif("avx512bf16" not in ISAS, reason="the bf16 pair kernel needs AVX512_BF16")
def test_bf16_prefill_is_the_dense_bf16_product():
    """The vdpbf16ps path computes what a bf16 GEMM computes: x rounded to bf16, exact products, fp32 sums;
    every tail at once (d_in and tokens not multiples of 16, odd nonzero counts per panel)."""
    g = torch.Generator().manual_seed(3)
    S = sparse_matrix(45, 333, 0.37, seed=5)
    b = BitmaskTensor.from_dense(S, torch.bfloat16)
    x = torch.randn(77, 333, generator=g) * 3
    y = native.bitmask_prefill(b.values, b.bitmask, b.row_offsets, 333, x, isa="avx512bf16")
    ref = x.bfloat16().double() @ b.to_dense().double().T
    assert float((y.double() - ref).abs().max()) < 1e-5 * float(ref.abs().max())
    fp32_x = native.bitmask_prefill(b.values, b.bitmask, b.row_offsets, 333, x, isa="avx512vbmi2")
    assert not torch.equal(fp32_x, y)  # the other path keeps x in fp32


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("pattern", [(2, 4), (4, 8), (1, 4)])
def test_kernel_on_nm_patterns(pattern, isa):
    S = sparse_matrix(48, 96, None, pattern=pattern)
    b = BitmaskTensor.from_dense(S)
    assert b.nnz == 48 * 96 * pattern[0] // pattern[1]
    x = torch.randn(3, 96)
    y, _ = native.bitmask_matmul(b.values, b.bitmask, b.row_offsets, 96, x, isa=isa)
    assert torch.allclose(y, x @ S.T, rtol=1e-5, atol=1e-5)


def test_damaged_arrays_are_refused_before_any_kernel_reads_them():
    b = BitmaskTensor.from_dense(sparse_matrix(6, 20, 0.5))
    with pytest.raises(ValueError, match="row_offsets or the number of values"):
        BitmaskTensor(b.values[:-1], b.bitmask, b.row_offsets, b.shape)
    offsets = b.row_offsets.clone()
    offsets[2] += 1
    with pytest.raises(ValueError, match="row_offsets or the number of values"):
        BitmaskTensor(b.values, b.bitmask, offsets, b.shape)
    bits = b.bitmask.clone()
    bits[0, -1] |= 0x80  # column 23 of a 20-column matrix
    with pytest.raises(ValueError, match="bits set past column 20"):
        BitmaskTensor(b.values, bits, b.row_offsets, b.shape)
    with pytest.raises(ValueError, match="expected uint8 \\(6, 3\\)"):
        BitmaskTensor(b.values, b.bitmask[:, :2], b.row_offsets, b.shape)
    with pytest.raises(ValueError, match="allowed: fp32, bf16, fp16"):
        BitmaskTensor.from_dense(torch.ones(2, 2, dtype=torch.float64), torch.float64)
    with pytest.raises(KeyError, match="lacks w.row_offsets"):
        BitmaskTensor.from_state_dict({k: v for k, v in b.state_dict("w").items() if "offsets" not in k}, "w")
    if native.available():
        with pytest.raises(ValueError, match="isa 'sse' unknown; allowed: scalar, avx2, avx512"):
            b.matmul(torch.randn(1, 20), isa="sse")


def test_pytorch_fallback_gives_the_same_products(monkeypatch):
    S = sparse_matrix(12, 37, 0.4)
    b = BitmaskTensor.from_dense(S)
    x = torch.randn(4, 37)
    fast = b.matmul(x)
    monkeypatch.setattr(native, "available", lambda: False)
    assert torch.equal(b.to_dense(), S)
    assert torch.allclose(b.matmul(x), fast, rtol=1e-5, atol=1e-5)
    assert torch.allclose(BitmaskLinear(b)(x), x @ S.T, rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rank", [0, 6])
def test_bitmask_linear_paths_agree_with_the_dense_layer(rank, dtype):
    S = sparse_matrix(70, 45, 0.3)
    U, V, bias = torch.randn(70, rank), torch.randn(rank, 45), torch.randn(70)
    rounded = (S.to(dtype).float(), U.to(dtype).float(), V.to(dtype).float())
    x = torch.randn(2, 9, 45)
    ref = x @ rounded[0].T + (x @ rounded[2].T) @ rounded[1].T + bias
    tol = 1e-4 if dtype == torch.float32 else 3e-2  # bf16: x is rounded for the low-rank product
    for path in ("kernel", "spmm", "tile-gemm", None):
        layer = BitmaskLinear.from_dense_parts(S, U if rank else None, V if rank else None, bias, dtype, path)
        assert layer.rank == rank
        y = layer(x)
        assert y.shape == (2, 9, 70)
        assert torch.allclose(y, ref, rtol=tol, atol=tol * float(ref.abs().max())), path
    assert set(layer.choices.values()) <= {"kernel", "spmm", "tile-gemm"} and 32 in layer.choices  # 18 tokens
    one = x[:1, :1]  # one token: sparse and low-rank parts in one native call (the decode path)
    assert torch.allclose(layer(one), ref[:1, :1], rtol=tol, atol=tol * float(ref.abs().max()))
    with pytest.raises(ValueError, match="path 'csr' unknown; allowed: kernel, spmm, tile-gemm"):
        BitmaskLinear(BitmaskTensor.from_dense(S), path="csr")


def test_fp16_values_are_stored_but_never_handed_to_the_kernels():
    S = sparse_matrix(6, 20, 0.5).half()
    b = BitmaskTensor.from_dense(S)
    assert b.values.dtype == torch.float16 and torch.equal(b.to_dense(torch.float16), S)
    x = torch.randn(2, 20)
    assert torch.allclose(b.matmul(x), x @ S.float().T, rtol=1e-3, atol=1e-3)  # dense fallback
    with pytest.raises(ValueError, match="fp32 or bf16 values, got torch.float16"):
        BitmaskLinear(b)
    if native.available():
        with pytest.raises(ValueError, match="fp32 or bf16 CPU values"):
            native.bitmask_matmul(b.values, b.bitmask, b.row_offsets, 20, x)


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d_out,d_in,n", [(1, 1, 1), (5, 3, 1), (37, 161, 1), (64, 1000, 1), (9, 70, 3), (3, 96, 1)])
def test_dense_kernel_matches_pytorch(d_out, d_in, n, dtype, isa):
    """The native dense engine's gemv (the baseline the sparse kernels are timed against) within the fp32 bound."""
    g = torch.Generator().manual_seed(d_in)
    W, x = torch.randn(d_out, d_in, generator=g).to(dtype), torch.randn(n, d_in, generator=g)
    y, used = native.dense_matmul(W, x, isa=isa)
    assert used == isa and y.shape == (n, d_out)
    ref, scale = x.double() @ W.double().T, x.double().abs() @ W.double().abs().T
    assert float(((y.double() - ref).abs() / scale.clamp_min(1e-30)).max()) < 1e-5
    y2 = torch.ones(n, d_out)
    native.dense_matmul(W, x, out=y2, accumulate=True, isa=isa)
    assert torch.allclose(y2, y + 1, atol=1e-5 * float(scale.max()) + 1e-6)
    with pytest.raises(ValueError, match=rf"x must be contiguous fp32 \(n, {d_in}\)"):
        native.dense_matmul(W, torch.randn(n, d_in + 1))


def test_bitmask_linear_choice_is_not_fooled_by_one_slow_call(monkeypatch):
    """The path is picked by each path's fastest of several interleaved calls: one disturbed call of the
    fastest path (as a shared machine gives) does not hand the choice to a slower one."""
    import oats.speed.bitmask_engine as engine

    if not native.available():
        pytest.skip("the choice is made only with the native kernels")
    clock = [0.0]
    cost = {"kernel": 3.0, "spmm": 1.0, "tile-gemm": 2.0}
    calls: list[str] = []

    def fake_apply(self, x, path, tile_bytes=None):
        calls.append(path)
        # spmm's first timed call (after the warm-up round) is disturbed
        clock[0] += 10.0 if path == "spmm" and calls.count("spmm") == 2 else cost[path]
        return torch.zeros(x.shape[0], self.out_features)

    monkeypatch.setattr(engine.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(engine.BitmaskLinear, "_apply", fake_apply)
    monkeypatch.setattr(engine.native, "best_isa", lambda: "avx512")
    layer = BitmaskLinear.from_dense_parts(sparse_matrix(8, 16, 0.5))
    layer(torch.randn(5, 16))
    assert layer.choices == {8: "spmm"} and layer.way(8) == "spmm"
    ways = 2 + len(engine.TILE_SIZES)  # kernel, spmm, tile-gemm at each tile size
    timing = ways * (1 + engine.CHOOSE_ROUNDS)  # one warm-up round, then the timed rounds
    assert calls[timing:] == ["spmm"]  # then the product itself
    layer(torch.randn(7, 16))  # the same bucket: chosen once
    assert calls[timing:] == ["spmm", "spmm"]


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tile_gemm_tile_sizes_agree_and_share_one_scratch_buffer(monkeypatch, dtype):
    """tile-gemm gives the same product at every tile size (16 rows, the smallest; 20, the last tile
    short; the whole matrix), all layers expand into one shared buffer, and the choice records the tile
    size it timed fastest."""
    import oats.speed.bitmask_engine as engine

    S = sparse_matrix(37, 40, 0.4)
    layer = BitmaskLinear.from_dense_parts(S, dtype=dtype, path="tile-gemm")
    x = torch.randn(6, 40)
    ref = x.to(dtype).float() @ S.to(dtype).float().T
    row_bytes = dtype.itemsize * 40
    outs = [layer._sparse_tiled(x, tile_bytes) for tile_bytes in (16 * row_bytes, 20 * row_bytes, 64 << 20)]
    for y in outs:
        assert torch.allclose(y, ref, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-2)
    buffer = engine._SCRATCH[dtype]
    assert buffer.numel() >= 37 * 40  # grown to the largest tile asked for, then reused
    other = BitmaskLinear.from_dense_parts(sparse_matrix(5, 40, 0.5), dtype=dtype, path="tile-gemm")
    other(torch.randn(3, 40))
    assert engine._SCRATCH[dtype] is buffer  # a smaller layer reuses it: no buffer per layer
    clock = [0.0]
    monkeypatch.setattr(engine.time, "perf_counter", lambda: clock[0])
    fast = engine.TILE_SIZES[-1]

    def fake_apply(self, x, path, tile_bytes=engine.TILE_BYTES):
        clock[0] += 1.0 if (path, tile_bytes) == ("tile-gemm", fast) else 2.0
        return torch.zeros(x.shape[0], self.out_features)

    monkeypatch.setattr(engine.BitmaskLinear, "_apply", fake_apply)
    auto = BitmaskLinear.from_dense_parts(S, dtype=dtype)
    auto(torch.randn(5, 40))
    assert auto.choices == {8: "tile-gemm"} and auto.tile_bytes == {8: fast}
    assert auto.way(8) == f"tile-gemm ({fast >> 20} MiB tiles)" and "tile-gemm (" in auto.extra_repr()


@needs_native
def test_oats_isa_is_honoured_by_prefill_and_the_path_choice(monkeypatch):
    """OATS_ISA stands in for a smaller CPU: with avx2 the prefill kernel runs its AVX2 walk, with scalar
    it steps aside (None, nothing computed) and the layer never picks it; a request above the CPU is
    clamped, a wrong name refused."""
    if native.ISAS[native.best_isa()] < native.ISAS["avx2"]:
        pytest.skip("no AVX2 on this CPU")
    b = BitmaskTensor.from_dense(sparse_matrix(24, 70, 0.4))
    x = torch.randn(20, 70)
    monkeypatch.setenv("OATS_ISA", "avx2")
    assert native.isa_in_use() == "avx2"
    y = native.bitmask_prefill(b.values, b.bitmask, b.row_offsets, 70, x)
    assert y is not None and torch.allclose(y, x @ b.to_dense().T, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("OATS_ISA", "scalar")
    assert native.bitmask_prefill(b.values, b.bitmask, b.row_offsets, 70, x) is None
    layer = BitmaskLinear(b)
    assert torch.allclose(layer(x), x @ b.to_dense().T, rtol=1e-4, atol=1e-4)
    assert set(layer.choices.values()) <= {"kernel", "tile-gemm"}
    monkeypatch.setattr(native, "best_isa", lambda: "avx2")
    monkeypatch.setenv("OATS_ISA", "avx512")
    assert native.isa_in_use() == "avx2"
    monkeypatch.setenv("OATS_ISA", "sse9")
    with pytest.raises(ValueError, match="isa 'sse9' unknown; allowed: scalar, avx2, avx512, avx512vbmi2"):
        native.isa_in_use()
