"""Models on disk (load=lazy / load=stream): the same weights, compression and perplexity as the whole model
in memory, block by block; a streamed model is never whole in memory; bad weight files are named."""
import json

import pytest
import torch
from safetensors.torch import save_file

from oats.allocation import OWLConfig
from oats.config import RunConfig
from oats.eval.blockwise import blockwise_window_nll
from oats.evaluations import ConfigError
from oats.models.base import ModelNotAvailableError
from oats.models.lazy import WeightFileError, disk_weights, load_lazy
from oats.registry import get_method
from oats.sequential import compress_model
from tiny_models import TINY, calib_ids


def save_folder(model, folder):
    model.save_pretrained(folder)  # config.json + model.safetensors (tied head left out)
    return folder


@pytest.fixture(params=["llama", "gemma3"])
def folder(request, tmp_path):
    return save_folder(TINY[request.param](layers=3), tmp_path / "model")


def is_meta(module) -> bool:
    return all(p.device.type == "meta" for p in module.parameters())


def test_lazy_model_loads_the_same_weights_block_by_block(folder):
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(folder).eval()
    lazy = load_lazy(folder, torch.float32)
    weights = disk_weights(lazy)
    blocks = lazy.model.layers
    assert all(is_meta(b) for b in blocks) and not is_meta(lazy.model.embed_tokens)
    tied = eager.lm_head.weight is eager.model.embed_tokens.weight  # Gemma-3 ties them, this Llama does not
    assert (lazy.lm_head.weight is lazy.model.embed_tokens.weight) == tied
    weights.load(1, blocks[1])
    assert not is_meta(blocks[1]) and is_meta(blocks[0])
    weights.load_all(lazy)
    reference = eager.state_dict()
    assert set(lazy.state_dict()) == set(reference)
    assert all(torch.equal(v, reference[k]) for k, v in lazy.state_dict().items())


@pytest.mark.parametrize("method,owl", [("oats", False), ("wanda", True), ("sparsegpt", False)])
def test_lazy_and_streamed_compression_equal_the_eager_one(folder, tmp_path, method, owl):
    """Bit-identical compressed weights (lazy) and block-by-block NLL (lazy, stream), OWL's dense pass included;
    a streamed model ends with every block released, the checkpoint being the compressed model."""
    from transformers import AutoModelForCausalLM

    calib, windows = calib_ids(), calib_ids(3, 24, seed=5)
    m = get_method(method, **({"rank_ratio": 0.3, "iterations": 3} if method == "oats" else {}))
    owl_cfg = OWLConfig(lam=0.05) if owl else None
    eager = AutoModelForCausalLM.from_pretrained(folder).eval()
    compress_model(eager, calib, m, 0.5, owl=owl_cfg, progress=False)
    expected = blockwise_window_nll(eager, windows)
    for mode in ("lazy", "stream"):
        model = load_lazy(folder, torch.float32, streaming=mode == "stream")
        report = compress_model(model, calib, m, 0.5, owl=owl_cfg, checkpoint_dir=tmp_path / mode, progress=False)
        assert len(report.layers) == 21
        if mode == "lazy":
            reference = eager.state_dict()
            assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
        else:
            assert all(is_meta(b) for b in model.model.layers)
        assert torch.equal(blockwise_window_nll(model, windows), expected)
        if mode == "stream":
            assert all(is_meta(b) for b in model.model.layers)  # evaluated and released again
            assert is_meta(model.model.embed_tokens) and is_meta(model.lm_head)  # read for each pass only


def test_released_blocks_hand_the_heap_back(folder, tmp_path, monkeypatch):
    """A streamed pass trims the allocator's heap after every block it releases (measured without: the
    block-by-block evaluation of a 14-block model grew by ~110 MiB per block)."""
    import oats.models.lazy as lazy

    trims = []
    monkeypatch.setattr(lazy, "trim_heap", lambda: trims.append(1) or True)
    model = load_lazy(folder, torch.float32, streaming=True)
    blockwise_window_nll(model, calib_ids(2, 24, seed=5))
    assert len(trims) == 3 and all(is_meta(b) for b in model.model.layers)
    trims.clear()
    blockwise_window_nll(load_lazy(folder, torch.float32), calib_ids(2, 24, seed=5))  # lazy: blocks stay
    assert trims == []


