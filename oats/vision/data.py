"""Images for calibration and evaluation: ImageFolder trees, Fashion-MNIST, and the paper's preprocessing.

Preprocessing (:class:`ImageSpec`) follows the OATS paper for ViTs: resize to the model's
input size (224x224 for ViT-B/16 and DINOv2) with no centre crop, scale to [0, 1], normalise
with the model's own mean/std (from its ``preprocessor_config.json`` or timm's
``pretrained_cfg``). PIL and torch only: no torchvision.

Image sources (:func:`open_images`):

* a folder in ImageFolder layout (``<root>/<class>/<image>``, classes in sorted order, as
  ImageNet's ``train``/``val`` with synset folders); a relative path is tried against the
  working directory, then the data root;
* ``fashion-mnist:train`` / ``fashion-mnist:test``: the Debian package's full splits;
* ``fashion-mnist-subset:calib`` / ``fashion-mnist-subset:test``: the committed subset.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..data.paths import DataNotAvailableError, data_root

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
RESAMPLE = {0: Image.NEAREST, 1: Image.LANCZOS, 2: Image.BILINEAR, 3: Image.BICUBIC, 4: Image.BOX, 5: Image.HAMMING,
            "nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS,
            "box": Image.BOX, "hamming": Image.HAMMING}


class ImageDataError(DataNotAvailableError):
    """An image source that does not exist, is empty, or is not laid out as expected."""


@dataclass(frozen=True)
class ImageSpec:
    """How a model wants its images: size (height, width), per-channel mean/std, channels, resampling filter."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    resample: int | str = 2

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"image mean {self.mean} / std {self.std} must have one value per channel "
                             f"({self.channels})")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> (channels, height, width) float tensor: Resize(size) (no crop), /255, normalise."""
        image = image.convert("L" if self.channels == 1 else "RGB")
        if image.size != (self.size[1], self.size[0]):
            image = image.resize((self.size[1], self.size[0]), RESAMPLE[self.resample])
        x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()) / 255.0
        x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (x - mean) / std

    @classmethod
    def from_processor_config(cls, config: dict, channels: int = 3, fallback_size: int | None = None,
                              size: int | Sequence[int] | None = None) -> "ImageSpec":
        """From a transformers ``preprocessor_config.json``: mean/std and resampling, and the
        input size as crop_size (DINOv2) or size (ViT), unless ``size`` is given."""
        if size is None:
            for key in ("crop_size", "size"):
                s = config.get(key)
                if isinstance(s, dict) and "height" in s and "width" in s:
                    size = (s["height"], s["width"])
                    break
                if isinstance(s, int):
                    size = s
                    break
        size = size or fallback_size
        if size is None:
            raise ValueError(f"cannot tell the input size from the processor config {config}")
        hw = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        mean = config.get("image_mean", [0.5] * channels)
        std = config.get("image_std", [0.5] * channels)
        return cls(hw, tuple(float(m) for m in mean), tuple(float(s) for s in std), channels,
                   config.get("resample", 2))


class ImageFolder:
    """``<root>/<class>/<image>``: classes are the sorted sub-folder names, label = position in that order."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        if not root.exists():
            raise ImageDataError(f"image folder {root} does not exist")
        if not root.is_dir():
            raise ImageDataError(f"image folder {root} is a file, not a folder")
        self.root = root
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.samples = [(f, i) for i, c in enumerate(self.classes) for f in sorted((root / c).rglob("*"))
                        if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()]
        if not self.samples:
            loose = [f.name for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS][:3]
            hint = (f"; it holds images directly ({', '.join(loose)}, ...) but they must be in one sub-folder per "
                    "class" if loose else "")
            raise ImageDataError(f"image folder {root} holds no images in class sub-folders "
                                 f"(<root>/<class>/*{'|*'.join(IMAGE_EXTENSIONS)}){hint}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        path, label = self.samples[i]
        with Image.open(path) as im:
            return im.convert("RGB"), label


class ArrayImages:
    """Grey images held as a uint8 array (n, H, W) with integer labels (Fashion-MNIST)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str) -> None:
        self.images, self.labels, self.name = images, labels, name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i], mode="L"), int(self.labels[i])


def open_images(source: str, root: str | Path | None = None):
    """The dataset named by ``source`` (see the module doc); errors name the source and what is wrong."""
    source = str(source)
    name, sep, split = source.partition(":")
    if sep and name in ("fashion-mnist", "fashion-mnist-subset"):
        from .fmnist import load_fmnist, load_subset

        images, labels = load_fmnist(split) if name == "fashion-mnist" else load_subset(split)
        return ArrayImages(images, labels, source)
    path = Path(source).expanduser()
    if not path.is_absolute() and not path.exists():
        try:
            under_root = data_root(root) / path
        except DataNotAvailableError:
            under_root = None
        if under_root is not None and under_root.exists():
            path = under_root
        else:
            where = f" or under the data root {data_root(root)}" if under_root is not None else ""
            raise ImageDataError(f"image folder {source!r} does not exist (looked in {Path.cwd()}{where}); "
                                 "set the path in the data/eval config or IMAGENET_TRAIN / IMAGENET_VAL")
    return ImageFolder(path)


def calibration_images(dataset, nsamples: int, spec: ImageSpec, seed: int = 0) -> torch.Tensor:
    """``nsamples`` images drawn without replacement (``random.Random(seed)``), preprocessed: (n, C, H, W)."""
    if nsamples > len(dataset):
        raise ImageDataError(f"nsamples={nsamples} calibration images requested but the source holds only "
                             f"{len(dataset)}")
    idx = sorted(random.Random(seed).sample(range(len(dataset)), nsamples))
    return torch.stack([spec(dataset[i][0]) for i in idx])


def read_processor_config(folder: str | Path) -> dict:
    path = Path(folder) / "preprocessor_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
