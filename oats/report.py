"""Measured sparsity and parameter counts, per layer and for the whole model."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd


@dataclass
class LayerRecord:
    """One compressed matrix: shapes, what was kept (measured) and what the budget allowed."""

    block: int
    name: str
    d_out: int
    d_in: int
    rank: int
    nnz: int
    params: int  # measured: nonzeros of S + entries of U and V (bias excluded)
    budget_params: int
    dense_params: int
    target_compression: float
    dead_columns: int = 0  # input columns whose calibration second moment was zero
    seconds: float = 0.0

    @property
    def compression(self) -> float:
        return 1.0 - self.params / self.dense_params


@dataclass
class CompressionReport:
    layers: list[LayerRecord]
    method: dict = field(default_factory=dict)
    compression: float | None = None
    nm: str | None = None
    owl_sparsity: list[float] | None = None

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame([asdict(r) for r in self.layers])
        if not df.empty:
            df["compression"] = 1.0 - df["params"] / df["dense_params"]
        return df

    def totals(self) -> dict:
        dense = sum(r.dense_params for r in self.layers)
        params = sum(r.params for r in self.layers)
        budget = sum(r.budget_params for r in self.layers)
        return {
            "layers": len(self.layers),
            "dense_params": dense,
            "params": params,
            "budget_params": budget,
            "compression": 1.0 - params / dense if dense else 0.0,
            "dead_columns": sum(r.dead_columns for r in self.layers),
            "seconds": round(sum(r.seconds for r in self.layers), 3),
        }

    def summary(self) -> str:
        """Per-block table plus whole-model totals, as text."""
        df = self.to_frame()
        if df.empty:
            return "no layers compressed"
        per_block = df.groupby("block").agg(
            layers=("name", "count"), dense=("dense_params", "sum"), kept=("params", "sum"),
            rank=("rank", "mean"), dead=("dead_columns", "sum"), seconds=("seconds", "sum"))
        per_block["compression"] = 1 - per_block["kept"] / per_block["dense"]
        t = self.totals()
        lines = [per_block.to_string(float_format=lambda x: f"{x:.4f}"),
                 f"whole model (compressed layers): {t['params']:,} of {t['dense_params']:,} parameters kept "
                 f"(budget {t['budget_params']:,}); compression {t['compression']:.4f}; "
                 f"dead input columns {t['dead_columns']}; compression time {t['seconds']:.1f}s"]
        return "\n".join(lines)
