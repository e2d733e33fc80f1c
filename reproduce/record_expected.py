"""Record a gathered table as this project's own reference values (results/expected/NAME.yaml).

From a table repeated over the ways machines differ (``reproduce/run.py table=NAME repeat=machines``
writes ``results/tables/NAME-machines.runs.csv``), each cell's reference is the mean of its runs and
its tolerance follows from the measured spread by one rule, written in the file:

    python reproduce/record_expected.py smollm2_ci --runs results/tables/smollm2_ci-machines.runs.csv \\
        --k 3 --floor wikitext2/token_perplexity=rel:0.005 --floor piqa_local/acc_norm=abs:0.005 \\
        --max wikitext2/token_perplexity=rel:0.05 --max piqa_local/acc_norm=abs:0.025 --note "..."

tolerance = max(k * std, floor); a cell whose tolerance would exceed ``--max`` is recorded as
unstable (reported, not checked). The orderings between rows that hold across the spread are
recorded too (reproduce.expected.robust_orderings). Every recorded run must pass the result.

Only for tables whose expectations are a reference run of this project (smoke, smollm2_ci,
fmnist_vit): paper values are entered by hand with their source.
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from oats.io import atomic_write_text
from reproduce.expected import EXPECTED_DIR, Rule, Spread, Tolerance, robust_orderings
from reproduce.tables import REPO


def parse_tolerance(option: str, spec: str) -> tuple[str, Tolerance]:
    key, _, rule = spec.partition("=")
    kind, _, value = rule.partition(":")
    try:
        if key and kind in ("rel", "abs"):
            return key, Tolerance.parse({kind: float(value)}, key)
    except ValueError:
        pass
    raise SystemExit(f"{option} {spec!r}: write METRIC=rel:X or METRIC=abs:X (X >= 0)")


def read_runs(table: str, paths: list[Path], supersede: list[Path] = ()) -> pd.DataFrame:
    """The per-run rows of ``paths``; the rows (methods) present in ``supersede`` files replace theirs."""
    for path in [*paths, *supersede]:
        if not path.is_file():
            raise SystemExit(f"{path} not found: run `python reproduce/run.py table={table} repeat=machines` first")

    def read(path: Path) -> pd.DataFrame:
        return pd.read_csv(path, dtype={"col": str, "row": str}, comment="#")

    runs = pd.concat([read(p) for p in paths], ignore_index=True)
    if supersede:
        fresh = pd.concat([read(p) for p in supersede], ignore_index=True)
        runs = pd.concat([runs[~runs.row.isin(set(fresh.row))], fresh], ignore_index=True)
    return runs


def cell_stats(runs: pd.DataFrame) -> dict[tuple[str, str, str], tuple[float, Spread]]:
    """(mean, spread) of every cell of a per-run table (columns row, col, metric, value)."""
    out = {}
    for (row, col, metric), grp in runs.dropna(subset=["value"]).groupby(["row", "col", "metric"], sort=False):
        v = grp.value.astype(float)
        std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out[(str(row), str(col), metric)] = (float(v.mean()), Spread(std, float(v.min()), float(v.max()), len(v)))
    return out


def _sig(x: float) -> float:
    """Eight significant digits (far below any tolerance, and readable)."""
    return float(f"{x:.8g}")


def build(runs: pd.DataFrame, rule: Rule, source: str, perturbations: list[str]) -> dict:
    """The expected-values document of a per-run table under ``rule``."""
    missing = set(runs.metric) - set(rule.floor)
    if missing:
        raise SystemExit(f"give a --floor for every metric of the table; missing: {sorted(missing)}")
    stats = cell_stats(runs)
    cells = []
    for (row, col, metric), (mean, sp) in stats.items():
        cells.append({"row": row, "col": col, "metric": metric, "value": _sig(mean),
                      "spread": {"std": _sig(sp.std), "min": _sig(sp.min), "max": _sig(sp.max), "n": sp.n}})
        tol, unstable = rule.derive(metric, mean, sp)
        if not unstable:
            for v in (sp.min, sp.max):  # every run it was derived from passes it
                assert tol.check(v, mean)[0], (row, col, metric, v, mean, tol)
    orderings = [{"metric": o.metric, "col": o.col, "lower": o.lower, "higher": o.higher}
                 for o in robust_orderings(stats, rule)]
    return {"source": source, "perturbations": perturbations, "rule": rule.to_dict(), "cells": cells,
            "orderings": orderings}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table")
    p.add_argument("--runs", action="append", default=[],
                   help="per-run CSV (default results/tables/TABLE-machines.runs.csv); repeat to add runs made "
                        "elsewhere, e.g. on another machine (results/spread/)")
    p.add_argument("--supersede", action="append", default=[],
                   help="per-run CSV of rows re-run after a change to their method: its rows replace the same "
                        "rows of the --runs files")
    p.add_argument("--k", type=float, default=3.0, help="tolerance = max(k * std, floor)")
    p.add_argument("--floor", action="append", default=[], help="METRIC=rel:X or METRIC=abs:X (one per metric)")
    p.add_argument("--max", action="append", default=[], help="METRIC=rel:X or METRIC=abs:X: wider is unstable")
    p.add_argument("--note", default="", help="settings of the reference runs")
    p.add_argument("--out", default=str(EXPECTED_DIR), help="folder of the expected files")
    args = p.parse_args()
    paths = [Path(p) for p in args.runs] or [REPO / "results" / "tables" / f"{args.table}-machines.runs.csv"]
    newer = [Path(p) for p in args.supersede]
    runs = read_runs(args.table, paths, newer)
    rule = Rule(args.k, dict(parse_tolerance("--floor", s) for s in args.floor),
                dict(parse_tolerance("--max", s) for s in args.max))
    perturbations = sorted({str(r) if isinstance(r, str) else "(this machine's own)" for r in runs.rep})
    cpus = sorted({str(c) for c in runs.get("cpu", pd.Series(dtype=str)).dropna()})
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    source = (f"this project's reference runs, {datetime.date.today()}, git {git}, CPU {', '.join(cpus) or '?'}; "
              f"mean of {runs.run_id.nunique()} runs over {len(perturbations)} perturbations"
              + (f"; {args.note}" if args.note else ""))
    doc = build(runs, rule, source, perturbations)
    header = (f"# Reference values of table {args.table!r}: recorded by reproduce/record_expected.py from\n"
              f"# {', '.join(p.name for p in paths)}"
              + (f" (rows of {', '.join(p.name for p in newer)} replacing theirs)" if newer else "")
              + ". Tolerance per cell = max(k * std, floor) (rule below); "
              "unstable above max.\n")
    out = Path(args.out) / f"{args.table}.yaml"
    atomic_write_text(out, header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    n_unstable = sum(rule.derive(c["metric"], c["value"], Spread(**c["spread"]))[1] for c in doc["cells"])
    print(f"wrote {out}: {len(doc['cells'])} cells ({n_unstable} unstable), {len(doc['orderings'])} orderings")


if __name__ == "__main__":
    main()
