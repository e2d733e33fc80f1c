"""One compression run described by a config: load, calibrate, compress, evaluate, write results.

The Hydra entry point (:mod:`oats.cli`) and the reproduction layer both call
:func:`run`; nothing here depends on Hydra.
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
from .budget import check_compression, parse_nm
from .io import atomic_write_json, atomic_write_text
from .data.calibration import STYLES
from .methods import get_method
from .models.loading import DTYPES
from .sequential import OWLConfig, compress_model, resolve_device
from baselines.owl import owl_sparsities

DENSE = "dense"  # method name of the uncompressed reference row

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


def build_method(cfg: Mapping[str, Any]):
    params = {k: v for k, v in dict(cfg).items() if k != "name"}
    return get_method(cfg["name"], **params)


class ConfigError(ValueError):
    """A config value out of range, named by its key."""


def _positive_int(key: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer{' or null' if allow_none else ''}")


def _check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}; allowed: {', '.join(map(str, allowed))}")


MODEL_KINDS = ("text", "vision")


def is_vision(cfg: Mapping[str, Any]) -> bool:
    """``model.kind: vision``: an image classifier (ViT, DINOv2, timm), calibrated and evaluated on images."""
    return cfg["model"].get("kind", "text") == "vision"


def validate(cfg: Mapping[str, Any]):
    """Everything that can be checked before loading a model; returns the method (None for dense).

    Errors name the config key and the allowed values.
    """
    resolve_device(cfg.get("device", "cpu"))
    runtime.settings(cfg.get("runtime"))
    _check_choice("model.dtype", cfg["model"].get("dtype", "float32"), tuple(DTYPES))
    _check_choice("model.kind", cfg["model"].get("kind", "text"), MODEL_KINDS)
    _positive_int("batch_size", cfg.get("batch_size", 1))
    data = cfg.get("data") or {}
    ppl = (cfg.get("eval") or {}).get("perplexity")
    if is_vision(cfg):
        from .vision.pipeline import check_config

        check_config(cfg)
    else:
        _positive_int("data.nsamples", data.get("nsamples"))
        _positive_int("data.seqlen", data.get("seqlen"))
        _check_choice("data.style", data.get("style"), STYLES)
    if ppl:
        _positive_int("eval.perplexity.seqlen", ppl.get("seqlen"))
        _positive_int("eval.perplexity.max_windows", ppl.get("max_windows"), allow_none=True)
    if cfg["method"]["name"] == DENSE:
        return None
    method = build_method(cfg["method"])
    nm = parse_nm(cfg.get("nm"))
    if nm is None:
        check_compression(cfg.get("compression"))
    owl = cfg.get("owl") or {}
    if owl.get("enabled"):
        owl_sparsities([0.0, 1.0], cfg.get("compression"), owl.get("lam", 0.08))  # range check
    return method


def _evaluate(model, tokenizer, ecfg: Mapping[str, Any] | None, device, root, progress: bool = True,
              out_dir: Path | None = None) -> list[dict]:
    if not ecfg:
        return []
    from .vision.data import ImageSpec

    if isinstance(tokenizer, ImageSpec):  # a vision model: ``tokenizer`` is its image preprocessing
        from .vision.pipeline import evaluate

        return evaluate(model, tokenizer, ecfg, device, root, out_dir, progress)
    records: list[dict] = []
    ppl = ecfg.get("perplexity")
    if ppl:
        from .eval.perplexity import perplexity

        records.append(perplexity(model, tokenizer, source=ppl.get("source", "wikitext2"), seqlen=ppl["seqlen"],
                                  max_windows=ppl.get("max_windows"), device=str(device), data_root=root,
                                  progress=progress))
    for group in ecfg.get("lm_eval") or []:
        from .eval.lm_eval_bridge import run_lm_eval

        records += run_lm_eval(model, tokenizer, list(group["tasks"]), num_fewshot=group.get("num_fewshot"),
                               limit=group.get("limit"), batch_size=group.get("batch_size", 1), device=str(device),
                               data_root=root)
    if ecfg.get("speed"):  # CPU inference speed vs the dense equivalent (oats.eval.speed)
        from .eval.speed import evaluate_speed

        records += evaluate_speed(model, ecfg["speed"], out_dir, progress=progress)
    return records


def run(cfg: Mapping[str, Any], out_dir: str | Path) -> dict:
    """Run one compression described by ``cfg`` (a plain mapping); write ``result.json`` to ``out_dir``."""
    from .data.calibration import get_calibration
    from .models.loading import load_model

    out_dir = Path(out_dir)
    method = validate(cfg)
    runtime.apply(runtime.settings(cfg.get("runtime")))
    device = resolve_device(cfg.get("device", "cpu"))
    root = cfg.get("data_root")
    timings: dict[str, float] = {}
    torch.manual_seed(cfg.get("seed", 0))

    t = time.perf_counter()
    if is_vision(cfg):  # ``tokenizer`` is then the model's image preprocessing (an ImageSpec)
        from .vision import pipeline as vision

        model, tokenizer = vision.load(cfg["model"])
    else:
        model, tokenizer = load_model(cfg["model"]["name"], dtype=cfg["model"].get("dtype", "float32"))
    timings["load_s"] = time.perf_counter() - t

    dense_eval: list[dict] = []
    if cfg.get("evaluate_dense", False) and method is not None:
        t = time.perf_counter()
        dense_eval = _evaluate(model, tokenizer, cfg.get("eval"), device, root, cfg.get("progress", True))
        timings["dense_eval_s"] = time.perf_counter() - t

    report, calib = None, None
    dcfg = cfg["data"]
    if method is not None:
        t = time.perf_counter()
        if is_vision(cfg):
            calib = vision.calibration(tokenizer, dcfg, root)
        else:
            calib = get_calibration(tokenizer, source=dcfg["source"],
                                    nsamples=dcfg["nsamples"], seqlen=dcfg["seqlen"], style=dcfg["style"],
                                    seed=dcfg.get("seed"), data_root=root)
        timings["calibration_data_s"] = time.perf_counter() - t
        owl = cfg.get("owl") or {}
        t = time.perf_counter()
        report = compress_model(
            model, calib, method, cfg.get("compression"), cfg.get("nm"), device=device,
            owl=OWLConfig(hyper_m=owl["hyper_m"], lam=owl["lam"]) if owl.get("enabled") else None,
            checkpoint_dir=out_dir / "checkpoint" if cfg.get("checkpoint", True) else None,
            batch_size=cfg.get("batch_size", 1), offload_activations=cfg.get("offload_activations", False),
            progress=cfg.get("progress", True),
        )
        timings["compress_s"] = time.perf_counter() - t
        print(report.summary())

    t = time.perf_counter()
    evals = _evaluate(model, tokenizer, cfg.get("eval"), device, root, cfg.get("progress", True), out_dir)
    timings["eval_s"] = time.perf_counter() - t

    if cfg.get("save_model", False):
        from .layers import save_compressed

        save_compressed(model, out_dir / "compressed.safetensors")
    if report is not None:
        atomic_write_text(out_dir / "layers.csv", report.to_frame().to_csv(index=False))
    result = {
        "config": dict(cfg),
        "method": method.describe() if method else {"name": DENSE},
        "calibration": {**dict(dcfg), "shape": list(calib.shape)} if calib is not None else None,
        "compression": report.totals() if report else None,
        "owl_sparsity": report.owl_sparsity if report else None,
        "metrics": evals,
        "dense_metrics": dense_eval,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "versions": package_versions(),
        "git": git_revision(),
        "device": str(device),
        "runtime": runtime.describe(),
    }
    atomic_write_json(out_dir / "result.json", result)
    return result
