"""Layer-level regression: every smollm2_ci method on fixed synthetic layers, against a tight reference.

The reference (results/expected/layers.yaml) was measured under every runtime of repeat=machines and
with last-bit perturbations of the layers; the tolerance follows from that spread by its rule. A
change to a method's maths moves these numbers by far more than that.
"""
import numpy as np
import torch

from reproduce.layer_regression import LAYERS, check, measure, synthetic_layer


def test_every_method_matches_its_layer_reference():
    table, orderings, md = check(measure())
    print(md)
    assert (table.status == "missing").sum() == 0
    assert (table.status == "pass").sum() == len(table), table[table.status != "pass"].to_string()
    assert len(orderings) and (orderings.status == "pass").all(), orderings[orderings.status != "pass"].to_string()


def test_the_check_catches_a_small_change_in_a_method(monkeypatch):
    """Keeping 0.5% fewer weights in Wanda's rows is a regression the reference must see."""
    import baselines.wanda as wanda_module

    real = wanda_module.wanda_prune

    def worse(W, d, budget):
        out = real(W, d, budget)
        k = max(1, int(0.005 * W.shape[1]))
        scores = out.abs() * d
        scores[out == 0] = float("inf")
        drop = torch.topk(scores, k, dim=1, largest=False).indices
        return out.scatter(1, drop, 0.0)

    monkeypatch.setattr(wanda_module, "wanda_prune", worse)
    table, _, _ = check(measure())
    wanda = table[table.row == "Wanda"]
    assert (wanda.status == "fail").all() and (table[table.row != "Wanda"].status == "pass").all()


def test_synthetic_layers_are_seeded_and_ulp_perturbations_are_one_ulp():
    name, d_out, d_in = LAYERS[0]
    W, X = synthetic_layer(d_out, d_in)
    W2, X2 = synthetic_layer(d_out, d_in)
    assert torch.equal(W, W2) and torch.equal(X, X2) and W.dtype == torch.float32
    Wp, Xp = synthetic_layer(d_out, d_in, ulp_seed=0)
    for a, b in ((W, Wp), (X, Xp)):
        steps = np.abs(a.numpy().view(np.int32).astype(np.int64) - b.numpy().view(np.int32).astype(np.int64))
        assert steps.max() == 1 and 0.5 < (steps == 1).mean() < 0.8
