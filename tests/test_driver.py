"""The sequential driver end to end on tiny models of each architecture."""
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

import oats
from baselines.wanda import wanda_prune
from oats.budget import BudgetError
from oats.layers import CompressedLinear, SplitLinear, load_compressed, save_compressed
from oats.registry import Factors, Method, get_method
from oats.models.adapters import UnsupportedArchitectureError, get_adapter
from oats.capture import capture_inputs, resolve_device, run_block
from oats.checkpoint import CheckpointError, CheckpointMismatchError
from oats.sequential import compress_model
from oats.stats import LayerStats
from contract import METHOD_PARAMS
from tiny_models import TINY, calib_ids


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma3"])
def test_capture_and_block_replay_reproduce_the_model(arch):
    """Replaying captured inputs/kwargs block by block gives the last block's real output."""
    model = TINY[arch]()
    calib = calib_ids(2, 16)
    blocks = get_adapter(model).blocks(model)
    real = []
    h = blocks[-1].register_forward_hook(lambda m, i, o: real.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        for row in calib:
            model(row[None], use_cache=False)
    h.remove()
    inps, kwargs = capture_inputs(model, blocks, calib, torch.device("cpu"), torch.device("cpu"))
    assert inps.shape == (2, 16, 64) and len(kwargs) == len(blocks)
    for i, block in enumerate(blocks):
        run_block(block, inps, kwargs[i], torch.device("cpu"), 1, out=inps)
    assert torch.allclose(inps, torch.cat(real), atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma3"])
@pytest.mark.parametrize("method", list(METHOD_PARAMS))
@pytest.mark.parametrize("pattern", ["50%", "2:4"])
def test_every_method_end_to_end(arch, method, pattern):
    if method == "lowrank" and pattern == "2:4":
        pytest.skip("low rank only has no sparse part to make N:M")
    model = TINY[arch]()
    x = calib_ids(1, 16, seed=5)
    with torch.no_grad():
        dense_logits = model(x).logits
    compression, nm = (0.5, None) if pattern == "50%" else (None, "2:4")
    report = oats.compress(model, calib_ids(), method, compression, nm, progress=False, **METHOD_PARAMS[method])
    totals = report.totals()
    # measured parameter count equals the budget, layer by layer and in total
    assert all(r.params == r.budget_params for r in report.layers)
    assert totals["params"] == totals["budget_params"]
    expected_layers = {"llama": 7, "gemma3": 7, "phi3": 6}[arch] * 2
    assert totals["layers"] == expected_layers
    # under N:M a method with a low-rank part keeps the N:M sparse part and adds its rank on top
    if nm is None or get_method(method, **METHOD_PARAMS[method]).rank_ratio == 0:
        assert 0.49 <= totals["compression"] <= 0.52
    # every linear in every block was replaced and the model still runs
    for block in get_adapter(model).blocks(model):
        assert not any(type(m) is nn.Linear for m in block.modules())
    with torch.no_grad():
        logits = model(x).logits
    assert torch.isfinite(logits).all() and not torch.allclose(logits, dense_logits)
    if nm:
        for m in model.modules():
            if isinstance(m, CompressedLinear):
                d_out, d_in = m.sparse.shape
                assert ((m.sparse != 0).view(d_out, d_in // 4, 4).sum(-1) <= 2).all()


def test_phi3_qkv_is_split_and_gate_up_fused():
    model = TINY["phi3"]()
    report = oats.compress(model, calib_ids(), "oats", 0.5, progress=False, rank_ratio=0.3, iterations=2)
    names = [r.name for r in report.layers if r.block == 0]
    assert names == ["self_attn.o_proj", "self_attn.qkv_proj.q", "self_attn.qkv_proj.k",
                     "self_attn.qkv_proj.v", "mlp.gate_up_proj", "mlp.down_proj"]
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.qkv_proj, SplitLinear)
    assert [p.out_features for p in attn.qkv_proj.parts.values()] == [64, 32, 32]
    assert isinstance(model.model.layers[0].mlp.gate_up_proj, CompressedLinear)


def test_later_blocks_see_compressed_outputs():
    """Block 1 is pruned with statistics of inputs produced by the *compressed* block 0."""
    model = TINY["llama"]()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    calib = calib_ids()
    oats.compress(model, calib, "wanda", 0.5, progress=False)
    blocks = model.model.layers
    stats = LayerStats(64)
    h = blocks[1].self_attn.q_proj.register_forward_pre_hook(lambda m, a: stats.add(a[0]))
    with torch.no_grad():
        for row in calib:
            model(row[None])
    h.remove()
    W = original["model.layers.1.self_attn.q_proj.weight"]
    budget = get_method("wanda").budget(64, 64, 0.5, None)
    expected = wanda_prune(W, stats.column_rms(), budget)
    assert torch.allclose(blocks[1].self_attn.q_proj.sparse, expected)


def test_owl_allocation_end_to_end():
    model = TINY["llama"](layers=4)
    report = oats.compress(model, calib_ids(), "wanda", 0.6, owl=oats.OWLConfig(lam=0.05), progress=False)
    sp = report.owl_sparsity
    assert len(sp) == 4 and sum(sp) / 4 == pytest.approx(0.6) and max(sp) - min(sp) == pytest.approx(0.1)
    per_block = report.to_frame().groupby("block").apply(lambda d: 1 - d.params.sum() / d.dense_params.sum())
    assert per_block.tolist() == pytest.approx(sp, abs=0.02)
    with pytest.raises(BudgetError, match="N:M"):
        oats.compress(TINY["llama"](), calib_ids(), "wanda", None, "2:4", owl=True, progress=False)


def test_dead_input_columns_are_counted():
    model = TINY["llama"]()
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[[3, 9]] = 0.0  # q/k/v of block 0 see two zero columns
    report = oats.compress(model, calib_ids(), "oats", 0.5, progress=False, rank_ratio=0.3, iterations=2)
    dead = {r.name: r.dead_columns for r in report.layers if r.block == 0}
    assert dead["self_attn.q_proj"] == dead["self_attn.k_proj"] == dead["self_attn.v_proj"] == 2
    assert report.totals()["dead_columns"] >= 6
    assert all(torch.isfinite(p).all() for p in model.parameters())


class Boom(RuntimeError):
    pass


def test_checkpoint_resume_after_crash(tmp_path, monkeypatch):
    calib = calib_ids()
    method = get_method("oats", rank_ratio=0.3, iterations=3)
    reference = TINY["llama"](layers=3)
    compress_model(reference, calib, method, 0.5, progress=False)

    calls = {"n": 0}
    real = type(method).compress

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 10:  # block 1, third linear
            raise Boom("simulated crash")
        return real(self, *a, **k)

    monkeypatch.setattr(type(method), "compress", flaky)
    with pytest.raises(Boom):
        compress_model(TINY["llama"](layers=3), calib, method, 0.5, checkpoint_dir=tmp_path, progress=False)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["next_block"] == 1 and len(state["records"]) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block_0000.safetensors", "state.json"]
    monkeypatch.setattr(type(method), "compress", real)

    resumed = TINY["llama"](layers=3)
    report = compress_model(resumed, calib, method, 0.5, checkpoint_dir=tmp_path, progress=False)
    assert len(report.layers) == 21
    x = calib_ids(1, 16, seed=9)
    with torch.no_grad():
        assert torch.allclose(resumed(x).logits, reference(x).logits, atol=1e-4)
    # a finished checkpoint re-runs nothing
    calls["n"] = 0
    monkeypatch.setattr(type(method), "compress", flaky)
    compress_model(TINY["llama"](layers=3), calib, method, 0.5, checkpoint_dir=tmp_path, progress=False)
    assert calls["n"] == 0
    with pytest.raises(CheckpointMismatchError, match="different"):
        compress_model(TINY["llama"](layers=3), calib, method, 0.6, checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize("damage", ["truncated", "missing", "state"])
def test_damaged_checkpoint_block_is_named_and_recomputed(tmp_path, damage, capsys):
    """A block file cut short or deleted is reported by name and recomputed from the last good block, to the
    same weights; an unreadable state.json is a clear error naming it."""
    calib = calib_ids()
    method = get_method("wanda")
    reference = TINY["llama"](layers=3)
    compress_model(reference, calib, method, 0.5, checkpoint_dir=tmp_path, progress=False)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["next_block"] == 3 and sorted(state["checksums"]) == ["0", "1", "2"]
    bad = tmp_path / "block_0001.safetensors"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:1000])
    elif damage == "missing":
        bad.unlink()
    else:
        (tmp_path / "state.json").write_text('{"fingerprint": "')
        with pytest.raises(CheckpointError, match="state.json is unreadable"):
            compress_model(TINY["llama"](layers=3), calib, method, 0.5, checkpoint_dir=tmp_path, progress=False)
        return
    calls = {"n": 0}
    real = type(method).compress

    def counting(self, *a, **k):
        calls["n"] += 1
        return real(self, *a, **k)

    resumed = TINY["llama"](layers=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(method), "compress", counting)
        report = compress_model(resumed, calib, method, 0.5, checkpoint_dir=tmp_path, progress=False)
    out = capsys.readouterr().out
    assert f"{bad}" in out and ("checksum" in out if damage == "truncated" else "missing" in out)
    assert "recomputing from block 1" in out
    assert calls["n"] == 14  # blocks 1 and 2 again, block 0 restored
    assert [r.block for r in report.layers] == [b for b in range(3) for _ in range(7)]
    x = calib_ids(1, 16, seed=9)
    with torch.no_grad():
        assert torch.equal(resumed(x).logits, reference(x).logits)
    assert json.loads((tmp_path / "state.json").read_text())["checksums"] == state["checksums"]


def test_disk_full_while_writing_a_block_is_named_and_resumable(tmp_path, monkeypatch):
    """A checkpoint write that fails (ENOSPC) names the file, keeps the blocks before it, and the same call
    once space is back resumes from that block to the same weights."""
    import errno

    import oats.checkpoint as ckpt_module

    calib, method = calib_ids(), get_method("wanda")
    reference = TINY["llama"](layers=3)
    compress_model(reference, calib, method, 0.5, progress=False)
    real = ckpt_module.save_compressed

    def full_disk(block, path):
        if path.name == "block_0001.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(block, path)

    monkeypatch.setattr(ckpt_module, "save_compressed", full_disk)
    with pytest.raises(CheckpointError, match="block_0001.safetensors .No space left on device.*resume from block 1"):
        compress_model(TINY["llama"](layers=3), calib, method, 0.5, checkpoint_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / "state.json").read_text())["next_block"] == 1
    monkeypatch.setattr(ckpt_module, "save_compressed", real)
    resumed = TINY["llama"](layers=3)
    compress_model(resumed, calib, method, 0.5, checkpoint_dir=tmp_path, progress=False)
    x = calib_ids(1, 16, seed=9)
    with torch.no_grad():
        assert torch.equal(resumed(x).logits, reference(x).logits)


def test_save_load_compressed_model(tmp_path):
    model = TINY["phi3"]()
    oats.compress(model, calib_ids(), "oats", 0.5, progress=False, rank_ratio=0.3, iterations=2)
    path = save_compressed(model, tmp_path / "phi3.safetensors")
    fresh = load_compressed(TINY["phi3"](), path)
    x = calib_ids(1, 16, seed=3)
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, model(x).logits)


