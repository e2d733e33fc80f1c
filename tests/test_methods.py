"""Per-layer maths: OATS, Wanda, SparseGPT, magnitude, low rank, OWL."""
import pytest
import torch

from baselines.lowrank import lowrank_approx
from baselines.magnitude import magnitude_prune
from baselines.sparsegpt import sparsegpt_prune
from baselines.wanda import wanda_prune
from oats.budget import layer_budget
from oats.allocation import outlier_ratio, owl_sparsities
from oats.methods.oats import TruncatedSVD, oats_decompose, scaled_error
from oats.registry import UnknownMethodError, get_method
from oats.stats import LayerStats, StatisticsError


def correlated_inputs(n: int, d_in: int, seed: int = 0) -> torch.Tensor:
    """Inputs with strongly correlated columns and a few outlier features, like LLM activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=g) / d_in**0.5
    mix += torch.eye(d_in) * 0.3
    X = torch.randn(n, d_in // 4, generator=g) @ torch.randn(d_in // 4, d_in, generator=g) + torch.randn(n, d_in, generator=g) @ mix
    X[:, :4] *= 10.0  # outlier features
    return X


def stats_of(X: torch.Tensor, hessian: bool = False) -> LayerStats:
    st = LayerStats(X.shape[1], ("second_moment", "hessian") if hessian else ("second_moment",))
    st.add(X)
    return st


@pytest.fixture(scope="module")
def layer():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(96, 128, generator=g)
    X = correlated_inputs(512, 128)
    return W, X


def test_oats_rank_zero_equals_wanda_exactly(layer):
    W, X = layer
    d = stats_of(X).column_rms()
    for nm in (None, "2:4"):
        b = layer_budget(*W.shape, None if nm else 0.5, 0.0, nm)
        dec = oats_decompose(W, d, b, iterations=5)
        assert dec.U.shape == (96, 0)
        assert torch.equal(dec.sparse, wanda_prune(W, d, b))
    # through the method objects too
    st = stats_of(X)
    b = layer_budget(*W.shape, 0.5, 0.0)
    a = get_method("oats", rank_ratio=0.0, iterations=3).compress(W, st, b)
    w = get_method("wanda").compress(W, st, b)
    assert torch.equal(a.merged(), w.merged())


@pytest.mark.parametrize("threshold,nm", [("row", None), ("layer", None), ("row", "2:8")])
def test_oats_objective_never_increases(layer, threshold, nm):
    W, X = layer
    d = stats_of(X).column_rms()
    b = layer_budget(*W.shape, None if nm else 0.5, 0.3, nm, threshold)
    dec = oats_decompose(W, d, b, iterations=25, track_objective=True)
    obj = torch.tensor(dec.objective)
    assert len(obj) == 25
    assert (obj[1:] <= obj[:-1] * (1 + 1e-5) + 1e-6).all(), obj
    assert obj[-1] < obj[0]
    # the returned factors reproduce the tracked objective
    W_hat = dec.sparse + dec.U @ dec.V
    assert scaled_error(W, W_hat, d) == pytest.approx(dec.objective[-1], rel=1e-3)


def test_oats_result_respects_budget(layer):
    W, X = layer
    d = stats_of(X).column_rms()
    b = layer_budget(*W.shape, 0.5, 0.3, None, "row")
    dec = oats_decompose(W, d, b, iterations=10)
    assert dec.U.shape == (96, b.rank) and dec.V.shape == (b.rank, 128)
    assert ((dec.sparse != 0).sum(1) == b.row_nnz).all()
    b24 = layer_budget(*W.shape, None, 0.3, "2:8")
    dec = oats_decompose(W, d, b24, iterations=10)
    assert ((dec.sparse != 0).view(96, 16, 8).sum(-1) == 2).all()


def test_oats_beats_wanda_when_weight_has_low_rank_structure(layer):
    """At the same parameter budget, sparse + low rank fits a weight with a strong low-rank part better."""
    W, X = layer
    g = torch.Generator().manual_seed(2)
    W = W + 3 * torch.randn(96, 4, generator=g) @ torch.randn(4, 128, generator=g)
    d = stats_of(X).column_rms()
    wanda_err = scaled_error(W, wanda_prune(W, d, layer_budget(*W.shape, 0.5, 0.0)), d)
    dec = oats_decompose(W, d, layer_budget(*W.shape, 0.5, 0.3), 30)
    assert scaled_error(W, dec.sparse + dec.U @ dec.V, d) < 0.9 * wanda_err


def test_subspace_solver_matches_full_objective(layer):
    W, X = layer
    d = stats_of(X).column_rms()
    b = layer_budget(*W.shape, 0.5, 0.3)
    full = oats_decompose(W, d, b, iterations=30, svd="full", track_objective=True).objective[-1]
    fast = oats_decompose(W, d, b, iterations=30, svd="subspace", track_objective=True).objective[-1]
    assert fast <= full * 1.005


def test_subspace_cold_start_keeps_a_short_loop_at_the_exact_objective():
    """A flat spectrum and few iterations: the random first basis needs its extra power steps."""
    g = torch.Generator().manual_seed(3)
    s = torch.arange(1, 257, dtype=torch.float32).pow(-0.6)
    W = (torch.randn(256, 256, generator=g) * s) @ torch.randn(256, 512, generator=g) / 16
    d = torch.exp(0.7 * torch.randn(512, generator=g))
    b = layer_budget(*W.shape, 0.5, 0.3)

    def final(**svd_kw):
        svd = TruncatedSVD(b.rank, "subspace", generator=torch.Generator().manual_seed(0), **svd_kw)
        return oats_decompose(W, d, b, iterations=4, svd=svd, track_objective=True).objective[-1]

    full = oats_decompose(W, d, b, iterations=4, svd="full", track_objective=True).objective[-1]
    assert final() <= full * 1.002
    assert final(cold_power_iters=0) > final()  # without the cold steps the loop lags behind


def reconstruction_error(X, W, W_hat):
    return float(torch.linalg.norm(X @ W.T - X @ W_hat.T) / torch.linalg.norm(X @ W.T))


@pytest.mark.parametrize("nm", [None, "2:4"])
def test_sparsegpt_beats_magnitude_and_wanda_on_correlated_inputs(layer, nm):
    W, X = layer
    st = stats_of(X, hessian=True)
    d = st.column_rms()
    comp = None if nm else 0.5
    b_row = layer_budget(*W.shape, comp, 0.0, nm, "row")
    b_layer = layer_budget(*W.shape, comp, 0.0, nm, "layer")
    sgpt = sparsegpt_prune(W, st.hessian_matrix(), b_layer, blocksize=32)
    err_s = reconstruction_error(X, W, sgpt)
    err_w = reconstruction_error(X, W, wanda_prune(W, d, b_row))
    err_m = reconstruction_error(X, W, magnitude_prune(W, b_layer))
    assert err_s < err_w and err_s < err_m, (err_s, err_w, err_m)
    assert int((sgpt != 0).sum()) == b_layer.nnz


def test_sparsegpt_nm_pattern(layer):
    W, X = layer
    st = stats_of(X, hessian=True)
    b = layer_budget(*W.shape, None, 0.0, "2:4", "layer")
    out = sparsegpt_prune(W, st.hessian_matrix(), b)
    assert ((out != 0).view(96, 32, 4).sum(-1) == 2).all()


def test_lowrank_is_truncated_svd(layer):
    W, X = layer
    b = layer_budget(*W.shape, 0.5, 1.0, granularity="layer")
    import dataclasses

    b = dataclasses.replace(b, nnz=0)
    dec = lowrank_approx(W, None, b)
    U, s, Vh = torch.linalg.svd(W)
    best = (U[:, :b.rank] * s[:b.rank]) @ Vh[:b.rank]
    assert torch.allclose(dec.U @ dec.V, best, atol=1e-4)
    assert not dec.sparse.any()
    d = stats_of(X).column_rms()
    scaled = lowrank_approx(W, d, b)
    # activation-aware SVD has the lower D-scaled error
    assert scaled_error(W, scaled.U @ scaled.V, d) < scaled_error(W, best, d)


def test_zero_second_moment_columns_are_safe(layer):
    W, X = layer
    X = X.clone()
    X[:, 5] = 0.0
    X[:, 17] = 0.0
    st = stats_of(X)
    assert st.dead_columns() == 2
    for name, kw in [("oats", dict(rank_ratio=0.3, iterations=5)), ("wanda", {}), ("lowrank", {})]:
        m = get_method(name, **kw)
        out = m.compress(W, st, m.budget(*W.shape, 0.5, None))
        assert torch.isfinite(out.merged()).all(), name


def test_nan_statistics_rejected(layer):
    W, X = layer
    X = X.clone()
    X[3, 7] = float("nan")
    st = stats_of(X, hessian=True)
    with pytest.raises(StatisticsError, match="q_proj.*NaN"):
        get_method("wanda").compress(W, st, layer_budget(*W.shape, 0.5), name="q_proj")
    X[3, 7] = float("inf")
    with pytest.raises(StatisticsError, match="NaN/infinite"):
        stats_of(X, hessian=True).hessian_matrix("down_proj")


def test_unknown_method_lists_valid_names():
    with pytest.raises(UnknownMethodError, match="available: lowrank, magnitude, oats, sparsegpt, wanda"):
        get_method("dsnot")
    with pytest.raises(UnknownMethodError, match="no parameter"):
        get_method("oats", rank=3)
    with pytest.raises(ValueError, match="rank_ratio=1.5"):
        get_method("oats", rank_ratio=1.5)


def test_owl_keeps_mean_sparsity_at_target():
    ratios = [0.01, 0.05, 0.02, 0.10, 0.03, 0.07]
    for target in (0.5, 0.6, 0.7):
        sp = owl_sparsities(ratios, target, lam=0.08)
        assert sum(sp) / len(sp) == pytest.approx(target, abs=1e-12)
        assert max(sp) - min(sp) == pytest.approx(0.16)
        # more outliers -> less sparsity
        order = sorted(range(len(ratios)), key=lambda i: ratios[i])
        assert [sp[i] for i in order] == sorted(sp, reverse=True)
    assert owl_sparsities([0.2, 0.2], 0.5) == [0.5, 0.5]
    with pytest.raises(ValueError, match="outside"):
        owl_sparsities(ratios, 0.95, lam=0.1)


def test_outlier_ratio():
    s = torch.ones(100)
    s[:3] = 100.0
    assert outlier_ratio([s[:50], s[50:]], hyper_m=3.0) == pytest.approx(0.03)


def test_subspace_solver_does_not_depend_on_the_global_random_state(layer):
    """Runs resumed from a checkpoint, or run in another order, must give the same factors."""
    W, X = layer
    d = stats_of(X).column_rms()
    b = layer_budget(*W.shape, 0.5, 0.3)
    torch.manual_seed(1)
    first = oats_decompose(W, d, b, iterations=3, svd="subspace")
    torch.manual_seed(2)
    second = oats_decompose(W, d, b, iterations=3, svd="subspace")
    assert torch.equal(first.sparse, second.sparse) and torch.equal(first.U, second.U)
