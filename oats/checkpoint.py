"""Per-block checkpoints: a killed run resumes from the last complete block to bit-identical weights."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import atomic_write_json, file_sha256
from .layers import load_compressed, save_compressed
from .models.adapters import text_config
from .report import LayerRecord


class CheckpointMismatchError(RuntimeError):
    pass


class CheckpointError(RuntimeError):
    pass


class Checkpoint:
    """Per-block checkpoint folder: ``block_NNNN.safetensors`` then ``state.json``, each written atomically.

    ``state.json`` is written after the block file, so it only ever names complete blocks, and it
    carries each block file's SHA-256: on resume a block file that is missing or fails its checksum
    (truncated, overwritten) is reported by name and the run goes on from the last good block.
    """

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.checksums: dict[str, str] = {}

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    def load(self) -> dict | None:
        """The state of the blocks that are complete and intact (None: nothing to resume)."""
        if not self.state_path.exists():
            return None
        try:
            state = json.loads(self.state_path.read_text())
            next_block = int(state["next_block"])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"checkpoint state {self.state_path} is unreadable ({err}); delete that "
                                  f"folder to start the compression over") from err
        if state.get("fingerprint") != self.fingerprint:
            raise CheckpointMismatchError(
                f"checkpoint {self.folder} was written for a different model/method/budget/calibration "
                f"(fingerprint {state.get('fingerprint')} != {self.fingerprint}); use another folder or delete it"
            )
        checksums = state.get("checksums")  # absent in checkpoints written before checksums
        good = next_block
        for i in range(next_block):
            problem = self._problem(i, checksums)
            if problem:
                print(f"checkpoint block {self.block_file(i)} {problem}: recomputing from block {i}", flush=True)
                good = i
                break
        self.checksums = {k: v for k, v in (checksums or {}).items() if int(k) < good}
        if good == 0:
            return None
        if good < next_block:
            state = {**state, "next_block": good,
                     "records": [r for r in state["records"] if r["block"] < good]}
        return state

    def _problem(self, i: int, checksums: dict[str, str] | None) -> str | None:
        path = self.block_file(i)
        if not path.is_file():
            return "is missing"
        if checksums is None:
            return None
        if str(i) not in checksums:
            return "has no checksum in state.json"
        if file_sha256(path) != checksums[str(i)]:
            return "fails its SHA-256 checksum (truncated or damaged)"
        return None

    def block_file(self, i: int) -> Path:
        return self.folder / f"block_{i:04d}.safetensors"

    def save(self, i: int, block: nn.Module, records: list[LayerRecord], owl: list[float] | None) -> None:
        """Write block ``i`` then the state naming it. A write that fails (a full disk, a lost mount)
        leaves the last good state in place and raises :class:`CheckpointError` naming the file."""
        path = self.block_file(i)
        try:
            save_compressed(block, path)
            checksum = file_sha256(path)
            path = self.state_path
            atomic_write_json(path, {
                "fingerprint": self.fingerprint,
                "next_block": i + 1,
                "checksums": {**self.checksums, str(i): checksum},
                "records": [asdict(r) for r in records],
                "owl_sparsity": owl,
            })
        except OSError as err:
            raise CheckpointError(f"cannot write checkpoint file {path} ({err.strerror or err}); blocks 0-{i - 1} "
                                  f"are kept in {self.folder}: free space there (or fix the folder) and run the "
                                  f"same command again to resume from block {i}") from err
        self.checksums[str(i)] = checksum

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
