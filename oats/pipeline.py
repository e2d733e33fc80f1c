"""One compression run described by a config: load, calibrate, compress, evaluate, write results.

The Hydra entry point (:mod:`oats.cli`) and the reproduction layer both call :func:`run`;
nothing here depends on Hydra. The run's task (text or vision, by ``model.kind``) loads the
model, draws the calibration data and evaluates; the driver compresses.
"""
from __future__ import annotations

import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import torch

from . import runtime
from .config import RunConfig
from .evaluations import EvalContext
from .hydra_configs import DENSE
from .io import atomic_write_json, atomic_write_text
from .layers import save_compressed
from .sequential import compress_model

PACKAGES = ("torch", "transformers", "safetensors", "hydra-core", "pandas", "lm-eval", "gguf", "oats-repro", "pillow",
            "timm", "torchvision")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> str | None:
    try:
        repo = Path(__file__).resolve().parents[1]
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _bos_share(calib: torch.Tensor, processor: Any) -> dict:
    """For token calibration: the share of sequences that start with the tokenizer's BOS token."""
    bos = getattr(processor, "bos_token_id", None)
    if calib.is_floating_point() or bos is None:
        return {}
    return {"starts_with_bos": float((calib[:, 0] == bos).float().mean())}


def run(cfg: Mapping[str, Any] | RunConfig, out_dir: str | Path) -> dict:
    """Run one compression described by ``cfg``; write ``result.json`` (and ``layers.csv``) to ``out_dir``."""
    rc = cfg if isinstance(cfg, RunConfig) else RunConfig.parse(cfg)
    runtime.apply(rc.runtime)
    out_dir = Path(out_dir)
    root, progress = rc.get("data_root"), rc.get("progress", True)
    timings: dict[str, float] = {}
    torch.manual_seed(rc.get("seed", 0))

    def timed(key: str, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        timings[key] = time.perf_counter() - t
        return out

    mcfg = rc.raw["model"]
    model, processor = timed("load_s", rc.task.load, mcfg, rc.get("load", "eager"))
    ecfg = rc.get("eval")
    bos = bool(mcfg.get("bos_per_window", False))
    dense_eval: list[dict] = []
    if rc.get("evaluate_dense", False) and rc.method is not None:
        dense_eval = timed("dense_eval_s", rc.task.evaluate, model, processor, ecfg,
                           EvalContext(rc.device, root, None, progress, bos_per_window=bos))

    report, calib = None, None
    if rc.method is not None:
        calib = timed("calibration_data_s", rc.task.calibrate, processor, rc.raw["data"], root, mcfg)
        report = timed("compress_s", compress_model, model, calib, rc.method, rc.compression, rc.nm,
                       device=rc.device, owl=rc.owl,
                       checkpoint_dir=out_dir / "checkpoint" if rc.get("checkpoint", True) else None,
                       batch_size=rc.get("batch_size", 1), offload_activations=rc.get("offload_activations", False),
                       progress=progress, layer_workers=rc.runtime.get("layer_workers"))
        print(report.summary())

    evals = timed("eval_s", rc.task.evaluate, model, processor, ecfg,
                  EvalContext(rc.device, root, out_dir, progress, bos_per_window=bos))
    if rc.get("save_model", False):
        save_compressed(model, out_dir / "compressed.safetensors")
    if report is not None:
        atomic_write_text(out_dir / "layers.csv", report.to_frame().to_csv(index=False))
    result = {
        "config": dict(rc.raw),
        "method": rc.method.describe() if rc.method else {"name": DENSE},
        "calibration": {**dict(rc.raw["data"]), "shape": list(calib.shape),
                        **_bos_share(calib, processor)} if calib is not None else None,
        "compression": report.totals() if report else None,
        "owl_sparsity": report.owl_sparsity if report else None,
        "metrics": evals,
        "dense_metrics": dense_eval,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "versions": package_versions(),
        "git": git_revision(),
        "device": str(rc.device),
        "runtime": runtime.describe(),
    }
    atomic_write_json(out_dir / "result.json", result)
    return result
