"""Per-block checkpoints: a killed run resumes from the last complete block to bit-identical weights."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import atomic_write_json
from .layers import load_compressed, save_compressed
from .models.adapters import text_config
from .report import LayerRecord


class CheckpointMismatchError(RuntimeError):
    pass


class Checkpoint:
    """Per-block checkpoint folder: ``block_NNNN.safetensors`` then ``state.json``, each written atomically.

    ``state.json`` is written after the block file, so it only ever names complete blocks.
    """

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    def load(self) -> dict | None:
        if not self.state_path.exists():
            return None
        state = json.loads(self.state_path.read_text())
        if state.get("fingerprint") != self.fingerprint:
            raise CheckpointMismatchError(
                f"checkpoint {self.folder} was written for a different model/method/budget/calibration "
                f"(fingerprint {state.get('fingerprint')} != {self.fingerprint}); use another folder or delete it"
            )
        return state

    def block_file(self, i: int) -> Path:
        return self.folder / f"block_{i:04d}.safetensors"

    def save(self, i: int, block: nn.Module, records: list[LayerRecord], owl: list[float] | None) -> None:
        save_compressed(block, self.block_file(i))
        atomic_write_json(self.state_path, {
            "fingerprint": self.fingerprint,
            "next_block": i + 1,
            "records": [asdict(r) for r in records],
            "owl_sparsity": owl,
        })

    def restore_block(self, i: int, block: nn.Module) -> None:
        load_compressed(block, self.block_file(i))


def fingerprint(model: nn.Module, method: dict, compression: float | None, nm: str | None,
                owl: dict | None, calib: torch.Tensor) -> str:
    """What a checkpoint was written for: architecture, method and its parameters, budget, OWL, calibration."""
    cfg = text_config(model)
    desc: dict[str, Any] = {
        "model_type": cfg.model_type,
        "layers": getattr(cfg, "num_hidden_layers", None),
        "hidden": getattr(cfg, "hidden_size", None),
        "method": method,
        "compression": compression,
        "nm": nm,
        "owl": owl,
        "calib": hashlib.sha256(calib.cpu().numpy().tobytes()).hexdigest(),
        "calib_shape": list(calib.shape),
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]
