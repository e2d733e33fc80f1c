"""Reproduce one table or figure of the paper: ``python reproduce/run.py table=llama3_60``.

Expands the table's grid of runs, skips runs whose results exist, runs the rest
(here, or on SLURM with ``launcher=slurm``), then gathers the results into the
paper's layout, checks them against ``results/expected/``, writes CSV, Markdown
and PNG plots, logs to wandb (offline by default) and exits non-zero when a
checked cell is outside its tolerance or a run failed.

Any other override applies to every run: ``method.iterations=20``,
``data=c4``, ``device=cuda``. ``dry_run=true`` lists the runs and stops; ``gather_only=true``
gathers the runs that are done (while others still run, say) and runs nothing.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # OpenBLAS threads sleep after a call instead of spinning
# ~0.07 s (2^28 cycles) on the cores the next kernel needs; read when numpy loads, so set before any import of it

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from oats.config import RunConfig
from reproduce.gather import aggregate, check_orderings, collect, plot, run_figures, to_markdown, write_table
from reproduce.expected import load_expected
from reproduce.launch import launch_local, launch_slurm
from reproduce.store import RunStore
from reproduce.tables import (CONF_DIR, Repeat, TableConfigError, TableSpec, expand, forwarded_overrides,
                              list_tables)

NEEDS = {  # capability -> module that provides it (tables may list code arriving in later issues)
    "vision": "oats.vision",
    "cpu_speed": "oats.speed",
}


def _capability_missing(need: str | None) -> str | None:
    if not need:
        return None
    import importlib.util

    module = NEEDS.get(need)
    if module is None:
        return f"unknown capability {need!r}; known: {', '.join(NEEDS)}"
    return None if importlib.util.find_spec(module) else f"needs {module} ({need}), which this project does not have yet"


def plan(cfg: DictConfig):
    spec = TableSpec.from_config(OmegaConf.to_container(cfg.table, resolve=True))
    runs = expand(spec, forwarded_overrides(list(HydraConfig.get().overrides.task)), repeat_of(cfg))
    for run in runs:  # every value checked before any work starts
        try:
            RunConfig.parse(run.config)
        except ValueError as e:
            raise TableConfigError(f"table {spec.name}, cell {run.row}|{run.col}: {e}") from None
    return spec, runs


def repeat_of(cfg: DictConfig) -> Repeat:
    return Repeat.from_config(OmegaConf.to_container(cfg.repeat, resolve=True) if "repeat" in cfg else None)


EXIT_CODES: list[int] = []  # one per table run (several with -m); the process exits with the worst


@hydra.main(config_path=str(CONF_DIR), config_name="reproduce", version_base="1.3")
def main(cfg: DictConfig) -> None:
    EXIT_CODES.append(reproduce(cfg))


def reproduce(cfg: DictConfig) -> int:
    try:
        spec, runs = plan(cfg)
        expected = load_expected(spec.expected)
    except (TableConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results_dir = Path(to_absolute_path(cfg.results_dir))
    unique = list({r.run_id: r for r in runs}.values())
    store = RunStore(results_dir)
    done = {r.run_id for r in unique if store.done(r.run_id)}
    pending = unique if cfg.rerun else [r for r in unique if r.run_id not in done]
    print(f"table {spec.name}: {len(runs)} cells, {len(unique)} distinct runs, {len(unique) - len(pending)} done, "
          f"{len(pending)} to run ({cfg.launcher.name})")
    if cfg.dry_run:
        for r in runs:
            state = "done" if r.run_id in done else "pending"
            rep = f" | {r.rep}" if r.rep else ""
            print(f"  {r.run_id}  {state:<7}  {r.row} | {r.col}{rep}  {' '.join(r.overrides)}")
        return 0
    missing = _capability_missing(spec.needs) if pending else None
    if missing:
        print(f"error: table {spec.name} {missing}", file=sys.stderr)
        return 2

    wandb_cfg = OmegaConf.to_container(cfg.wandb, resolve=True)
    wandb_cfg["dir"] = wandb_cfg.get("dir") or str(results_dir / "wandb")
    failures = []
    if pending and cfg.get("gather_only"):
        print(f"gather_only: {len(pending)} run(s) not done are left out (their cells read 'missing')")
    elif pending:
        if cfg.launcher.name == "local":
            failures = launch_local(pending, results_dir, wandb_cfg, rerun=bool(cfg.rerun))
        else:
            failures = launch_slurm(pending, results_dir, cfg.launcher, spec.name, wandb_cfg)

    per_run = collect(spec, runs, results_dir)
    df = aggregate(spec, per_run, expected)
    orderings = check_orderings(expected, df)
    repeat = repeat_of(cfg)
    stem = spec.name if repeat.name == "single" else f"{spec.name}-{repeat.name}"  # repeated tables beside the plain one
    csv_path, md_path = write_table(spec, df, results_dir / "tables", per_run, orderings, stem)
    figures = plot(spec, df, results_dir / "figures", stem) if spec.kind == "figure" or spec.plot else []
    figures += run_figures(spec, runs, results_dir, results_dir / "figures")
    print()
    print(to_markdown(spec, df, orderings))
    print(f"table: {csv_path}, {md_path}")
    for f in figures:
        print(f"figure: {f}")
    from reproduce.wandb_log import log_table

    try:
        log_table(spec.name, df, figures, OmegaConf.to_container(cfg.table, resolve=True), wandb_cfg,
                  Path(wandb_cfg["dir"]))
    except Exception as e:  # noqa: BLE001 - the report is auxiliary; the table files are written
        print(f"warning: wandb logging of the table failed: {type(e).__name__}: {e}", file=sys.stderr)
    for f in failures:
        print(f"FAILED run {f.run.run_id} ({f.run.row} | {f.run.col}): {f.reason}; log: {f.log}", file=sys.stderr)
    n_fail = int((df.status == "fail").sum())
    if n_fail:
        print(f"{n_fail} checked cell(s) outside tolerance", file=sys.stderr)
    n_order = int((orderings.status == "fail").sum())
    if n_order:
        print(f"{n_order} expected ordering(s) do not hold", file=sys.stderr)
    return 1 if (n_fail or n_order or failures) else 0


def entry() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--list", "list"):
        print("\n".join(list_tables()))
        return
    main()
    sys.exit(max(EXIT_CODES, default=0))


if __name__ == "__main__":
    entry()
