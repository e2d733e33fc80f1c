"""Hydra entry point for one compression run: ``python -m oats.cli method=wanda compression=0.6``.

Configs live in the repository's ``conf/`` folder (``conf/compress.yaml``);
results go to the Hydra run folder (``result.json``, ``layers.csv``).
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # OpenBLAS threads sleep after a call instead of spinning
# ~0.07 s (2^28 cycles) on the cores the next kernel needs; read when numpy loads, so set before any import of it

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from . import runtime
from .checkpoint import CheckpointError, CheckpointMismatchError
from .data.paths import DataNotAvailableError
from .hydra_configs import register_configs
from .models.loading import ModelNotAvailableError
from .pipeline import run

# Bad input from the user: configs, budgets, methods, architectures, missing models or data.
USER_ERRORS = (ValueError, ModelNotAvailableError, DataNotAvailableError, CheckpointMismatchError,
               CheckpointError)

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
register_configs()  # the method group comes from the method registry


@hydra.main(config_path=CONF_DIR, config_name="compress", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        rt = runtime.settings(OmegaConf.to_container(cfg.runtime, resolve=True) if "runtime" in cfg else None)
        if runtime.needs_new_process(rt):  # ISA / MKL path are read when torch loads: start again with them set
            sys.stdout.flush()
            keep = [a for a in sys.argv[1:] if not a.startswith("hydra.run.dir=")]
            args = [sys.executable, "-m", "oats.cli", *keep, f"hydra.run.dir={out_dir}"]
            os.execve(sys.executable, args, {**os.environ, **runtime.environment(rt)})
        result = run(OmegaConf.to_container(cfg, resolve=True), out_dir)
    except USER_ERRORS as e:  # a clear message, not a stack trace
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for label, records in (("dense", result["dense_metrics"]), ("compressed", result["metrics"])):
        for r in records:
            print(f"{label:>10}  {r['task']:<12} {r['metric']:<18} {r['value']:.4f}  (n={r.get('n')}, {r.get('source')})")
    totals = result["compression"]
    print(f"compression {totals['compression']:.4f} measured, {totals['params']:,} parameters kept; "
          f"timings {result['timings']}; results in {out_dir}/result.json")


def main() -> None:
    try:
        _main()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
