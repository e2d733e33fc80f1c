"""Budget arithmetic and masks."""
import math

import pytest
import torch

from oats.budget import NM, BudgetError, implied_nm_compression, layer_budget, parse_nm
from oats import native
from oats.masks import Threshold, budget_mask, layer_topk_mask, nm_mask, row_topk_mask

SHAPES = [(576, 576), (1536, 576), (576, 1536), (192, 576), (7, 13)]


@pytest.mark.parametrize("d_out,d_in", SHAPES)
@pytest.mark.parametrize("rho", [0.3, 0.4, 0.5, 0.6])
@pytest.mark.parametrize("kappa", [0.0, 0.2, 0.3, 1.0])
def test_layer_budget_equals_target_exactly(d_out, d_in, rho, kappa):
    b = layer_budget(d_out, d_in, rho, kappa, granularity="layer")
    kept = math.floor((1 - rho) * d_out * d_in + 1e-9)
    assert b.rank == math.floor(kappa * kept / (d_out + d_in) + 1e-9)
    assert b.params == b.rank * (d_out + d_in) + b.nnz == kept


@pytest.mark.parametrize("d_out,d_in", SHAPES)
@pytest.mark.parametrize("rho,kappa", [(0.5, 0.0), (0.5, 0.3), (0.6, 0.25)])
def test_row_budget_equal_rows_within_one_row_of_target(d_out, d_in, rho, kappa):
    b = layer_budget(d_out, d_in, rho, kappa, granularity="row")
    kept = math.floor((1 - rho) * d_out * d_in + 1e-9)
    assert b.nnz == b.row_nnz * d_out
    assert 0 <= kept - b.params < d_out


