"""Gather run results into the paper's table layout, check them against expected values, plot figures.

:func:`collect` reads one line per (run, metric); :func:`aggregate` folds a cell's runs (its
repetitions over seeds or runtimes, ``repeat=...``) into mean, std, min-max and the mean lm-eval
standard error, and checks the mean against ``results/expected/NAME.yaml`` (:mod:`reproduce.expected`).
"""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from oats.io import atomic_write_text

from .expected import Expected
from .store import RunStore
from .tables import Run, TableSpec

STATUS_MARK = {"pass": "✓", "fail": "✗", "unstable": "~", "unchecked": "", "missing": ""}
STATUSES = ("pass", "fail", "unstable", "unchecked", "missing")


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


def metric_stderrs(result: dict) -> dict[str, float]:
    """``task/metric -> standard error`` where the evaluation gave one (lm-eval tasks)."""
    return {f"{r['task']}/{r['metric']}": float(r["stderr"]) for r in result.get("metrics") or []
            if isinstance(r.get("stderr"), (int, float))}


def collect(spec: TableSpec, runs: list[Run], results_dir: Path) -> pd.DataFrame:
    """One line per (run, metric): row, col, rep, metric, value (None if missing), stderr, run_id, cpu."""
    lines, store = [], RunStore(results_dir)
    for run in runs:
        result = store.result(run.run_id) or {}
        values, stderrs = metric_values(result), metric_stderrs(result)
        cpu = (result.get("runtime") or {}).get("cpu")
        for metric in spec.metrics:
            lines.append({"row": run.row, "col": run.col, "rep": run.rep, "metric": metric,
                          "value": values.get(metric), "stderr": stderrs.get(metric), "run_id": run.run_id,
                          "cpu": cpu})
    return pd.DataFrame(lines, columns=["row", "col", "rep", "metric", "value", "stderr", "run_id", "cpu"])


def aggregate(spec: TableSpec, per_run: pd.DataFrame, expected: Expected) -> pd.DataFrame:
    """One line per (row, col, metric): mean value, std, min, max, n runs, stderr; checked.

    status: pass / fail (mean vs expected within tolerance), unstable (the cell's measured spread
    is too wide to check), unchecked (no expected value), missing (no run has the metric).
    """
    lines = []
    for (row, col, metric), grp in per_run.groupby(["row", "col", "metric"], sort=False):
        vals = grp.value.dropna().astype(float)
        n = len(vals)
        value = float(vals.mean()) if n else None
        key = (row, col, metric)
        exp = expected.cells.get(key)
        status, delta, tol = "unchecked", None, None
        if value is None:
            status = "missing"
        elif exp is not None:
            tol, unstable = expected.judge(key)
            ok, delta = tol.check(value, exp[0])
            status = "unstable" if unstable else ("pass" if ok else "fail")
        se = grp.stderr.dropna()
        lines.append({
            "row": row, "col": col, "metric": metric, "value": value,
            "std": float(vals.std(ddof=1)) if n > 1 else None,
            "min": float(vals.min()) if n else None, "max": float(vals.max()) if n else None, "n": n,
            "stderr": float(se.mean()) if len(se) else None,
            "expected": exp[0] if exp else None, "delta": delta, "tolerance": str(tol) if tol else None,
            "status": status, "source": exp[1] if exp else None,
            "run_id": grp.run_id.iloc[0] if n <= 1 else ",".join(grp.run_id),
        })
    df = pd.DataFrame(lines)
    order = {**{m: i for i, m in enumerate(spec.metrics)}, **{r: i for i, r in enumerate(spec.rows)},
             **{c: i for i, c in enumerate(spec.cols)}}
    return df.sort_values(by=["metric", "row", "col"], key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def gather(spec: TableSpec, runs: list[Run], results_dir: Path, expected: Expected) -> pd.DataFrame:
    """The checked table of ``runs`` (see :func:`aggregate`)."""
    return aggregate(spec, collect(spec, runs, results_dir), expected)


def check_orderings(expected: Expected, df: pd.DataFrame) -> pd.DataFrame:
    """Each expected ordering against the table: lower/higher values and pass / fail / missing."""
    values = {(r.row, r.col, r.metric): r.value for r in df.itertuples()}
    lines = []
    for o in expected.orderings:
        lo, hi = values.get((o.lower, o.col, o.metric)), values.get((o.higher, o.col, o.metric))
        have = lo is not None and hi is not None and not (pd.isna(lo) or pd.isna(hi))
        lines.append({"metric": o.metric, "col": o.col, "lower": o.lower, "higher": o.higher,
                      "lower_value": lo, "higher_value": hi,
                      "status": ("pass" if lo < hi else "fail") if have else "missing"})
    return pd.DataFrame(lines, columns=["metric", "col", "lower", "higher", "lower_value", "higher_value", "status"])


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.2f}"


