"""Record a gathered table as this project's own reference values (results/expected/NAME.yaml).

    python reproduce/record_expected.py smollm2_ci --tol wikitext2/token_perplexity=rel:0.02 \\
        --tol piqa_local/acc_norm=abs:0.02 --row-tol "OATS@wikitext2/token_perplexity=rel:0.1" \\
        --note "32x512 wiki calibration, ..."

--row-tol gives one row's cells of a metric their own tolerance (a method whose result
varies more between machines or thread counts than the others).

Only for tables whose expectations are a reference run of this project (smoke, smollm2_ci):
paper values are entered by hand with their source.
"""
from __future__ import annotations

import argparse
import datetime
import subprocess

import pandas as pd
import yaml

from oats.io import atomic_write_text
from reproduce.gather import EXPECTED_DIR
from reproduce.tables import REPO


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table")
    p.add_argument("--tol", action="append", default=[], help="METRIC=rel:X or METRIC=abs:X (one per metric)")
    p.add_argument("--row-tol", action="append", default=[], help="ROW@METRIC=rel:X or ROW@METRIC=abs:X")
    p.add_argument("--note", default="", help="settings of the reference run")
    p.add_argument("--results-dir", default=str(REPO / "results"))
    args = p.parse_args()
    df = pd.read_csv(f"{args.results_dir}/tables/{args.table}.csv")

    def parse(option: str, spec: str, target: str) -> tuple[str, dict]:
        key, _, rule = spec.partition("=")
        kind, _, value = rule.partition(":")
        try:
            if kind in ("rel", "abs"):
                return key, {kind: float(value)}
        except ValueError:
            pass
        raise SystemExit(f"{option} {spec!r}: write {target}=rel:X or {target}=abs:X")

    tolerances = dict(parse("--tol", spec, "METRIC") for spec in args.tol)
    row_tols = {}
    for spec in args.row_tol:
        key, tol = parse("--row-tol", spec, "ROW@METRIC")
        row, _, metric = key.partition("@")
        if row not in set(df.row) or metric not in set(df.metric):
            raise SystemExit(f"--row-tol {spec!r}: rows are {sorted(set(df.row))}, metrics {sorted(set(df.metric))}")
        row_tols[(row, metric)] = tol
    missing = set(df.metric) - set(tolerances)
    if missing:
        raise SystemExit(f"give a --tol for every metric of the table; missing: {sorted(missing)}")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    source = (f"this project's reference run, {datetime.date.today()}, git {git}"
              + (f"; {args.note}" if args.note else ""))
    cells = [{"row": r.row, "col": str(r.col), "metric": r.metric, "value": round(float(r.value), 6),
              **({"tolerance": row_tols[(r.row, r.metric)]} if (r.row, r.metric) in row_tols else {})}
             for r in df.itertuples() if pd.notna(r.value)]
    doc = {"source": source, "tolerances": tolerances, "cells": cells}
    header = f"# Reference values of table {args.table!r}: recorded by reproduce/record_expected.py.\n"
    atomic_write_text(EXPECTED_DIR / f"{args.table}.yaml", header + yaml.safe_dump(doc, sort_keys=False))
    print(f"wrote {EXPECTED_DIR / f'{args.table}.yaml'} with {len(cells)} cells")


if __name__ == "__main__":
    main()