def test_streamed_run_resumes_from_its_checkpoint(folder, tmp_path, monkeypatch):
    calib, windows = calib_ids(), calib_ids(2, 24, seed=5)
    method = get_method("wanda")
    full = load_lazy(folder, torch.float32, streaming=True)
    compress_model(full, calib, method, 0.5, checkpoint_dir=tmp_path / "full", progress=False)
    expected = blockwise_window_nll(full, windows)

    real, calls = type(method).compress, {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 10:  # block 1
            raise RuntimeError("simulated crash")
        return real(self, *a, **k)

    monkeypatch.setattr(type(method), "compress", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        compress_model(load_lazy(folder, torch.float32, streaming=True), calib, method, 0.5,
                       checkpoint_dir=tmp_path / "run", progress=False)
    monkeypatch.setattr(type(method), "compress", real)
    resumed = load_lazy(folder, torch.float32, streaming=True)
    compress_model(resumed, calib, method, 0.5, checkpoint_dir=tmp_path / "run", progress=False)
    assert torch.equal(blockwise_window_nll(resumed, windows), expected)
    for i in range(3):
        assert (tmp_path / "run" / f"block_{i:04d}.safetensors").read_bytes() == \
            (tmp_path / "full" / f"block_{i:04d}.safetensors").read_bytes()


def test_bad_weight_folders_are_named(tmp_path):
    model = TINY["llama"](layers=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    model.config.save_pretrained(empty)
    with pytest.raises(ModelNotAvailableError, match=f"{empty} holds no .safetensors"):
        load_lazy(empty, torch.float32)

    truncated = save_folder(model, tmp_path / "truncated")
    shard = truncated / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(WeightFileError, match=f"{shard}.*truncated or damaged"):
        load_lazy(truncated, torch.float32)

    quantised = save_folder(model, tmp_path / "int8")
    tensors = {k: v.to(torch.int8) if "layers.0.mlp" in k else v for k, v in model.state_dict().items()}
    save_file(tensors, quantised / "model.safetensors")
    lazy = load_lazy(quantised, torch.float32)  # outside the blocks: fine
    with pytest.raises(WeightFileError, match="layers.0.mlp.* stored as torch.int8"):
        disk_weights(lazy).load(0, lazy.model.layers[0])

    missing = save_folder(model, tmp_path / "missing")
    save_file({k: v for k, v in tensors.items() if "layers.1.input_layernorm" not in k},
              missing / "model.safetensors")
    lazy = load_lazy(missing, torch.float32)
    with pytest.raises(WeightFileError, match="model.layers.1.input_layernorm.weight"):
        disk_weights(lazy).load(1, lazy.model.layers[1])

    with pytest.raises(ValueError, match="checkpoint_dir"):
        compress_model(load_lazy(save_folder(model, tmp_path / "ok"), torch.float32, streaming=True), calib_ids(),
                       "wanda", 0.5, progress=False)


def test_tensor_file_reads_what_safetensors_reads(tmp_path):
    from safetensors import safe_open

    from oats.io import TensorFile

    gen = torch.Generator().manual_seed(0)
    tensors = {"f32": torch.randn(3, 5, generator=gen), "bf16": torch.randn(7, generator=gen).bfloat16(),
               "f16": torch.randn(2, 2, 2, generator=gen).half(), "f64": torch.randn(4, generator=gen).double(),
               "i64": torch.arange(6).view(2, 3), "u8": torch.arange(9, dtype=torch.uint8), "bool": torch.rand(5) > 0.5,
               "scalar": torch.tensor(2.5), "empty": torch.empty(0, 4)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, path, metadata={"k": "v"})
    with TensorFile(path) as mine, safe_open(str(path), framework="pt") as ref:
        assert sorted(mine.keys()) == sorted(ref.keys()) and mine.metadata() == ref.metadata() == {"k": "v"}
        for key in ref.keys():
            got, want = mine.get_tensor(key), ref.get_tensor(key)
            assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), key
        with pytest.raises(KeyError, match=f"{path} has no tensor nope"):
            mine.get_tensor("nope")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-3])  # the last tensor's bytes run past the end
    with pytest.raises(OSError, match=f"{cut}: tensor .* the file is truncated"):
        TensorFile(cut)
    cut.write_bytes(data[:5])
    with pytest.raises(OSError, match=f"{cut}: 5 bytes, too short"):
        TensorFile(cut)
    cut.write_bytes(data[:100])
    with pytest.raises(OSError, match=f"{cut}: header of .* truncated or not a safetensors file"):
        TensorFile(cut)


