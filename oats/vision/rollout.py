"""Attention rollout (Abnar & Zuidema 2020) of a ViT, and the paper's three-way view of a compressed one.

:func:`rollout` fuses each layer's heads (mean, as in the paper; or max / min), zeroes the
``discard_ratio`` weakest attention weights of every layer (never the CLS->CLS weight), adds
the identity for the residual path, renormalises each row and multiplies the layers' matrices;
the map is the CLS token's row over the patch tokens, scaled to a maximum of 1. (Rows are
normalised with ``keepdim=True``; the widely copied vit-explain code divides by the row sums
broadcast along the wrong axis.)

:func:`rollout_three_ways` runs it on an OATS-compressed model three times, switching the
terms of every :class:`~oats.layers.CompressedLinear` with :func:`~oats.layers.set_terms`:
the full model (S + UV), the sparse term only (U, V zeroed) and the low-rank term only (S zeroed).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..layers import iter_compressed, set_terms
from ..models.adapters import get_adapter
from .data import ImageSpec, open_images

HEAD_FUSIONS = ("mean", "max", "min")
TERMS = {"full": (True, True), "sparse": (True, False), "lowrank": (False, True)}
TERM_TITLES = {"full": "full (S + UV)", "sparse": "sparse term only (UV = 0)", "lowrank": "low-rank term only (S = 0)"}


def rollout(attentions: Sequence[torch.Tensor], discard_ratio: float = 0.4, head_fusion: str = "mean",
            num_prefix: int = 1) -> torch.Tensor:
    """attentions: per layer (batch, heads, tokens, tokens) -> (batch, tokens - num_prefix) CLS relevance, max 1."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion={head_fusion!r}; allowed: {', '.join(HEAD_FUSIONS)}")
    if not 0 <= discard_ratio < 1:
        raise ValueError(f"discard_ratio={discard_ratio} must be in [0, 1)")
    if not attentions:
        raise ValueError("no attention maps to roll out")
    b, _, t, _ = attentions[0].shape
    eye = torch.eye(t, dtype=torch.float32)
    result = eye.expand(b, t, t).clone()
    for att in attentions:
        att = att.detach().float().cpu()
        fused = {"mean": att.mean(1), "max": att.amax(1), "min": att.amin(1)}[head_fusion]
        flat = fused.reshape(b, -1).clone()
        k = int(flat.shape[-1] * discard_ratio)
        if k:
            drop = flat.topk(k, dim=-1, largest=False).indices
            keep_cls = torch.zeros_like(flat, dtype=torch.bool)
            keep_cls[:, 0] = True  # the CLS -> CLS weight is never discarded
            mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, drop, True) & ~keep_cls
            flat = flat.masked_fill(mask, 0.0)
        a = (flat.view(b, t, t) + eye) / 2
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    cls = result[:, 0, num_prefix:]
    return cls / cls.amax(-1, keepdim=True).clamp_min(1e-12)


