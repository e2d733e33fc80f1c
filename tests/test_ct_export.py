"""Sparse-only models saved in compressed-tensors' sparse-bitmask format load with that library."""
import importlib.util

import pytest
import torch

import oats
from oats.ct_export import save_compressed_tensors
from oats.layers import iter_compressed
from tiny_models import calib_ids, tiny_llama


def _ct_with_sparsity():
    if importlib.util.find_spec("compressed_tensors") is None:
        return False
    from importlib.metadata import version

    major, minor = (int(v) for v in version("compressed-tensors").split(".")[:2])
    return (major, minor) < (0, 13)  # later releases dropped the sparse compressors


needs_ct = pytest.mark.skipif(not _ct_with_sparsity(), reason="compressed-tensors<0.13 not installed (the speed "
                              "extra: `pip install -c constraints.txt -e '.[speed]'`)")


@pytest.mark.parametrize("method,nm", [("wanda", None), ("magnitude", "2:4")])
@needs_ct
def test_sparse_model_loads_with_compressed_tensors(tmp_path, method, nm):
    from compressed_tensors.compressors import ModelCompressor
    from transformers import AutoModelForCausalLM

    model = tiny_llama()
    oats.compress(model, calib_ids(), method=method, compression=0.5, nm=nm)
    folder = save_compressed_tensors(model, tmp_path / "ct")
    cfg = __import__("json").loads((folder / "config.json").read_text())["quantization_config"]["sparsity_config"]
    assert cfg["format"] == "sparse-bitmask" and cfg["sparsity_structure"] == (nm or "unstructured")
    assert cfg["global_sparsity"] == pytest.approx(0.5, abs=0.01)
    compressor = ModelCompressor.from_pretrained(str(folder))
    fresh = AutoModelForCausalLM.from_config(model.config)
    compressor.decompress(str(folder), fresh)
    got = fresh.state_dict()
    for name, m in iter_compressed(model):
        assert torch.equal(got[f"{name}.weight"], m.sparse), name
    ids = calib_ids(1, 12, seed=2)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(ids).logits, model(ids).logits, atol=1e-5)


def test_low_rank_layers_and_existing_folders_are_refused(tmp_path):
    model = tiny_llama()
    oats.compress(model, calib_ids(), method="oats", compression=0.5, iterations=2)
    with pytest.raises(ValueError, match="has low-rank factors .*oats.save_compressed"):
        save_compressed_tensors(model, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()
    (tmp_path / "there").mkdir()
    with pytest.raises(FileExistsError, match="there exists"):
        save_compressed_tensors(model, tmp_path / "there")
    with pytest.raises(ValueError, match="no compressed layers"):
        save_compressed_tensors(tiny_llama(), tmp_path / "dense")
