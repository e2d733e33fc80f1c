"""What every registered method must satisfy, checked for each row of the contract table (tests/contract.py).

The budget exactly (rank, nonzeros per row or per layer, N:M groups); inputs that were never active;
the compressed layer's forward equal to its merged weight; a save/load round trip through the driver
that gives the same logits; bad parameters refused naming the key. A method registered without a
contract row fails the first test.
"""
import pytest
import torch

import oats
from contract import CONTRACT
from oats.budget import parse_nm
from oats.layers import CompressedLinear, iter_compressed, load_compressed, save_compressed
from oats.registry import UnknownMethodError, discover, get_method
from oats.stats import STATISTICS, LayerStats
from tiny_models import TINY, calib_ids

SETTINGS = {"50%": (0.5, None), "2:4": (None, "2:4")}


def cases():
    for name, row in sorted(CONTRACT.items()):
        for label, setting in SETTINGS.items():
            if setting[1] is None or row.nm:
                yield pytest.param(name, *setting, id=f"{name}-{label}")


@pytest.fixture(scope="module")
def layer():
    g = torch.Generator().manual_seed(7)
    W = torch.randn(48, 64, generator=g)
    X = torch.randn(256, 64, generator=g) @ torch.randn(64, 64, generator=g) / 8
    X[:, 3] = 0.0  # an input column that is never active
    stats = LayerStats(64, tuple(STATISTICS))
    stats.add(X)
    return W, X, stats


def test_every_registered_method_has_a_contract_row():
    assert set(CONTRACT) == set(discover()), "add a row to tests/contract.py for every registered method"


@pytest.mark.parametrize("name,compression,nm", list(cases()))
def test_the_budget_is_met_exactly(layer, name, compression, nm):
    W, _, stats = layer
    method = get_method(name, **CONTRACT[name].params)
    budget = method.budget(*W.shape, compression, parse_nm(nm))
    f = method.compress(W, stats, budget, name="layer")
    rank = 0 if f.U is None else f.U.shape[1]
    assert rank == budget.rank and (f.V is None or f.V.shape == (rank, W.shape[1]))
    kept = f.sparse != 0
    if budget.row_nnz is not None:
        assert (kept.sum(1) == budget.row_nnz).all()
    else:
        assert int(kept.sum()) == budget.nnz
    assert int(kept.sum()) + rank * sum(W.shape) == budget.params
    if budget.nm is not None:
        n, m = budget.nm.n, budget.nm.m
        assert (kept.view(W.shape[0], -1, m).sum(-1) <= n).all()
    assert torch.isfinite(f.merged()).all()  # the never-active column neither breaks nor poisons it


@pytest.mark.parametrize("name,compression,nm", list(cases()))
def test_forward_equals_the_merged_weight(layer, name, compression, nm):
    W, X, stats = layer
    method = get_method(name, **CONTRACT[name].params)
    f = method.compress(W, stats, method.budget(*W.shape, compression, parse_nm(nm)))
    bias = torch.randn(W.shape[0])
    cl = CompressedLinear(f.sparse, f.U, f.V, bias)
    assert torch.allclose(cl(X), X @ cl.merged_weight().T + bias, atol=1e-4, rtol=1e-4)
    assert torch.equal(cl.merge().weight, cl.merged_weight())


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_save_load_round_trip_through_the_driver(tmp_path, name):
    model = TINY["llama"]()
    oats.compress(model, calib_ids(), name, 0.5, progress=False, **CONTRACT[name].params)
    assert all(isinstance(m, CompressedLinear) for _, m in iter_compressed(model))
    path = save_compressed(model, tmp_path / f"{name}.safetensors")
    fresh = load_compressed(TINY["llama"](), path)
    x = calib_ids(1, 16, seed=3)
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, model(x).logits)


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_bad_parameters_are_refused_naming_the_key(name):
    for key, value in CONTRACT[name].bad.items():
        with pytest.raises(ValueError, match=rf"{key}={value!r}"):
            get_method(name, **{key: value})
    with pytest.raises(UnknownMethodError, match=r"no parameter\(s\) \['bogus'\]"):
        get_method(name, bogus=1)