def _present(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _cell(line: pd.Series) -> str:
    text = _fmt(line["value"])
    if line.get("n", 1) > 1 and _present(line.get("std")):
        text += f" ±{_fmt(line['std'])} [{_fmt(line['min'])}–{_fmt(line['max'])}]"
    elif _present(line.get("stderr")):
        text += f" (se {line['stderr']:.3f})"
    if line["status"] in ("pass", "fail", "unstable"):
        d = line["delta"]
        delta = f"{d:+.1%}" if "%" in str(line["tolerance"]) else f"{d:+.4f}"
        if line["status"] == "unstable":
            text += f" ~ ({delta}; unstable: spread {line['tolerance']})"
        else:
            text += f" {STATUS_MARK[line['status']]} ({delta})"
    return text


def to_markdown(spec: TableSpec, df: pd.DataFrame, orderings: pd.DataFrame | None = None) -> str:
    """One pivot table per metric in the paper's layout (rows = methods, columns = settings)."""
    parts = [f"# {spec.title}", ""]
    for metric in spec.metrics:
        sub = df[df.metric == metric]
        pivot = sub.assign(cell=sub.apply(_cell, axis=1)).pivot(index="row", columns="col", values="cell")
        pivot = pivot.reindex(index=[r for r in spec.rows if r in pivot.index],
                              columns=[c for c in spec.cols if c in pivot.columns]).fillna("")
        parts += [f"## {metric}", "", pivot.to_markdown(), ""]
    if orderings is not None and len(orderings):
        parts += ["## orderings", ""]
        for o in orderings.itertuples():
            mark = {"pass": "✓", "fail": "✗"}.get(o.status, "missing")
            parts.append(f"- {o.col} {o.metric}: {o.lower} ({_fmt(o.lower_value)}) < {o.higher} "
                         f"({_fmt(o.higher_value)}) {mark}")
        parts.append("")
    counts = df.status.value_counts().to_dict()
    parts.append("cells: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in STATUSES))
    if orderings is not None and len(orderings):
        oc = orderings.status.value_counts().to_dict()
        parts.append("orderings: " + ", ".join(f"{k} {oc.get(k, 0)}" for k in ("pass", "fail", "missing")))
    parts.append("✓ within tolerance, ✗ outside (delta vs expected), ~ unstable (measured spread too wide to "
                 "check); unmarked cells have no sourced expected value. Repeated cells: mean ±std [min–max].")
    return "\n".join(parts) + "\n"


def write_table(spec: TableSpec, df: pd.DataFrame, out_dir: Path, per_run: pd.DataFrame | None = None,
                orderings: pd.DataFrame | None = None, stem: str | None = None) -> tuple[Path, Path]:
    """``STEM.csv`` (one line per cell), ``STEM.md``, and ``STEM.runs.csv`` (one line per run) when a
    cell has several runs. ``stem`` defaults to the table's name."""
    stem = stem or spec.name
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    atomic_write_text(csv_path, df.to_csv(index=False))
    atomic_write_text(md_path, to_markdown(spec, df, orderings))
    if per_run is not None and (df.n > 1).any():
        atomic_write_text(out_dir / f"{stem}.runs.csv", per_run.to_csv(index=False))
        atomic_write_text(out_dir / f"{stem}.runs.md", runs_markdown(spec, per_run))
    return csv_path, md_path


def runs_markdown(spec: TableSpec, per_run: pd.DataFrame) -> str:
    """Every run's value, one table per metric: a line per cell, a column per repetition (seed, runtime)."""
    parts = [f"# {spec.title}: every run", ""]
    reps = list(dict.fromkeys(per_run.rep.fillna("")))
    for metric in spec.metrics:
        sub = per_run[per_run.metric == metric].assign(cell=lambda d: d.row + " @ " + d.col,
                                                       rep=lambda d: d.rep.fillna("") .replace("", "(own)"))
        pivot = sub.pivot_table(index="cell", columns="rep", values="value", aggfunc="first", sort=False)
        pivot = pivot.reindex(columns=[r or "(own)" for r in reps if (r or "(own)") in pivot.columns])
        parts += [f"## {metric}", "", pivot.map(_fmt).to_markdown(disable_numparse=True), ""]
    return "\n".join(parts) + "\n"


def _x_value(label: str, spec: TableSpec) -> float | None:
    mapping = spec.plot.get("x_values") or {}
    if label in mapping:
        return float(mapping[label])
    try:
        return float(label.rstrip("%")) / (100 if label.endswith("%") else 1)
    except ValueError:
        return None


def plot(spec: TableSpec, df: pd.DataFrame, out_dir: Path, stem: str | None = None) -> list[Path]:
    """Metric vs the column setting, one line per row, error bars = std over a cell's runs (or the
    lm-eval standard error of a single run); one PNG per metric."""
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
            pts = []
            for line in sub[sub.row == row].itertuples():
                x = _x_value(line.col, spec)
                err = line.std if _present(getattr(line, "std", None)) else getattr(line, "stderr", None)
                if x is not None:
                    pts.append((x, line.value, err if _present(err) else 0.0))
            if pts:
                xs, ys, es = zip(*sorted(pts))
                ax.errorbar(xs, ys, yerr=es if any(es) else None, marker="o" if len(pts) > 1 else "s", label=row,
                            linestyle="-" if len(pts) > 1 else "none", capsize=3)
        ax.set_xlabel(spec.plot.get("x_label", "setting"))
        ax.set_ylabel(metric)
        if spec.plot.get("log_y"):
            ax.set_yscale("log")
        ax.set_title(spec.title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{stem or spec.name}__{metric.replace('/', '_')}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def run_figures(spec: TableSpec, runs: list[Run], results_dir: Path, out_dir: Path) -> list[Path]:
    """Copy the figures that runs wrote themselves (metrics carrying a ``figure`` path, e.g. attention
    rollout) to ``out_dir/<table>__<row>__<col>.png``."""
    paths, seen, store = [], set(), RunStore(results_dir)
    for run in runs:
        if (run.row, run.col) in seen:  # a cell's repetitions draw the same figure again
            continue
        seen.add((run.row, run.col))
        result = store.result(run.run_id) or {}
        sources = {r["figure"] for r in result.get("metrics") or [] if r.get("figure")}
        for i, src in enumerate(sorted(sources)):
            src_path = store.folder(run.run_id) / Path(src).name
            if not src_path.is_file():
                continue
            slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", f"{run.row}__{run.col}").strip("_")
            dest = out_dir / f"{spec.name}__{slug}{f'_{i}' if i else ''}{src_path.suffix}"
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_path, dest)
            paths.append(dest)
    return paths
