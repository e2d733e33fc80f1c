"""Vision encoders through the one sequential driver: tiny random ViT, DINOv2 (linear head) and timm ViT."""
import pytest
import torch
from torch import nn

import oats
from oats.layers import CompressedLinear, SplitLinear
from oats.models.adapters import UnsupportedArchitectureError, get_adapter
from oats.capture import capture_inputs, run_block
from contract import METHOD_PARAMS
from tiny_vision import TINY_VISION, calib_images, logits


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


# ---------------------------------------------------------------- attention rollout

from oats.layers import set_terms  # noqa: E402
from oats.vision.rollout import rollout, rollout_figure, rollout_maps, rollout_three_ways  # noqa: E402


def test_rollout_of_uniform_attention_is_flat_and_keeps_cls():
    t = 5
    uniform = torch.full((1, 2, t, t), 1 / t)
    m = rollout([uniform, uniform], discard_ratio=0.0)
    assert m.shape == (1, t - 1) and torch.allclose(m, torch.ones(1, t - 1))
    att = torch.rand(2, 3, t, t).softmax(-1)
    m = rollout([att], discard_ratio=0.99)
    assert torch.isfinite(m).all()
    with pytest.raises(ValueError, match="discard_ratio=1.0"):
        rollout([att], discard_ratio=1.0)
    with pytest.raises(ValueError, match="head_fusion='median'"):
        rollout([att], head_fusion="median")


@pytest.mark.parametrize("arch", list(TINY_VISION))
def test_rollout_three_ways_on_a_compressed_encoder(arch, tmp_path):
    model = TINY_VISION[arch]()
    x = calib_images(3, seed=7)
    dense_maps = rollout_maps(model, x)
    assert dense_maps.shape == (3, 4, 4)
    with pytest.raises(ValueError, match="no compressed layers"):
        rollout_three_ways(model, x)
    oats.compress(model, calib_images(), "oats", 0.5, progress=False, rank_ratio=0.3, iterations=4)
    before = logits(model, x)
    maps = rollout_three_ways(model, x, discard_ratio=0.4)
    assert set(maps) == {"full", "sparse", "lowrank"}
    for m in maps.values():
        assert m.shape == (3, 4, 4) and torch.isfinite(m).all()
        assert torch.allclose(m.flatten(1).amax(1), torch.ones(3))
    assert not torch.allclose(maps["sparse"], maps["full"]) and not torch.allclose(maps["lowrank"], maps["full"])
    # both terms are switched back on afterwards, and the attention implementation restored
    assert torch.equal(logits(model, x), before)
    if arch != "timm":
        assert model.config._attn_implementation == "sdpa"
    # the sparse-only map is the rollout of the model with U, V zeroed
    set_terms(model, sparse=True, lowrank=False)
    assert torch.allclose(rollout_maps(model, x), maps["sparse"])
    set_terms(model)
    path = rollout_figure(x, maps, tmp_path / "rollout.png", labels=["a", "b", "c"], title="t")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- image data

from PIL import Image  # noqa: E402

from oats.vision.data import ImageDataError, ImageFolder, ImageSpec, calibration_images, open_images  # noqa: E402


