"""The run store: ``<results dir>/runs/<run id>/`` holds one run's config (run.json), its result
(result.json), its per-block checkpoint, its log or error.log and the figures it drew.

Every other module asks the store where a run lives and whether it is done. A local process takes a
run by creating its ``claim`` file (host and pid, created exclusively), so several processes can work
through the same table at once (``OMP_NUM_THREADS=1`` each, say): each skips the runs another live
process holds. A claim left by a process that died on this host is taken over.
"""
from __future__ import annotations

import json
import os
import socket
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

    def claim_path(self, run_id: str) -> Path:
        return self.folder(run_id) / "claim"

    def claim(self, run_id: str) -> str | None:
        """Take the run for this process: None when taken, else who holds it ("host pid")."""
        path = self.claim_path(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = path.read_text().strip() if path.exists() else ""
                if holder == me:
                    return None
                host, _, pid = holder.partition(" ")
                if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                    path.unlink(missing_ok=True)  # its process died: take it over
                    continue
                if not holder:  # being written this instant, or vanished: look again
                    continue
                return holder
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return None
        return path.read_text().strip() if path.exists() else "another process"

    def release(self, run_id: str) -> None:
        path = self.claim_path(run_id)
        if path.exists() and path.read_text().strip() == f"{socket.gethostname()} {os.getpid()}":
            path.unlink(missing_ok=True)

    def prepare(self, run: Run) -> Path:
        """The run's folder with its run.json (identity, cell, overrides, resolved config); a stale
        error.log from an earlier failure is removed."""
        out = self.folder(run.run_id)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "run.json", {"run_id": run.run_id, "row": run.row, "col": run.col, "rep": run.rep,
                                             "overrides": list(run.overrides), "config": run.config})
        (out / "error.log").unlink(missing_ok=True)
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True
