"""Record a gathered table as this project's own reference values (results/expected/NAME.yaml).

    python reproduce/record_expected.py smollm2_ci --tol wikitext2/token_perplexity=rel:0.02 \\
        --tol piqa_local/acc_norm=abs:0.02 --note "32x512 wiki calibration, ..."

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
    p.add_argument("--note", default="", help="settings of the reference run")
    p.add_argument("--results-dir", default=str(REPO / "results"))
    args = p.parse_args()
    df = pd.read_csv(f"{args.results_dir}/tables/{args.table}.csv")
    tolerances = {}
    for spec in args.tol:
        metric, _, rule = spec.partition("=")
        kind, _, value = rule.partition(":")
        if kind not in ("rel", "abs"):
            raise SystemExit(f"--tol {spec!r}: write METRIC=rel:X or METRIC=abs:X")
        tolerances[metric] = {kind: float(value)}
    missing = set(df.metric) - set(tolerances)
    if missing:
        raise SystemExit(f"give a --tol for every metric of the table; missing: {sorted(missing)}")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    source = (f"this project's reference run, {datetime.date.today()}, git {git}"
              + (f"; {args.note}" if args.note else ""))
    cells = [{"row": r.row, "col": str(r.col), "metric": r.metric, "value": round(float(r.value), 6)}
             for r in df.itertuples() if pd.notna(r.value)]
    doc = {"source": source, "tolerances": tolerances, "cells": cells}
    header = f"# Reference values of table {args.table!r}: recorded by reproduce/record_expected.py.\n"
    atomic_write_text(EXPECTED_DIR / f"{args.table}.yaml", header + yaml.safe_dump(doc, sort_keys=False))
    print(f"wrote {EXPECTED_DIR / f'{args.table}.yaml'} with {len(cells)} cells")


if __name__ == "__main__":
    main()
