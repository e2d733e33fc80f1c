"""Gather run results into the paper's table layout, check them against expected values, plot figures."""
from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from oats.io import atomic_write_text

from .tables import REPO, Run, TableSpec

EXPECTED_DIR = REPO / "results" / "expected"
STATUS_MARK = {"pass": "✓", "fail": "✗", "unchecked": "", "missing": ""}


@dataclass(frozen=True)
class Tolerance:
    rel: float | None = None
    abs: float | None = None

    def check(self, value: float, expected: float) -> tuple[bool, float]:
        """(within tolerance, delta as reported: relative if rel is set, else absolute)."""
        if self.rel is not None:
            delta = (value - expected) / abs(expected)
            return abs(delta) <= self.rel, delta
        delta = value - expected
        return abs(delta) <= (self.abs or 0.0), delta

    def __str__(self) -> str:
        return f"±{self.rel:.1%}" if self.rel is not None else f"±{self.abs:g}"


@dataclass
class Expected:
    tolerances: dict[str, Tolerance]
    cells: dict[tuple[str, str, str], tuple[float, str]]
    source: str = ""
    cell_tolerances: dict[tuple[str, str, str], Tolerance] = field(default_factory=dict)

    def tolerance(self, key: tuple[str, str, str]) -> Tolerance:
        """The cell's own tolerance if it has one, else its metric's."""
        return self.cell_tolerances.get(key) or self.tolerances[key[2]]


def load_expected(name: str | None, directory: Path = EXPECTED_DIR) -> Expected:
    """``results/expected/NAME.yaml``: tolerances per metric and sourced values per cell.

    A cell without a value (or not listed) is unchecked; every value must carry a source.
    A cell may carry its own ``tolerance`` (e.g. a method whose result varies more between
    machines); the others use their metric's.
    """
    if not name:
        return Expected({}, {})
    path = directory / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"expected values {path} not found (table names expected: {name!r})")
    data = yaml.safe_load(path.read_text()) or {}
    def tolerance(tol: Any, what: str) -> Tolerance:
        if not isinstance(tol, dict) or set(tol) - {"rel", "abs"} or not tol:
            raise ValueError(f"{path}: tolerance of {what} must be {{rel: x}} or {{abs: x}}, got {tol!r}")
        return Tolerance(tol.get("rel"), tol.get("abs"))

    tolerances = {metric: tolerance(tol, repr(metric)) for metric, tol in (data.get("tolerances") or {}).items()}
    cells, cell_tolerances = {}, {}
    for cell in data.get("cells") or []:
        if cell.get("value") is None:
            continue
        source = cell.get("source") or data.get("source")
        if not source:
            raise ValueError(f"{path}: cell {cell} has a value but no source")
        if cell["metric"] not in tolerances:
            raise ValueError(f"{path}: no tolerance for metric {cell['metric']!r}")
        key = (str(cell["row"]), str(cell["col"]), cell["metric"])
        cells[key] = (float(cell["value"]), source)
        if cell.get("tolerance") is not None:
            cell_tolerances[key] = tolerance(cell["tolerance"], f"cell {key}")
    return Expected(tolerances, cells, data.get("source", ""), cell_tolerances)


def metric_values(result: dict) -> dict[str, float]:
    """Flat ``task/metric -> value`` of one result (suites such as ``zeroshot/mean`` come from the
    lm-eval bridge), plus the measured compression and the timings."""
    out = {f"{r['task']}/{r['metric']}": float(r["value"]) for r in result.get("metrics") or []}
    comp = result.get("compression") or {}
    if comp:
        out["model/compression"] = float(comp["compression"])
    elif (result.get("method") or {}).get("name") == "dense":
        out["model/compression"] = 0.0
    for k, v in (result.get("timings") or {}).items():
        out[f"time/{k}"] = float(v)
    return out


