"""Would the reference hold on another machine? Check every perturbation's runs on their own.

    python reproduce/check_spread.py smollm2_ci [--runs results/tables/smollm2_ci-machines.runs.csv ...]

For each perturbation (runtime, seed, or another machine's rows) of a repeated table's per-run CSV:
(1) its runs checked against ``results/expected/NAME.yaml``, as the regression test checks one fresh
run; (2) leave-one-out: the reference rebuilt by the file's own rule from every *other* perturbation
and the held-out one checked against it, a machine the reference has never seen. Prints one line per
perturbation (pass / fail / unstable cells and the failing cells) and exits 1 if any check fails.

``--by cpu`` holds out a whole CPU instead (every runtime run on it): would a reference recorded on
the other machines have passed this one? ``--supersede`` as in record_expected.py (rows re-run after
their method changed replace theirs), so that both scripts read the same runs.

    python reproduce/check_spread.py smollm2_ci --by cpu --runs results/tables/smollm2_ci-machines.runs.csv \\
        --runs results/spread/smollm2_ci-intel-xeon.runs.csv --runs results/spread/smollm2_ci-intel-xeon-amx.runs.csv \\
        --supersede results/spread/smollm2_ci-oats-onestep.runs.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reproduce.expected import EXPECTED_DIR, Expected, load_expected  # noqa: E402
from reproduce.record_expected import cell_stats, read_runs  # noqa: E402
from reproduce.tables import REPO  # noqa: E402


def check_rep(runs: pd.DataFrame, expected: Expected) -> tuple[int, int, int, list[str]]:
    """(pass, fail, unstable, failures) of one perturbation's runs against ``expected``."""
    passed = failed = unstable = 0
    failures = []
    for r in runs.itertuples():
        key = (str(r.row), str(r.col), r.metric)
        if key not in expected.cells or pd.isna(r.value):
            continue
        tol, wide = expected.judge(key)
        if wide:
            unstable += 1
            continue
        ok, delta = tol.check(float(r.value), expected.cells[key][0])
        passed += ok
        failed += not ok
        if not ok:
            failures.append(f"{key[0]}|{key[1]}|{key[2].split('/')[-1]} {float(r.value):.4g} ({delta:+.4g} vs {tol})")
    return passed, failed, unstable, failures


def leave_out(runs: pd.DataFrame, rep: str, expected: Expected, by: str = "rep") -> Expected:
    """The reference rebuilt from every run whose ``by`` column (perturbation or CPU) is not ``rep``,
    under ``expected``'s rule."""
    others = runs[runs[by] != rep]
    stats = cell_stats(others)
    return Expected({}, {k: (mean, "leave-one-out") for k, (mean, _) in stats.items()},
                    spreads={k: sp for k, (_, sp) in stats.items()}, rule=expected.rule)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table")
    p.add_argument("--runs", action="append", default=[], help="per-run CSV(s) (default TABLE-machines.runs.csv)")
    p.add_argument("--supersede", action="append", default=[], help="per-run CSV of re-run rows replacing theirs")
    p.add_argument("--by", choices=["rep", "cpu"], default="rep",
                   help="hold out one perturbation (rep) or all the runs of one CPU (cpu)")
    p.add_argument("--expected", default=str(EXPECTED_DIR), help="folder of the expected files")
    args = p.parse_args()
    paths = [Path(x) for x in args.runs] or [REPO / "results" / "tables" / f"{args.table}-machines.runs.csv"]
    runs = read_runs(args.table, paths, [Path(x) for x in args.supersede])
    runs = runs.dropna(subset=["value"])  # runs that failed or never ran carry no CPU and no result
    runs["rep"] = runs.rep.fillna("(own)").astype(str)
    if args.by == "cpu":
        if "cpu" not in runs or runs.cpu.dropna().nunique() < 2:
            raise SystemExit("--by cpu needs runs of at least two CPUs (a cpu column with two values)")
        runs["cpu"] = runs.cpu.fillna("?").astype(str)
    expected = load_expected(args.table, Path(args.expected))
    if expected.rule is None:
        raise SystemExit(f"{args.expected}/{args.table}.yaml has no rule: record it with reproduce/record_expected.py")
    bad = 0
    print(f"{'perturbation' if args.by == 'rep' else 'cpu':44} {'vs reference':>22} {'leave-one-out':>22}")
    for rep, grp in runs.groupby(args.by, sort=False):
        a = check_rep(grp, expected)
        b = check_rep(grp, leave_out(runs, rep, expected, args.by))
        bad += a[1] + b[1]
        print(f"{rep:44} {a[0]:>4} pass {a[1]:>2} fail {a[2]:>2} unst {b[0]:>4} pass {b[1]:>2} fail {b[2]:>2} unst")
        for f in a[3]:
            print(f"    reference fail: {f}")
        for f in b[3]:
            print(f"    leave-one-out fail: {f}")
    return int(bad > 0)


if __name__ == "__main__":
    sys.exit(main())
