"""The run store: ``<results dir>/runs/<run id>/`` holds one run's config (run.json), its result
(result.json), its per-block checkpoint, its log or error.log and the figures it drew.

Every other module asks the store where a run lives and whether it is done.
"""
from __future__ import annotations

import json
from pathlib import Path

from oats.io import atomic_write_json

from .tables import Run


class RunStore:
    def __init__(self, results_dir: str | Path) -> None:
        self.results_dir = Path(results_dir)

    def folder(self, run_id: str) -> Path:
        return self.results_dir / "runs" / run_id

    def result_path(self, run_id: str) -> Path:
        return self.folder(run_id) / "result.json"

    def done(self, run_id: str) -> bool:
        return self.result_path(run_id).exists()

    def result(self, run_id: str) -> dict | None:
        path = self.result_path(run_id)
        return json.loads(path.read_text()) if path.exists() else None

    def prepare(self, run: Run) -> Path:
        """The run's folder with its run.json (identity, cell, overrides, resolved config); a stale
        error.log from an earlier failure is removed."""
        out = self.folder(run.run_id)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "run.json", {"run_id": run.run_id, "row": run.row, "col": run.col, "rep": run.rep,
                                             "overrides": list(run.overrides), "config": run.config})
        (out / "error.log").unlink(missing_ok=True)
        return out
