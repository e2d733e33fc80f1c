"""Top-1 / top-5 accuracy of an image classifier on an image source (ImageNet-val folder, Fashion-MNIST)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data import ImageSpec
from .models import model_logits


class _Preprocessed(Dataset):
    def __init__(self, images, spec: ImageSpec, limit: int | None) -> None:
        self.images, self.spec = images, spec
        self.n = len(images) if limit is None else min(limit, len(images))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        image, label = self.images[i]
        return self.spec(image), label


@torch.no_grad()
def image_accuracy(model: nn.Module, images, spec: ImageSpec, *, task: str = "imagenet", batch_size: int = 64,
                   limit: int | None = None, workers: int = 0, device: str | torch.device = "cpu",
                   progress: bool = True) -> list[dict]:
    """Records ``{task, metric: top1|top5, value, n}`` over the first ``limit`` images (all when None).

    ``images``: a dataset of (PIL image, label) (:func:`oats.vision.data.open_images`);
    ``spec``: the model's preprocessing. Labels must use the model's class order (ImageFolder's
    sorted synset folders are the ImageNet-1k order of ViT-B/16, DINOv2 and timm).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    data = _Preprocessed(images, spec, limit)
    if len(data) == 0:
        raise ValueError(f"no images to evaluate (limit={limit}, source holds {len(images)})")
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers)
    host = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    model.to(device)
    top1 = top5 = seen = 0
    try:
        for x, y in tqdm(loader, desc=f"{task} accuracy", unit="batch", disable=not progress):
            logits = model_logits(model, x.to(device=device, dtype=dtype)).float()
            y = y.to(logits.device)
            k = min(5, logits.shape[-1])
            top = logits.topk(k, dim=-1).indices
            top1 += int((top[:, 0] == y).sum())
            top5 += int((top == y[:, None]).any(-1).sum())
            seen += len(y)
    finally:
        model.to(host)
    records = [{"task": task, "metric": "top1", "value": top1 / seen, "n": seen}]
    if logits.shape[-1] > 5:
        records.append({"task": task, "metric": "top5", "value": top5 / seen, "n": seen})
    return records