def test_unknown_architecture_names_supported_ones():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).eval()
    with pytest.raises(UnsupportedArchitectureError, match="gpt2.*supported: dinov2, gemma3, gemma3_text, llama, phi3, timm_vit, vit"):
        oats.compress(gpt2, calib_ids(), "wanda", 0.5, progress=False)


def test_bad_inputs_fail_before_any_work():
    model = TINY["llama"]()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(BudgetError, match=r"compression=1.2"):
        oats.compress(model, calib_ids(), "wanda", 1.2, progress=False)
    with pytest.raises(BudgetError, match="M=3 does not divide"):
        oats.compress(model, calib_ids(), "wanda", None, "1:3", progress=False)
    with pytest.raises(ValueError, match="token ids"):
        oats.compress(model, torch.randn(2, 8), "wanda", 0.5, progress=False)
    with pytest.raises(ValueError, match="CUDA is not available|not a torch device"):
        resolve_device("cuda:3") if not torch.cuda.is_available() else resolve_device("nonsense")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(type(m) is not CompressedLinear for m in model.modules())


# ---------------------------------------------------------------- allocation and the block-level hook

@pytest.mark.parametrize("method", list(METHOD_PARAMS))
def test_owl_composes_with_every_method(method):
    report = oats.compress(TINY["llama"](layers=3), calib_ids(), method, 0.5, owl=oats.OWLConfig(lam=0.05),
                           progress=False, **METHOD_PARAMS[method])
    sp = report.owl_sparsity
    assert len(sp) == 3 and sum(sp) / 3 == pytest.approx(0.5) and max(sp) - min(sp) == pytest.approx(0.1)
    per_block = report.to_frame().groupby("block").apply(lambda d: 1 - d.params.sum() / d.dense_params.sum())
    assert list(per_block.sort_values().index) == sorted(range(3), key=lambda i: sp[i])