def make_image_folder(root, classes=("a", "b", "c"), per_class=2, size=(40, 30)):
    g = torch.Generator().manual_seed(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_image_spec_resizes_without_crop_and_normalises():
    spec = ImageSpec((224, 224), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x = spec(Image.new("RGB", (300, 200), (255, 0, 128)))
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[0], torch.ones(224, 224)) and torch.allclose(x[1], -torch.ones(224, 224))
    grey = ImageSpec((28, 28), (0.25,), (0.5,), channels=1)(Image.new("L", (28, 28), 255))
    assert grey.shape == (1, 28, 28) and torch.allclose(grey, torch.full((1, 28, 28), 1.5))
    dino = ImageSpec.from_processor_config({"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
                                            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                                            "resample": 3})
    assert dino.size == (224, 224) and dino.resample == 3 and dino.mean[0] == 0.485


def test_image_folder_reads_classes_in_sorted_order(tmp_path):
    folder = ImageFolder(make_image_folder(tmp_path / "train", classes=("n02", "n01")))
    assert folder.classes == ["n01", "n02"] and len(folder) == 4
    image, label = folder[3]
    assert image.size == (40, 30) and label == 1
    spec = ImageSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    calib = calibration_images(folder, 3, spec, seed=1)
    assert calib.shape == (3, 3, 32, 32)
    assert torch.equal(calib, calibration_images(folder, 3, spec, seed=1))
    with pytest.raises(ImageDataError, match="nsamples=9 .* holds only 4"):
        calibration_images(folder, 9, spec)


def test_missing_or_empty_image_folders_name_the_path(tmp_path):
    with pytest.raises(ImageDataError, match=f"image folder {tmp_path / 'nope'} does not exist"):
        ImageFolder(tmp_path / "nope")
    with pytest.raises(ImageDataError, match="image folder 'imagenet/val-missing' does not exist"):
        open_images("imagenet/val-missing", root=tmp_path)
    (tmp_path / "empty" / "n01").mkdir(parents=True)
    with pytest.raises(ImageDataError, match=f"image folder {tmp_path / 'empty'} holds no images"):
        open_images(str(tmp_path / "empty"))
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(ImageDataError, match=r"holds images directly \(x.png"):
        open_images(str(tmp_path / "flat"))
    # a relative folder is found under the data root
    make_image_folder(tmp_path / "imagenet" / "val")
    assert len(open_images("imagenet/val", root=tmp_path)) == 6


def test_accuracy_of_a_tiny_vit_on_an_image_folder(tmp_path):
    from oats.vision.evaluate import image_accuracy

    model = TINY_VISION["vit"]()
    folder = open_images(str(make_image_folder(tmp_path / "val", classes=tuple("abcde"), per_class=3)))
    spec = ImageSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    recs = image_accuracy(model, folder, spec, task="imagenet", batch_size=4, progress=False)
    by = {r["metric"]: r for r in recs}
    assert by["top1"]["n"] == 15 and 0 <= by["top1"]["value"] <= 1
    # 5 classes: top-5 is every class; limit evaluates the first images only
    recs = image_accuracy(model, folder, spec, batch_size=4, limit=6, progress=False)
    assert recs[0]["n"] == 6 and len(recs) == 1


# ---------------------------------------------------------------- one run from a config

def test_pipeline_runs_a_vision_config_end_to_end(tmp_path):
    """A tiny ViT folder + ImageFolder calibration/evaluation through oats.pipeline.run, with rollout."""
    import json

    from oats.pipeline import run
    from reproduce.tables import compose_run

    model = TINY_VISION["vit"]()
    model.save_pretrained(tmp_path / "tiny-vit")
    make_image_folder(tmp_path / "train", classes=tuple("abcde"), per_class=2)
    make_image_folder(tmp_path / "val", classes=tuple("abcde"), per_class=2)
    cfg = compose_run([f"model.name={tmp_path / 'tiny-vit'}", "+model.kind=vision", "+model.image_size=32",
                       "data=imagenet", f"data.source={tmp_path / 'train'}", "data.nsamples=4",
                       "eval=rollout_fmnist", f"eval.images.source={tmp_path / 'val'}", "eval.images.task=imagenet",
                       f"eval.rollout.source={tmp_path / 'val'}", "eval.rollout.images=2",
                       "method=oats", "method.iterations=3", "compression=0.4", "progress=false", "device=cpu"])
    result = run(cfg, tmp_path / "out")
    metrics = {f"{r['task']}/{r['metric']}": r["value"] for r in result["metrics"]}
    assert set(metrics) == {"imagenet/top1", "rollout/sparse_vs_full_corr", "rollout/lowrank_vs_full_corr"}
    assert result["calibration"]["shape"] == [4, 3, 32, 32]
    assert 0.38 < result["compression"]["compression"] < 0.42
    assert (tmp_path / "out" / "rollout.png").is_file()
    assert json.loads((tmp_path / "out" / "result.json").read_text())["metrics"]


def test_vision_config_errors_name_the_key():
    from oats.config import RunConfig
    from reproduce.tables import compose_run

    validate = RunConfig.parse

    with pytest.raises(ValueError, match="data.kind=None.*kind: images"):
        validate(compose_run(["model=fmnist-vit", "eval=fmnist", "method=wanda"]))
    with pytest.raises(ValueError, match="eval.rollout.discard_ratio=1.5"):
        validate(compose_run(["model=fmnist-vit", "data=fmnist", "eval=rollout_fmnist", "method=wanda",
                              "eval.rollout.discard_ratio=1.5"]))
    with pytest.raises(ValueError, match="eval.perplexity is a text evaluation; a vision model takes: images, rollout"):
        validate(compose_run(["model=fmnist-vit", "data=fmnist", "eval=ppl_quick", "method=wanda"]))
    with pytest.raises(ValueError, match="model.kind='audio'"):
        validate(compose_run(["model=fmnist-vit", "data=fmnist", "eval=fmnist", "model.kind=audio"]))


# ---------------------------------------------------------------- model loading

def test_committed_fmnist_vit_loads_with_its_preprocessing():
    from oats.vision.models import load_vision_model

    model, spec = load_vision_model("fmnist-vit")
    assert get_adapter(model).name == "vit" and len(get_adapter(model).blocks(model)) == 6
    assert spec.size == (28, 28) and spec.channels == 1 and 0.2 < spec.mean[0] < 0.4
    assert model.config.id2label[9] == "Ankle boot"


def test_unavailable_vision_models_fail_clearly(monkeypatch):
    from oats.models.loading import ModelNotAvailableError
    from oats.vision.models import load_vision_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="vision model 'nobody/no-such-vit' is not available"):
        load_vision_model("nobody/no-such-vit")
    with pytest.raises(ModelNotAvailableError, match="no such vision model folder: /no/such/folder"):
        load_vision_model("/no/such/folder")
    try:
        import timm  # noqa: F401
    except Exception:  # noqa: BLE001
        with pytest.raises(ModelNotAvailableError, match=r"timm:vit_tiny_patch16_224 needs timm.*\.\[vision\]"):
            load_vision_model("timm:vit_tiny_patch16_224")


