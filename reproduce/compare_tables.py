"""Check that a refactor of the table configs leaves every table's runs as they were.

    python reproduce/compare_tables.py snapshot DIR   # before: dry-run listing + resolved configs per table
    python reproduce/compare_tables.py compare BEFORE AFTER

A snapshot holds, for every table (and smollm2_ci / fmnist_vit with repeat=machines), the output of
``reproduce/run.py table=NAME dry_run=true`` and the resolved config of each run. ``compare`` checks
that the listings have the same (run id, row, col, repetition) lines and counts, and that the
resolved configs are equal apart from ``model.method_params`` (left out of a run's identity: its
values appear resolved in ``method.*``). The overrides text of a listing may differ.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from reproduce.tables import CONF_DIR, REPO, Repeat, TableSpec, expand, list_tables

REPEATED = ("smollm2_ci", "fmnist_vit")  # tables also listed with repeat=machines
LINE = re.compile(r"^\s+([0-9a-f]{12})\s+(done|pending)\s+(.*?)  (\S.*)$")  # id, state, row | col [| rep], overrides
IGNORED = ("method_params",)  # model keys not compared (not part of a run's identity)


def variants() -> list[tuple[str, str, list[str]]]:
    """(snapshot name, table, extra app overrides) of every listing."""
    out = [(t, t, []) for t in list_tables()]
    return out + [(f"{t}-machines", t, ["repeat=machines"]) for t in REPEATED]


def listing(table: str, extra: list[str]) -> str:
    return subprocess.run([sys.executable, str(REPO / "reproduce" / "run.py"), f"table={table}", "dry_run=true",
                           "results_dir=/tmp/compare-tables-none", *extra],
                          capture_output=True, text=True, check=True, cwd=REPO).stdout


def configs(table: str, extra: list[str]) -> list[dict]:
    app = [f"table={table}", *extra]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="compare_tables"):
        cfg = compose(config_name="reproduce", overrides=app)
        spec = TableSpec.from_config(OmegaConf.to_container(cfg.table, resolve=True))
        repeat = Repeat.from_config(OmegaConf.to_container(cfg.repeat, resolve=True))
        runs = expand(spec, repeat=repeat)
    out = []
    for r in runs:
        config = json.loads(json.dumps(r.config, default=str))
        for key in IGNORED:
            config["model"].pop(key, None)
        out.append({"run_id": r.run_id, "row": r.row, "col": r.col, "rep": r.rep, "config": config})
    return out


def snapshot(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, table, extra in variants():
        (folder / f"{name}.txt").write_text(listing(table, extra))
        (folder / f"{name}.json").write_text(json.dumps(configs(table, extra), indent=1, sort_keys=True))
        print(f"saved {name}", flush=True)


def id_lines(text: str) -> list[str]:
    """The listing without its overrides: the header line and (id, state, row | col | rep) per run."""
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            out.append(" ".join(m.groups()[:3]))
        elif line.startswith("table "):
            out.append(line)
    return out


def compare(before: Path, after: Path) -> int:
    bad = 0
    for name, _, _ in variants():
        problems = []
        for ext in ("txt", "json"):
            if not (before / f"{name}.{ext}").exists() or not (after / f"{name}.{ext}").exists():
                problems.append(f"{name}.{ext} missing")
        if not problems:
            b, a = id_lines((before / f"{name}.txt").read_text()), id_lines((after / f"{name}.txt").read_text())
            if b != a or len(b) < 2:
                problems.append("listing ids/rows/cols differ:\n    " + "\n    ".join(sorted(set(b) ^ set(a))))
            cb, ca = (json.loads((d / f"{name}.json").read_text()) for d in (before, after))
            if cb != ca:
                changed = [f"{x['run_id']} {x['row']}|{x['col']}" for x, y in zip(cb, ca) if x != y]
                problems.append(f"resolved configs differ ({len(cb)} vs {len(ca)} runs): {changed}")
        runs = len(id_lines((after / f"{name}.txt").read_text())) - 1 if not problems else "?"
        print(f"{name:<28} {'same' if not problems else 'DIFFERENT'} ({runs} runs)")
        for p in problems:
            print(f"  {p}")
        bad += bool(problems)
    print(f"{len(variants()) - bad} of {len(variants())} listings identical" + (f", {bad} differ" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "snapshot":
        snapshot(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