def test_official_example_numbers():
    # Llama-3-8B q_proj 4096x4096 at 50% with kappa 0.3: r = floor(0.3*0.5*4096*4096/8192)
    b = layer_budget(4096, 4096, 0.5, 0.3, granularity="row")
    assert b.rank == math.floor(0.3 * 0.5 * 4096 * 4096 / 8192) == 307
    assert b.row_nnz == (4096 * 4096 // 2 - 307 * 8192) // 4096


def test_nm_budget_follows_official_rule():
    nm = parse_nm("2:8")
    b = layer_budget(576, 1536, None, 0.5, nm)
    dense_alloc = 0.25 / 0.5
    assert b.rank == math.floor(0.5 * dense_alloc * 576 * 1536 / (576 + 1536))
    assert b.nnz == 576 * 1536 // 4
    assert implied_nm_compression(nm, 0.5) == pytest.approx(0.5)
    # a consistent compression is accepted, an inconsistent one is an error naming both
    layer_budget(576, 1536, 0.5, 0.5, nm)
    with pytest.raises(BudgetError, match="conflicts"):
        layer_budget(576, 1536, 0.3, 0.5, nm)


def test_parse_nm_keep_convention():
    nm = parse_nm("2:4")
    assert (nm.n, nm.m) == (2, 4) and nm.density == 0.5
    assert parse_nm(None) is None and parse_nm("") is None
    with pytest.raises(BudgetError, match="N:M"):
        parse_nm("2-4")


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_compression_outside_open_interval(bad):
    with pytest.raises(BudgetError, match=r"compression=.*\(0, 1\)"):
        layer_budget(8, 8, bad, 0.0)


@pytest.mark.parametrize("bad", [-0.1, 1.01])
def test_rank_ratio_outside_closed_interval(bad):
    with pytest.raises(BudgetError, match=r"rank_ratio=.*\[0, 1\]"):
        layer_budget(8, 8, 0.5, bad)


def test_n_greater_than_m():
    with pytest.raises(BudgetError, match="N:M=5:4"):
        parse_nm("5:4")


def test_m_not_dividing_width():
    with pytest.raises(BudgetError, match="M=4 does not divide .*d_in=10"):
        layer_budget(8, 10, None, 0.0, "2:4")


def test_budget_keeping_nothing():
    with pytest.raises(BudgetError, match="keeps nothing"):
        layer_budget(2, 2, 0.9, 0.0, granularity="row")


def test_rank_above_min_dimension():
    with pytest.raises(BudgetError, match="rank 40 exceeds min"):
        layer_budget(32, 64, 0.5, 0.0, rank=40)


def test_nm_with_too_much_rank():
    with pytest.raises(BudgetError, match="keeps .* dense parameters"):
        layer_budget(8, 8, None, 0.8, "2:4")


def test_row_topk_keeps_k_per_row():
    s = torch.randn(9, 31)
    m = row_topk_mask(s, 7)
    assert (m.sum(1) == 7).all()
    # the kept entries are the largest of each row
    kept_min = torch.where(m, s, torch.inf).min(1).values
    dropped_max = torch.where(m, -torch.inf, s).max(1).values
    assert (kept_min >= dropped_max).all()


def test_layer_topk_keeps_k_overall():
    s = torch.randn(9, 31)
    m = layer_topk_mask(s, 50)
    assert m.sum() == 50 and s[m].min() >= s[~m].max()


@pytest.mark.parametrize("n,m", [(2, 4), (2, 8), (1, 4), (4, 8)])
def test_nm_mask_keeps_exactly_n_per_group(n, m):
    s = torch.randn(12, 64)
    mask = nm_mask(s, NM(n, m))
    groups = mask.view(12, 64 // m, m)
    assert (groups.sum(-1) == n).all()
    sg = s.view(12, 64 // m, m)
    kept_min = torch.where(groups, sg, torch.inf).min(-1).values
    dropped_max = torch.where(groups, -torch.inf, sg).max(-1).values
    assert (kept_min >= dropped_max).all()


def _perturbed(shape, seed):
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(*shape, generator=g) * torch.exp(torch.randn(shape[1], generator=g))
    return R, R + 0.02 * R.abs().mean() * torch.randn(*shape, generator=g)


@pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.status()}")
@pytest.mark.parametrize("d_out,d_in", SHAPES)
@pytest.mark.parametrize("k", [1, 3, "35%", "-1"])
def test_native_row_threshold_equals_topk_cold_and_warm(d_out, d_in, k):
    k = {"35%": int(0.35 * d_in), "-1": d_in - 1}.get(k, k)
    R, R2 = _perturbed((d_out, d_in), d_out + k)
    S, mask, cut = native.row_topk(R, k)
    assert torch.equal(mask, row_topk_mask(R.abs(), k)) and torch.equal(S, R * mask)
    assert torch.equal(cut, torch.where(mask, R.abs(), torch.inf).min(1).values)
    for moved in (R2, R2 * 3.0, -R2 / 7.0):  # near the old cut, and far from it (every row widens or goes cold)
        S2, mask2, _ = native.row_topk(moved, k, cut)
        assert torch.equal(mask2, row_topk_mask(moved.abs(), k)) and torch.equal(S2, moved * mask2)


@pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.status()}")
def test_native_row_threshold_keeps_k_with_ties_lowest_index_first():
    R = torch.tensor([[3.0, -1.0, 1.0, 1.0, -1.0, 0.5],
                      [0.0, 0.0, 0.0, 0.0, 2.0, 0.0]])
    S, mask, cut = native.row_topk(R, 3)
    assert mask.tolist() == [[True, True, True, False, False, False], [True, True, False, False, True, False]]
    assert S.tolist() == [[3.0, -1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0, 0.0]]
    assert cut.tolist() == [1.0, 0.0]
    S, mask, _ = native.row_topk(R, 3, cut)  # warm from a cut equal to the tied value
    assert mask.sum(1).tolist() == [3, 3] and mask[0, :3].all()


def test_threshold_falls_back_to_topk_follows_the_budget_and_rejects_non_finite(monkeypatch):
    R, R2 = _perturbed((40, 64), 0)
    row = layer_budget(40, 64, 0.6875, 0.0)  # 20 per row
    assert row.row_nnz == 20
    thr = Threshold(row)
    S, mask = thr(R)
    assert torch.equal(mask, row_topk_mask(R.abs(), 20)) and torch.equal(S, R * mask)
    assert torch.equal(thr(R2)[1], row_topk_mask(R2.abs(), 20))
    for other in (layer_budget(40, 64, 0.6875, 0.0, granularity="layer"), layer_budget(40, 64, None, 0.0, "2:4")):
        S, mask = Threshold(other)(R2)
        assert torch.equal(mask, budget_mask(R2.abs(), other)) and torch.equal(S, R2 * mask)
    monkeypatch.setattr(native, "available", lambda: False)
    S, mask = Threshold(row)(R2)
    assert torch.equal(mask, row_topk_mask(R2.abs(), 20))
    monkeypatch.undo()
    if native.available():
        R[3, 5] = float("nan")
        with pytest.raises(BudgetError, match="1 NaN/infinite"):
            Threshold(row)(R)


def test_native_status_names_why_when_off(monkeypatch):
    monkeypatch.setenv("OATS_NATIVE", "0")
    native._load.cache_clear()
    try:
        assert not native.available() and "OATS_NATIVE=0" in native.status()
        with pytest.raises(RuntimeError, match="unavailable"):
            native.row_topk(torch.ones(2, 3), 1)
    finally:
        monkeypatch.undo()
        native._load.cache_clear()