def test_owl_takes_a_pluggable_score():
    wanda = oats.compress(TINY["llama"](layers=3), calib_ids(), "sparsegpt", 0.6, owl=True, progress=False)
    magnitude = oats.compress(TINY["llama"](layers=3), calib_ids(), "sparsegpt", 0.6,
                              owl=oats.OWLConfig(score="magnitude"), progress=False)
    assert magnitude.owl_sparsity != wanda.owl_sparsity
    assert sum(magnitude.owl_sparsity) / 3 == pytest.approx(0.6)
    with pytest.raises(ValueError, match="owl.score='sparsegpt'.*magnitude, wanda"):
        oats.OWLConfig(score="sparsegpt")
    with pytest.raises(ValueError, match="unknown method 'nosuch'"):
        oats.OWLConfig(score="nosuch")


@dataclass
class TargetProbe(Method):
    """A block-level method (test only): Wanda per layer, recording what the driver hands each block."""

    name: ClassVar[str] = "target_probe"
    needs_targets: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def compress(self, W, stats, budget, name="layer"):
        return Factors(wanda_prune(W, stats.column_rms(name), budget))

    def compress_block(self, job):
        self.seen.append((job.index, job.inputs.clone(), job.targets.clone(), job.dense_inputs.clone()))
        super().compress_block(job)
        assert not torch.equal(job.outputs(), job.targets)  # compressed now


