"""wandb reporting: offline by default (files land locally; `wandb sync` later), online when configured.

Nothing here may hang without a network: offline mode never contacts a server, and
online mode is used only when the user sets ``wandb.mode=online``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

MODES = ("offline", "online", "disabled")


def _init(wcfg: Mapping[str, Any], name: str, config: dict, job_type: str, directory: Path):
    mode = wcfg.get("mode", "offline")
    if mode not in MODES:
        raise ValueError(f"wandb.mode={mode!r}; allowed: {', '.join(MODES)}")
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        print("wandb is not installed; skipping the wandb log (pip install wandb)")
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    directory.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=wcfg.get("project", "oats-repro"), entity=wcfg.get("entity"), name=name,
                      config=config, job_type=job_type, mode=mode, dir=str(directory), reinit="finish_previous",
                      settings=wandb.Settings(init_timeout=60, _disable_stats=True, console="off"))


def log_run(result: dict, out_dir: Path, wcfg: Mapping[str, Any]) -> None:
    """Config, metrics and the per-layer table of one run."""
    run = _init(wcfg, out_dir.name, result["config"], "run", Path(wcfg.get("dir") or out_dir.parent.parent / "wandb"))
    if run is None:
        return
    import wandb

    flat = {f"{m['task']}/{m['metric']}": m["value"] for m in result.get("metrics") or []}
    flat.update({f"dense/{m['task']}/{m['metric']}": m["value"] for m in result.get("dense_metrics") or []})
    flat.update({f"time/{k}": v for k, v in (result.get("timings") or {}).items()})
    if result.get("compression"):
        flat.update({f"compression/{k}": v for k, v in result["compression"].items()})
    run.log(flat)
    layers = out_dir / "layers.csv"
    if layers.exists():
        run.log({"layers": wandb.Table(dataframe=pd.read_csv(layers))})
    run.finish()


def log_table(name: str, df: pd.DataFrame, figures: list[Path], config: dict, wcfg: Mapping[str, Any],
              directory: Path) -> None:
    """The gathered table and its plots as one wandb run."""
    run = _init(wcfg, f"table-{name}", config, "table", directory)
    if run is None:
        return
    import wandb

    rows = [[None if pd.isna(v) else v for v in row] for row in df.itertuples(index=False)]
    run.log({"table": wandb.Table(columns=list(df.columns), data=rows),
             **{p.stem: wandb.Image(str(p)) for p in figures}})
    run.finish()
