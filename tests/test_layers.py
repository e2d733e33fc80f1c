"""The compressed layer module: forward, merge, parameter count, save/load."""
import pytest
import torch
from torch import nn

from oats.layers import CompressedLinear, SplitLinear, load_compressed, merge_all, save_compressed, set_terms


def random_compressed(d_out=24, d_in=40, r=5, bias=True) -> CompressedLinear:
    S = torch.randn(d_out, d_in) * (torch.rand(d_out, d_in) < 0.3)
    return CompressedLinear(S, torch.randn(d_out, r), torch.randn(r, d_in), torch.randn(d_out) if bias else None)


def test_forward_is_sparse_plus_lowrank():
    m = random_compressed()
    x = torch.randn(3, 7, 40)
    expected = x @ m.sparse.T + (x @ m.V.T) @ m.U.T + m.bias
    assert torch.allclose(m(x), expected, atol=1e-5)


def test_merge_equals_factored_forward():
    for bias in (True, False):
        m = random_compressed(bias=bias)
        lin = m.merge()
        assert isinstance(lin, nn.Linear) and (lin.bias is not None) == bias
        x = torch.randn(5, 40)
        assert torch.allclose(lin(x), m(x), atol=1e-5)
    split = SplitLinear({"q": random_compressed(8), "k": random_compressed(4), "v": random_compressed(4)})
    x = torch.randn(2, 40)
    assert split(x).shape == (2, 16)
    assert torch.allclose(split.merge()(x), split(x), atol=1e-5)


def test_param_count():
    m = random_compressed(r=5)
    assert m.num_params() == int((m.sparse != 0).sum()) + 24 * 5 + 5 * 40 + 24
    assert m.num_params(include_bias=False) == m.num_params() - 24
    assert CompressedLinear(torch.zeros(3, 4)).num_params() == 0


def test_terms_can_be_switched_off():
    m = random_compressed(bias=False)
    x = torch.randn(2, 40)
    set_terms(m, sparse=False)
    assert torch.allclose(m(x), (x @ m.V.T) @ m.U.T, atol=1e-5)
    set_terms(m, lowrank=False)
    assert torch.allclose(m(x), x @ m.sparse.T, atol=1e-5)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(40, 24)
        self.b = nn.Linear(40, 16)


def test_save_load_round_trip(tmp_path):
    net = Net()
    net.a = random_compressed()
    net.b = SplitLinear({"q": random_compressed(8, bias=False), "kv": random_compressed(8, r=0, bias=False)})
    path = save_compressed(net, tmp_path / "model.safetensors")
    fresh = load_compressed(Net(), path)
    assert isinstance(fresh.a, CompressedLinear) and isinstance(fresh.b, SplitLinear)
    x = torch.randn(3, 40)
    assert torch.equal(fresh.a(x), net.a(x)) and torch.equal(fresh.b(x), net.b(x))
    assert fresh.b.parts["kv"].rank == 0
    merged = merge_all(fresh)
    assert isinstance(merged.a, nn.Linear) and torch.allclose(merged.b(x), net.b(x), atol=1e-5)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no compressed checkpoint"):
        load_compressed(Net(), tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="no compressed layers"):
        save_compressed(Net(), tmp_path / "x.safetensors")


def test_compact_save_is_smaller_and_loads_identically(tmp_path):
    """The bitmask format (default) and the dense one give the same modules; OATS-like layers at 50%
    (35% of the weights in S, 15% in the factors) take about half their dense fp32 size."""
    torch.manual_seed(0)
    W = torch.randn(64, 96)
    S = W * (torch.rand(64, 96) < 0.35)
    S[3] = 0.0  # an empty row
    S[5] = torch.randn(96)  # a full row
    r = int(0.15 * 64 * 96 / (64 + 96))
    net = Net()
    net.a = CompressedLinear(S, torch.randn(64, r), torch.randn(r, 96), torch.randn(64))
    net.b = SplitLinear({"q": random_compressed(8, bias=False), "kv": random_compressed(8, r=0, bias=False)})
    compact = save_compressed(net, tmp_path / "compact.safetensors")
    dense = save_compressed(net, tmp_path / "dense.safetensors", compact=False)
    from safetensors import safe_open

    with safe_open(str(compact), framework="pt") as f:
        assert "a.sparse.bitmask" in f.keys() and "a.sparse" not in f.keys()
    for path in (compact, dense):
        fresh = load_compressed(Net(), path)
        assert torch.equal(fresh.a.sparse, net.a.sparse) and torch.equal(fresh.a.U, net.a.U)
        assert torch.equal(fresh.b.parts["kv"].sparse, net.b.parts["kv"].sparse)
    a_bytes = 4 * 64 * 96
    from oats.layers import compressed_state

    tensors, _ = compressed_state(net, compact=True)
    a_stored = sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith("a.") and k != "a.bias")
    assert a_stored <= 0.6 * a_bytes, a_stored / a_bytes
    assert compact.stat().st_size < dense.stat().st_size


def test_compact_save_keeps_bf16_values(tmp_path):
    net = Net()
    net.a = random_compressed().to(torch.bfloat16)
    net.b = random_compressed(16, bias=False).to(torch.bfloat16)
    path = save_compressed(net, tmp_path / "bf16.safetensors")
    fresh = load_compressed(Net().to(torch.bfloat16), path)
    assert fresh.a.sparse.dtype == torch.bfloat16 and torch.equal(fresh.a.sparse, net.a.sparse)