def dense_block_io(model, calib):
    """Each block's (inputs, outputs) in the dense model."""
    blocks = get_adapter(model).blocks(model)
    io = {i: ([], []) for i in range(len(blocks))}

    def record(i, inputs, output) -> None:  # returns None: the hook must not replace the output
        io[i][0].append(inputs[0])
        io[i][1].append(output[0] if isinstance(output, tuple) else output)

    hooks = [b.register_forward_hook(lambda m, a, o, i=i: record(i, a, o)) for i, b in enumerate(blocks)]
    with torch.no_grad():
        for row in calib:
            model(row[None], use_cache=False)
    for h in hooks:
        h.remove()
    return {i: (torch.cat(a), torch.cat(b)) for i, (a, b) in io.items()}


def test_block_level_methods_get_the_dense_blocks_outputs(tmp_path, monkeypatch):
    calib = calib_ids()
    dense = dense_block_io(TINY["llama"](layers=3), calib)
    probe = TargetProbe()
    compress_model(TINY["llama"](layers=3), calib, probe, 0.5, progress=False)
    assert [i for i, *_ in probe.seen] == [0, 1, 2]
    for i, inputs, targets, dense_inputs in probe.seen:
        assert torch.allclose(targets, dense[i][1], atol=1e-5)  # the dense block on the dense stream
        assert torch.allclose(dense_inputs, dense[i][0], atol=1e-5)
        assert torch.allclose(inputs, dense[i][0], atol=1e-5) == (i == 0)  # later inputs are compressed
    # a run killed after block 0 resumes with the same dense stream (restored blocks are replayed dense first)
    crashing = TargetProbe()
    real = TargetProbe.compress_block

    def crash_at_block_1(self, job):
        if job.index == 1:
            raise RuntimeError("killed")
        real(self, job)

    monkeypatch.setattr(TargetProbe, "compress_block", crash_at_block_1)
    with pytest.raises(RuntimeError, match="killed"):
        compress_model(TINY["llama"](layers=3), calib, crashing, 0.5, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(TargetProbe, "compress_block", real)
    resumed = TargetProbe()
    compress_model(TINY["llama"](layers=3), calib, resumed, 0.5, checkpoint_dir=tmp_path, progress=False)
    assert [i for i, *_ in resumed.seen] == [1, 2]
    for (_, inp_a, tgt_a, den_a), (_, inp_b, tgt_b, den_b) in zip(probe.seen[1:], resumed.seen):
        assert torch.equal(tgt_a, tgt_b) and torch.equal(inp_a, inp_b) and torch.equal(den_a, den_b)


def test_dense_matching_reconstruction_stays_closer_to_the_dense_model():
    """The reconstruction method with match=dense (the block-level hook: dense inputs and targets) fits
    each layer to the dense model's output, so errors of earlier blocks are compensated, not carried."""
    calib, x = calib_ids(8, 32), calib_ids(4, 32, seed=7)
    with torch.no_grad():
        dense = TINY["llama"](layers=4)(x).logits
    errors = {}
    for match in ("layer", "dense"):
        model = TINY["llama"](layers=4)
        oats.compress(model, calib, "hassle", 0.7, progress=False, match=match, alternations=3, rank_ratio=0.1)
        with torch.no_grad():
            errors[match] = float((model(x).logits - dense).norm() / dense.norm())
    assert errors["dense"] < 0.95 * errors["layer"], errors


def test_dense_target_is_the_weight_when_both_streams_agree():
    from oats.methods.hassle import dense_target

    g = torch.Generator().manual_seed(3)
    X = torch.randn(300, 24, generator=g)
    W = torch.randn(16, 24, generator=g)
    H = X.T @ X * (2 / 300)
    assert torch.allclose(dense_target(W, H, H, 1e-8), W, atol=1e-3)
    Xd = X + 0.1 * torch.randn(300, 24, generator=g)  # the dense stream differs: the target absorbs it
    Wt = dense_target(W, H, X.T @ Xd * (2 / 300), 1e-8)
    assert torch.linalg.norm(X @ Wt.T - Xd @ W.T) < torch.linalg.norm(X @ W.T - Xd @ W.T)


@pytest.mark.parametrize("arch", list(TINY))
def test_statistics_pass_stops_after_the_last_hooked_input_with_the_same_sums(arch):
    """collect_stats ends each forward once every hooked input of it is seen (the first batch runs whole):
    the sums equal those of whole forwards bit for bit, and the block's last linear runs only once."""
    from oats.models.adapters import text_config
    from oats.stats import collect_stats

    model = TINY[arch](layers=1).eval()
    adapter = get_adapter(model)
    block = adapter.blocks(model)[0]
    units = adapter.units(block, text_config(model))
    inps, kwargs = capture_inputs(model, adapter.blocks(model), calib_ids(4, 16), torch.device("cpu"),
                                  torch.device("cpu"))
    needs = ("second_moment", "hessian")
    whole, handles = {}, []
    for u in units:
        lin = block.get_submodule(u.path)
        st = whole[u.path] = LayerStats(lin.in_features, needs)
        handles.append(lin.register_forward_hook(lambda m, i, o, st=st: st.add(i[0])))
    run_block(block, inps, kwargs[0], torch.device("cpu"), 1)
    for h in handles:
        h.remove()
    last = block.get_submodule(units[-1].path)
    ran = []
    h = last.register_forward_hook(lambda *a: ran.append(1))
    early = collect_stats(block, units, inps, kwargs[0], torch.device("cpu"), 1, needs)
    h.remove()
    assert len(ran) == 1  # only the first of the 4 batches ran the last linear
    for path, st in whole.items():
        assert early[path].n == st.n and all(torch.equal(early[path].sums[k], st.sums[k]) for k in st.sums), path


@pytest.mark.parametrize("method,params", [("oats", {"iterations": 6}), ("sparsegpt", {}), ("hassle", {"alternations": 2})])
def test_linears_compressed_two_at_a_time_equal_one_at_a_time(method, params):
    """Two layer workers (one intra-op thread each) give the weights and records of one worker with one
    thread, bit for bit, on fused and split linears alike; the profile gets the workers' phases."""
    from oats.profile import Profile

    threads = torch.get_num_threads()
    results = []
    try:
        for workers, intra in ((1, 1), (2, 2)):
            torch.set_num_threads(intra)
            model = TINY["phi3"](layers=2).eval()  # fused qkv (split parts) and gate_up
            with Profile() as prof:
                report = compress_model(model, calib_ids(4, 16), get_method(method, **params), 0.5,
                                        progress=False, layer_workers=workers)
            assert torch.get_num_threads() == intra  # restored after the block's workers
            results.append((model.state_dict(), [(r.block, r.name, r.params) for r in report.layers], prof.rows))
    finally:
        torch.set_num_threads(threads)
    (one, rec_one, _), (two, rec_two, rows) = results
    assert rec_one == rec_two and one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one), [k for k in one if not torch.equal(one[k], two[k])]
    if method == "oats":
        assert rows["oats svd"]["calls"] == 6 * len(rec_two)  # from the worker threads, every one counted


def test_layer_workers_are_automatic_for_small_layers_and_checked():
    from oats.sequential import SMALL_LAYER, layer_workers_for

    model = TINY["llama"](layers=1)
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    from oats.models.adapters import text_config
    plan = [adapter.units(b, text_config(model)) for b in blocks]
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert layer_workers_for(blocks, plan, cpu, None) == 2
        assert layer_workers_for(blocks, plan, torch.device("meta"), None) == 1  # not a CPU
        assert layer_workers_for(blocks, plan, cpu, 3) == 3
        torch.set_num_threads(1)
        assert layer_workers_for(blocks, plan, cpu, None) == 1
    finally:
        torch.set_num_threads(threads)
    assert max(b.get_submodule(u.path).weight.numel() for b, us in zip(blocks, plan) for u in us) <= SMALL_LAYER
    with pytest.raises(ValueError, match="layer_workers=0 must be a positive integer"):
        layer_workers_for(blocks, plan, cpu, 0)
    from oats.runtime import RuntimeSettingError, settings
    with pytest.raises(RuntimeSettingError, match="runtime.layer_workers='2' must be a positive integer or null"):
        settings({"layer_workers": "2"})