@contextmanager
def _attention_probabilities(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collects every layer's attention probabilities during the forward passes run inside the block."""
    store: list[torch.Tensor] = []
    if get_adapter(model).name == "timm_vit":  # timm: probabilities pass through attn_drop when not fused
        handles, fused = [], []
        for block in get_adapter(model).blocks(model):
            attn = block.attn
            fused.append(getattr(attn, "fused_attn", False))
            attn.fused_attn = False
            handles.append(attn.attn_drop.register_forward_hook(lambda m, i, o: store.append(i[0].detach())))
        try:
            yield store
        finally:
            for h in handles:
                h.remove()
            for block, f in zip(get_adapter(model).blocks(model), fused):
                block.attn.fused_attn = f
        return
    previous = model.config._attn_implementation  # transformers: eager attention returns the probabilities
    model.set_attn_implementation("eager")
    try:
        yield store
    finally:
        model.set_attn_implementation(previous)


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per layer (batch, heads, tokens, tokens) attention probabilities of ``model`` on images x (B, C, H, W)."""
    with _attention_probabilities(model) as store:
        if get_adapter(model).name == "timm_vit":
            model(x)
            maps = list(store)
        else:
            maps = list(model(pixel_values=x, output_attentions=True).attentions)
    if not maps:
        raise RuntimeError(f"{type(model).__name__} returned no attention maps")
    return maps


def patch_grid(model: nn.Module, spec_size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of patch tokens for inputs of size ``spec_size``."""
    patch = getattr(getattr(model, "config", None), "patch_size", None)
    if patch is None:  # timm
        patch = model.patch_embed.patch_size
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return spec_size[0] // ph, spec_size[1] // pw


def rollout_maps(model: nn.Module, x: torch.Tensor, discard_ratio: float = 0.4, head_fusion: str = "mean",
                 ) -> torch.Tensor:
    """(B, rows, cols) rollout maps of the patch grid (prefix tokens such as CLS/registers dropped)."""
    gh, gw = patch_grid(model, tuple(x.shape[-2:]))
    maps = attention_maps(model, x)
    prefix = maps[0].shape[-1] - gh * gw
    return rollout(maps, discard_ratio, head_fusion, num_prefix=prefix).view(x.shape[0], gh, gw)


def rollout_three_ways(model: nn.Module, x: torch.Tensor, discard_ratio: float = 0.4, head_fusion: str = "mean",
                       ) -> dict[str, torch.Tensor]:
    """``{"full", "sparse", "lowrank"}`` -> (B, rows, cols) maps of a compressed model (terms restored after)."""
    if next(iter_compressed(model), None) is None:
        raise ValueError(f"{type(model).__name__} has no compressed layers: compress it (e.g. with OATS) before "
                         "isolating its sparse and low-rank terms")
    out = {}
    try:
        for name, (sparse, lowrank) in TERMS.items():
            set_terms(model, sparse=sparse, lowrank=lowrank)
            out[name] = rollout_maps(model, x, discard_ratio, head_fusion)
    finally:
        set_terms(model, sparse=True, lowrank=True)
    return out


def map_correlations(maps: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean over images of the Pearson correlation between each single-term map and the full model's."""
    full = maps["full"].flatten(1)
    out = {}
    for name in ("sparse", "lowrank"):
        other = maps[name].flatten(1)
        a, b = full - full.mean(1, keepdim=True), other - other.mean(1, keepdim=True)
        corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
        out[f"{name}_vs_full_corr"] = float(corr.mean())
    return out


def rollout_figure(images: torch.Tensor, maps: dict[str, torch.Tensor], path: str | Path,
                   mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,), labels: Sequence[str] | None = None,
                   title: str | None = None) -> Path:
    """PNG: one row per image: the image, then each rollout map over it (``maps`` from :func:`rollout_three_ways`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, c, h, w = images.shape
    shown = (images * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)).clamp(0, 1)
    cols = ["image", *maps]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.3 * len(cols), 2.3 * n + (0.4 if title else 0)), squeeze=False)
    for r in range(n):
        img = (shown[r, 0] if c == 1 else shown[r].permute(1, 2, 0)).numpy()
        for j, col in enumerate(cols):
            ax = axes[r, j]
            ax.imshow(img, cmap="gray" if c == 1 else None)
            if col != "image":
                heat = F.interpolate(maps[col][r][None, None].float(), size=(h, w), mode="bilinear",
                                     align_corners=False)[0, 0]
                ax.imshow(heat.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if r == 0:
                ax.set_title(TERM_TITLES.get(col, col), fontsize=8)
            if j == 0 and labels is not None:
                ax.set_ylabel(labels[r], fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_rollout(model: nn.Module, spec: ImageSpec, ro: Mapping[str, Any], out_dir: Path, root=None,
                title: str = "") -> list[dict]:
    """Three-way rollout on the first ``ro.images`` images of ``ro.source``; writes ``rollout.png``."""
    data = open_images(ro["source"], root)
    n = min(ro.get("images", 4), len(data))
    x = torch.stack([spec(data[i][0]) for i in range(n)])
    classes = (getattr(getattr(model, "config", None), "id2label", None) or {})
    labels = [str(classes.get(data[i][1], data[i][1])) for i in range(n)]
    ratio, fusion = ro.get("discard_ratio", 0.4), ro.get("head_fusion", "mean")
    compressed = next(iter_compressed(model), None) is not None
    # a dense model has one map; a compressed one three (full, sparse term only, low-rank term only)
    maps = rollout_three_ways(model, x, ratio, fusion) if compressed else {"full": rollout_maps(model, x, ratio, fusion)}
    path = rollout_figure(x, maps, out_dir / "rollout.png", spec.mean, spec.std, labels,
                          title=f"{title} attention rollout (heads {fusion}, discard ratio {ratio})".strip())
    torch.save(maps, out_dir / "rollout_maps.pt")
    corr = map_correlations(maps) if compressed else {}
    return [{"task": "rollout", "metric": k, "value": v, "figure": str(path)} for k, v in corr.items()]
