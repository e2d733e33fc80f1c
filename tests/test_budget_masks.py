"""Budget arithmetic and masks."""
import math

import pytest
import torch

from oats.budget import NM, BudgetError, implied_nm_compression, layer_budget, parse_nm
from oats.masks import layer_topk_mask, nm_mask, row_topk_mask

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