def test_timm_preprocessing_comes_from_its_pretrained_cfg():
    from oats.vision.models import timm_spec

    model = TINY_VISION["timm"]()  # skips without timm
    cfg = model.pretrained_cfg
    spec = timm_spec(model, image_size=32)
    assert spec.size == (32, 32) and spec.mean == tuple(cfg["mean"]) and spec.std == tuple(cfg["std"])
    assert spec.resample == cfg.get("interpolation", "bicubic")
    assert spec(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


@pytest.mark.parametrize("arch", list(TINY_VISION))
def test_vision_checkpoint_resumes_to_the_same_model(arch, tmp_path):
    from oats.sequential import compress_model

    x = calib_images(2, seed=3)
    fresh = TINY_VISION[arch]()
    compress_model(fresh, calib_images(), "wanda", 0.5, checkpoint_dir=tmp_path, progress=False)
    assert json_state(tmp_path)["next_block"] == 2
    resumed = TINY_VISION[arch]()  # every block restored from the checkpoint, nothing recomputed
    report = compress_model(resumed, calib_images(), "wanda", 0.5, checkpoint_dir=tmp_path, progress=False)
    assert len(report.layers) == 12
    assert torch.allclose(logits(resumed, x), logits(fresh, x), atol=1e-6)


def json_state(folder):
    import json

    return json.loads((folder / "state.json").read_text())
