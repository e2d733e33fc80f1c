"""Train the project's small ViT on Fashion-MNIST (seeded, a few minutes on one CPU core).

    python -m oats.vision.train_fmnist --out results/models/fmnist-vit --threads 1

The model is a transformers ``ViTForImageClassification`` (28x28 grey images, 7x7 patches:
16 patches + CLS, hidden 64, 6 blocks of 4 heads, MLP 128; about 0.2 M parameters), so the
same ViT adapter, evaluation and rollout code serve it and ViT-B/16. It writes the model
folder (``config.json``, ``model.safetensors``), ``preprocessor_config.json`` (the training
set's mean/std, no resize) and ``training.json`` (settings, time, test accuracy on the full
10,000-image test set). ``--subset`` also rewrites the committed data subset.
Needs the Debian package ``dataset-fashion-mnist``.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .fmnist import CLASSES, SUBSET, load_fmnist, make_subset


def build_model(hidden: int = 64, layers: int = 6, heads: int = 4, mlp: int = 128, patch: int = 7):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=28, patch_size=patch, num_channels=1, hidden_size=hidden, num_hidden_layers=layers,
                    num_attention_heads=heads, intermediate_size=mlp, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, num_labels=len(CLASSES),
                    id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)})
    return ViTForImageClassification(cfg)


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    correct = 0
    for a in range(0, len(x), batch_size):
        correct += int((model(pixel_values=x[a:a + batch_size]).logits.argmax(-1) == y[a:a + batch_size]).sum())
    return correct / len(x)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/models/fmnist-vit")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--subset", action="store_true", help=f"also rewrite the committed data subset {SUBSET}")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    train_x, train_y = load_fmnist("train")
    test_x, test_y = load_fmnist("test")
    mean, std = float(train_x.mean() / 255), float(train_x.std() / 255)

    def prep(a: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(a.astype(np.float32)) / 255 - mean) / std).unsqueeze(1)

    xs, ys = prep(train_x), torch.from_numpy(train_y)
    xt, yt = prep(test_x), torch.from_numpy(test_y)
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(xs) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch // 2
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
    gen = torch.Generator().manual_seed(args.seed)
    history = []
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xs), generator=gen)
        t0, loss_sum = time.perf_counter(), 0.0
        for a in range(0, len(xs), args.batch_size):
            idx = perm[a:a + args.batch_size]
            x = xs[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # horizontal flips
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(pixel_values=x).logits, ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
        acc = accuracy(model, xt, yt)
        history.append({"epoch": epoch + 1, "train_loss": round(loss_sum / len(xs), 4), "test_acc": acc,
                        "seconds": round(time.perf_counter() - t0, 1)})
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {loss_sum / len(xs):.4f}, test accuracy {acc:.4f} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    train_seconds = time.perf_counter() - t_start

    out = Path(args.out)
    model.eval()
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_resize": False, "size": {"height": 28, "width": 28},
        "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [round(mean, 6)], "image_std": [round(std, 6)]}, indent=2) + "\n")
    info = {
        "data": "Fashion-MNIST (Debian dataset-fashion-mnist): 60,000 train, 10,000 test images",
        "model": {"hidden": 64, "layers": 6, "heads": 4, "mlp": 128, "patch": 7,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "subset")},
        "test_accuracy": history[-1]["test_acc"],
        "train_seconds": round(train_seconds, 1),
        "history": history,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    for item in out.iterdir():  # safetensors writes owner-only files
        item.chmod(0o644)
    print(f"test accuracy {info['test_accuracy']:.4f} on the 10,000 test images; "
          f"training took {train_seconds:.0f} s on {args.threads} thread(s); wrote {out}")
    if args.subset:
        print(f"wrote {make_subset()}")
    return info


if __name__ == "__main__":
    main()