def read_result(results_dir: Path, run_id: str) -> dict | None:
    path = results_dir / "runs" / run_id / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def gather(spec: TableSpec, runs: list[Run], results_dir: Path, expected: Expected) -> pd.DataFrame:
    """Long table: one line per (row, col, metric) with value, expected, delta and status."""
    lines = []
    for run in runs:
        result = read_result(results_dir, run.run_id)
        values = metric_values(result) if result else {}
        for metric in spec.metrics:
            value = values.get(metric)
            key = (run.row, run.col, metric)
            exp = expected.cells.get(key)
            status, delta, tol = ("unchecked", None, None)
            if value is None:
                status = "missing"
            elif exp is not None:
                tol = expected.tolerance(key)
                ok, delta = tol.check(value, exp[0])
                status = "pass" if ok else "fail"
            lines.append({
                "row": run.row, "col": run.col, "metric": metric, "value": value,
                "expected": exp[0] if exp else None, "delta": delta, "tolerance": str(tol) if tol else None,
                "status": status, "source": exp[1] if exp else None, "run_id": run.run_id,
            })
    df = pd.DataFrame(lines)
    order_r = {r: i for i, r in enumerate(spec.rows)}
    order_c = {c: i for i, c in enumerate(spec.cols)}
    order_m = {m: i for i, m in enumerate(spec.metrics)}
    return df.sort_values(by=["metric", "row", "col"], key=lambda s: s.map({**order_m, **order_r, **order_c}),
                          kind="stable").reset_index(drop=True)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.2f}"


def _cell(line: pd.Series) -> str:
    text = _fmt(line["value"])
    if line["status"] in ("pass", "fail"):
        d = line["delta"]
        delta = f"{d:+.1%}" if "%" in str(line["tolerance"]) else f"{d:+.4f}"
        text += f" {STATUS_MARK[line['status']]} ({delta})"
    return text


def to_markdown(spec: TableSpec, df: pd.DataFrame) -> str:
    """One pivot table per metric in the paper's layout (rows = methods, columns = settings)."""
    parts = [f"# {spec.title}", ""]
    for metric in spec.metrics:
        sub = df[df.metric == metric]
        pivot = sub.assign(cell=sub.apply(_cell, axis=1)).pivot(index="row", columns="col", values="cell")
        pivot = pivot.reindex(index=[r for r in spec.rows if r in pivot.index],
                              columns=[c for c in spec.cols if c in pivot.columns]).fillna("")
        parts += [f"## {metric}", "", pivot.to_markdown(), ""]
    counts = df.status.value_counts().to_dict()
    parts.append("cells: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("pass", "fail", "unchecked", "missing")))
    parts.append("✓ within tolerance, ✗ outside (delta vs expected); unmarked cells have no sourced expected value.")
    return "\n".join(parts) + "\n"


def write_table(spec: TableSpec, df: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    csv_path, md_path = out_dir / f"{spec.name}.csv", out_dir / f"{spec.name}.md"
    atomic_write_text(csv_path, df.to_csv(index=False))
    atomic_write_text(md_path, to_markdown(spec, df))
    return csv_path, md_path


def _x_value(label: str, spec: TableSpec) -> float | None:
    mapping = spec.plot.get("x_values") or {}
    if label in mapping:
        return float(mapping[label])
    try:
        return float(label.rstrip("%")) / (100 if label.endswith("%") else 1)
    except ValueError:
        return None


def plot(spec: TableSpec, df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Metric vs the column setting, one line per row; one PNG per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for metric in spec.metrics:
        sub = df[(df.metric == metric) & df.value.notna()]
        if sub.empty:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for row in spec.rows:
            pts = [(_x_value(c, spec), v) for c, v in zip(sub[sub.row == row].col, sub[sub.row == row].value)]
            pts = sorted(p for p in pts if p[0] is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) > 1 else "s", label=row,
                        linestyle="-" if len(pts) > 1 else "none")
        ax.set_xlabel(spec.plot.get("x_label", "setting"))
        ax.set_ylabel(metric)
        if spec.plot.get("log_y"):
            ax.set_yscale("log")
        ax.set_title(spec.title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{spec.name}__{metric.replace('/', '_')}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def run_figures(spec: TableSpec, runs: list[Run], results_dir: Path, out_dir: Path) -> list[Path]:
    """Copy the figures that runs wrote themselves (metrics carrying a ``figure`` path, e.g. attention
    rollout) to ``out_dir/<table>__<row>__<col>.png``."""
    paths = []
    for run in runs:
        result = read_result(results_dir, run.run_id) or {}
        sources = {r["figure"] for r in result.get("metrics") or [] if r.get("figure")}
        for i, src in enumerate(sorted(sources)):
            src_path = results_dir / "runs" / run.run_id / Path(src).name
            if not src_path.is_file():
                continue
            slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", f"{run.row}__{run.col}").strip("_")
            dest = out_dir / f"{spec.name}__{slug}{f'_{i}' if i else ''}{src_path.suffix}"
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_path, dest)
            paths.append(dest)
    return paths