def run_config(**over):
    cfg = {"model": {"name": "tiny-random-llama", "dtype": "float32"}, "method": {"name": "wanda"},
           "compression": 0.5, "data": {"source": "calib/wiki_vital_en.txt", "nsamples": 4, "seqlen": 64, "style": "concat", "seed": 42},
           "eval": {"perplexity": {"source": "wikitext2", "seqlen": 64, "max_windows": 2}}, "device": "cpu"}
    return {**cfg, **over}


def test_load_setting_is_checked_before_any_work():
    assert RunConfig.parse(run_config(load="stream"))
    with pytest.raises(ConfigError, match="load='mmap'.*eager, lazy, stream"):
        RunConfig.parse(run_config(load="mmap"))
    with pytest.raises(ConfigError, match="eval.lm_eval needs the whole model"):
        RunConfig.parse(run_config(load="stream", eval={"perplexity": {"seqlen": 64},
                                                        "lm_eval": [{"tasks": ["piqa_local"]}]}))
    with pytest.raises(ConfigError, match="keep checkpoint=true"):
        RunConfig.parse(run_config(load="stream", checkpoint=False))
    with pytest.raises(ConfigError, match="keep checkpoint=true"):
        RunConfig.parse(run_config(load="stream", save_model=True))
    RunConfig.parse(run_config(load="lazy", eval={"lm_eval": [{"tasks": ["piqa_local"]}]}))  # lazy: whole model ok


def test_streamed_pipeline_run_equals_the_eager_one(tmp_path):
    from oats.pipeline import run

    results = {}
    for load in ("eager", "stream"):
        results[load] = run(run_config(load=load, progress=False), tmp_path / load)
    eager, stream = (results[k]["metrics"][0] for k in ("eager", "stream"))
    assert stream["value"] == eager["value"] and stream["blockwise"] and not eager["blockwise"]
    assert json.loads((tmp_path / "stream" / "checkpoint" / "state.json").read_text())["next_block"] == 2


def in_file_mapping(model, file) -> int:
    """How many of the model's parameters point into a memory mapping of ``file`` (/proc/self/maps)."""
    ranges = [tuple(int(x, 16) for x in line.split()[0].split("-"))
              for line in open("/proc/self/maps") if line.rstrip().endswith(str(file))]
    return sum(any(a <= p.data_ptr() < b for a, b in ranges) for p in model.parameters())


def test_eager_load_owns_its_memory_and_keeps_ties(folder):
    """own_memory (load_pretrained's last step) copies the weights out of the memory-mapped file, so a replaced
    layer frees its weight: same values, tied embeddings still one tensor, no parameter left in the mapping."""
    from transformers import AutoModelForCausalLM

    from oats.models.pretrained import own_memory

    file = (folder / "model.safetensors").resolve()
    mapped, owned = AutoModelForCausalLM.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    own_memory(owned)
    assert in_file_mapping(mapped, file) > 0  # what from_pretrained gives: the check can see it
    assert in_file_mapping(owned, file) == 0
    reference = mapped.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in owned.state_dict().items())
    assert (owned.lm_head.weight is owned.model.embed_tokens.weight) == \
        (mapped.lm_head.weight is mapped.model.embed_tokens.weight)


def test_own_memory_leaves_tensors_outside_a_file_mapping_intact():
    """Only pages of a weight file are dropped: a buffer sharing ordinary (anonymous) memory with a parameter
    keeps its values when the parameter is copied first."""
    from torch import nn

    from oats.models.pretrained import own_memory

    module = nn.Linear(256, 256, bias=False)  # 256 KiB: whole pages inside the storage
    with torch.no_grad():
        module.weight.copy_(torch.arange(256 * 256, dtype=torch.float32).view(256, 256))
    module.register_buffer("alias", module.weight.data.view(-1))  # same storage, copied after the weight
    expected = module.weight.detach().clone()
    own_memory(module)
    assert torch.equal(module.weight, expected)
    assert torch.equal(module.alias, expected.view(-1))
