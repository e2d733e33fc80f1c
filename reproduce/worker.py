"""Run one prepared run folder in this process: ``python -m reproduce.worker RUN_DIR [WANDB_JSON]``.

The launcher starts it with the run's runtime environment (threads, ``ATEN_CPU_CAPABILITY``,
``MKL_CBWR``), which torch reads when it loads, so it cannot be changed in the launcher's own process.
On failure the traceback goes to ``RUN_DIR/error.log`` and the exit code is 1.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    wandb_cfg = json.loads(argv[1]) if len(argv) > 1 and argv[1] else None
    config = json.loads((out / "run.json").read_text())["config"]
    try:
        from .execute import execute_here

        execute_here(config, out, wandb_cfg)
    except Exception:  # noqa: BLE001 - the launcher reads the log
        from oats.io import atomic_write_text

        atomic_write_text(out / "error.log", traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
