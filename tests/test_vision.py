"""Vision encoders through the one sequential driver: tiny random ViT, DINOv2 (linear head) and timm ViT."""
import pytest
import torch
from torch import nn

import oats
from oats.layers import CompressedLinear, SplitLinear
from oats.models.adapters import UnsupportedArchitectureError, get_adapter
from oats.sequential import capture_inputs, run_block
from tiny_vision import TINY_VISION, calib_images, logits

METHOD_PARAMS = {
    "oats": dict(rank_ratio=0.3, iterations=4),
    "wanda": {},
    "sparsegpt": dict(blocksize=16),
    "magnitude": {},
    "lowrank": {},
}


@pytest.mark.parametrize("arch", list(TINY_VISION))
def test_capture_and_block_replay_reproduce_the_encoder(arch):
    """Replaying the captured block-0 inputs block by block gives the last block's real output."""
    model = TINY_VISION[arch]()
    x = calib_images(3)
    blocks = get_adapter(model).blocks(model)
    real = []
    h = blocks[-1].register_forward_hook(lambda m, i, o: real.append(o[0] if isinstance(o, tuple) else o))
    for item in x:
        logits(model, item[None])
    h.remove()
    inps, kwargs = capture_inputs(model, blocks, x, torch.device("cpu"), torch.device("cpu"))
    assert inps.shape == (3, 17, 32) and len(kwargs) == len(blocks)
    for i, block in enumerate(blocks):
        run_block(block, inps, kwargs[i], torch.device("cpu"), 2, out=inps)
    assert torch.allclose(inps, torch.cat(real), atol=1e-5)


@pytest.mark.parametrize("arch", list(TINY_VISION))
@pytest.mark.parametrize("method", [*METHOD_PARAMS, "wanda+owl"])
def test_every_method_compresses_every_encoder_end_to_end(arch, method):
    model = TINY_VISION[arch]()
    x = calib_images(2, seed=5)
    dense = logits(model, x)
    name, owl = method.split("+")[0], method.endswith("+owl")
    report = oats.compress(model, calib_images(), name, 0.5, owl=owl, progress=False, **METHOD_PARAMS[name])
    totals = report.totals()
    assert all(r.params == r.budget_params for r in report.layers)
    # 6 matrices per block: Q, K, V (timm's fused qkv split in three), attention output, MLP in, MLP out
    assert totals["layers"] == 12
    assert {r.name.rsplit(".", 1)[-1] for r in report.layers} >= ({"q", "k", "v"} if arch == "timm" else {"q_proj"})
    if owl:
        assert report.owl_sparsity is not None and len(report.owl_sparsity) == 2
    else:
        assert 0.49 <= totals["compression"] <= 0.53
    for block in get_adapter(model).blocks(model):
        assert not any(type(m) is nn.Linear for m in block.modules())
        assert any(isinstance(m, (CompressedLinear, SplitLinear)) for m in block.modules())
    # the classifier head stays dense
    head = model.head if arch == "timm" else model.classifier
    assert type(head) is nn.Linear
    out = logits(model, x)
    assert out.shape == dense.shape and torch.isfinite(out).all() and not torch.allclose(out, dense)


def test_token_ids_given_to_a_vision_model_are_refused():
    model = TINY_VISION["vit"]()
    with pytest.raises(ValueError, match=r"vit model must be a non-empty \(n, channels, height, width\).*\(4, 16\)"):
        oats.compress(model, torch.randint(0, 10, (4, 16)), "wanda", 0.5, progress=False)


def test_images_given_to_a_decoder_are_refused():
    from tiny_models import tiny_llama

    with pytest.raises(ValueError, match=r"llama model must be a non-empty \(n, seqlen\) tensor of token ids"):
        oats.compress(tiny_llama(), calib_images(), "wanda", 0.5, progress=False)


def test_vision_model_without_encoder_blocks_names_the_paths_searched():
    model = TINY_VISION["vit"]()
    model.vit.layers = nn.ModuleList()
    with pytest.raises(UnsupportedArchitectureError, match=r"vit adapter: no transformer blocks.*vit\.layers.*"
                                                           r"ViTForImageClassification"):
        oats.compress(model, calib_images(), "wanda", 0.5, progress=False)


def test_unrecognised_vision_model_names_its_model_type():
    from transformers import DeiTConfig, DeiTForImageClassification

    model = DeiTForImageClassification(DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                  intermediate_size=64, image_size=32, patch_size=8))
    with pytest.raises(UnsupportedArchitectureError, match=r"model_type='deit'.*supported:.*dinov2.*vit"):
        oats.compress(model, calib_images(), "wanda", 0.5, progress=False)
