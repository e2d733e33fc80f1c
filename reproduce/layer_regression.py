"""Layer-level regression: every method of a table on fixed synthetic layers, checked tightly.

Whole-model results move between machines (a bit flip in one block changes the masks of the next);
one layer with fixed inputs moves far less. Each cell of the ``smollm2_ci`` table (its methods and
settings, read from the table config) compresses three seeded synthetic layers whose inputs have
outlier features, through the same statistics and method objects as the driver, and reports

    output_error  ||X W^T - X W_hat^T||_F / ||X W^T||_F
    scaled_error  ||(W - W_hat) D||_F / ||W D||_F          (D = input column RMS, OATS's objective)

    python reproduce/layer_regression.py                 # print the table, check it against the reference
    python reproduce/layer_regression.py --record        # measure under repeat=machines' runtimes, record

``--record`` runs itself once per runtime of ``conf/repeat/machines.yaml`` (threads, kernel ISA, MKL
path), each in a new process, and writes ``results/expected/layers.yaml`` with the spread-derived
tolerances (reproduce/record_expected.py's rule). The data are drawn with numpy's seeded generator,
which is the same on every machine.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TABLE = "smollm2_ci"
METRICS = ("output_error", "scaled_error")
# (name, d_out, d_in): attention-, MLP-up- and MLP-down-shaped, small enough for seconds on a laptop
LAYERS = (("attn 128x192", 128, 192), ("up 384x192", 384, 192), ("down 192x384", 192, 384))
TOKENS = 768


def synthetic_layer(d_out: int, d_in: int, n: int = TOKENS, seed: int = 0,
                    ulp_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (d_out, d_in), X (n, d_in)), fp32: a weight with a low-rank part plus noise; correlated inputs
    with log-normal column scales and four outlier features (as in LLM hidden states).

    ``ulp_seed``: move every entry of W and X by -1, 0 or +1 unit in the last place (fp32), drawn
    with that seed: the size of the difference another machine's kernels make.
    """
    W, X = _layer(d_out, d_in, n, seed)
    if ulp_seed is not None:
        rng = np.random.default_rng([ulp_seed, d_out, d_in, 1])
        W, X = (np.nextafter(a, a + rng.choice([-1.0, 0.0, 1.0], a.shape).astype(np.float32)) for a in (W, X))
    return torch.from_numpy(W), torch.from_numpy(X)


def _layer(d_out: int, d_in: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, d_out, d_in])
    k = max(4, d_in // 8)
    X = rng.standard_normal((n, k)) @ rng.standard_normal((k, d_in)) / np.sqrt(k) + 0.5 * rng.standard_normal((n, d_in))
    scale = np.exp(0.5 * rng.standard_normal(d_in))
    scale[rng.choice(d_in, 4, replace=False)] *= 20.0
    W = 2.0 * rng.standard_normal((d_out, 16)) @ rng.standard_normal((16, d_in)) / np.sqrt(16 * d_in)
    W += rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)
    return W.astype(np.float32), (X * scale).astype(np.float32)


def measure(table: str = TABLE, ulp_seed: int | None = None) -> pd.DataFrame:
    """Long table (row, col, metric, value): one line per (table cell, synthetic layer, metric)."""
    from oats.config import build_method
    from oats.stats import LayerStats

    from reproduce.tables import method_cells

    cells = [(row, col, build_method(mcfg), compression, nm)
             for row, col, mcfg, compression, nm in method_cells(table)]
    needs = tuple(dict.fromkeys(["second_moment"] + [s for cell in cells for s in cell[2].needs]))
    layers = []
    for name, d_out, d_in in LAYERS:
        W, X = synthetic_layer(d_out, d_in, ulp_seed=ulp_seed)
        stats = LayerStats(d_in, needs)
        stats.add(X)
        d = stats.column_rms()
        layers.append((name, W, X, stats, d, X @ W.T, W * d))
    lines = []
    for row, col, method, compression, nm in cells:
        for name, W, X, stats, d, Y, Wd in layers:
            budget = method.budget(W.shape[0], W.shape[1], compression, nm)
            W_hat = method.compress(W, stats, budget, name=name).merged().float()
            out_err = float(torch.linalg.norm(Y - X @ W_hat.T) / torch.linalg.norm(Y))
            sc_err = float(torch.linalg.norm((W - W_hat) * d) / torch.linalg.norm(Wd))
            for metric, value in zip(METRICS, (out_err, sc_err)):
                lines.append({"row": row, "col": f"{col} {name}", "metric": metric, "value": value})
    return pd.DataFrame(lines)


def spec_of(df: pd.DataFrame):
    from reproduce.tables import TableSpec

    return TableSpec(name="layers", title=f"Layer-level regression ({TABLE} methods on synthetic layers)",
                     kind="table", base=[], rows={r: [] for r in dict.fromkeys(df.row)},
                     cols={c: [] for c in dict.fromkeys(df.col)}, metrics=list(METRICS), expected="layers")


def check(df: pd.DataFrame, expected_dir: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(checked cells, checked orderings, markdown) of a measured layer table against its reference."""
    from reproduce.expected import EXPECTED_DIR, load_expected
    from reproduce.gather import aggregate, check_orderings, to_markdown

    spec = spec_of(df)
    expected = load_expected("layers", expected_dir or EXPECTED_DIR)
    per_run = df.assign(rep="", stderr=None, run_id="", cpu=None)
    table = aggregate(spec, per_run, expected)
    orderings = check_orderings(expected, table)
    return table, orderings, to_markdown(spec, table, orderings)


def record(k: float, floor_rel: float, out_dir: Path, ulp_seeds: int = 4) -> Path:
    """Measure under every runtime of conf/repeat/machines.yaml (one process each) and with
    ``ulp_seeds`` last-bit perturbations of the layers, then record the spread-derived reference."""
    from oats import runtime
    from reproduce.expected import Rule, Tolerance
    from reproduce.record_expected import build

    runtimes = yaml.safe_load((REPO / "conf" / "repeat" / "machines.yaml").read_text())["runtimes"]
    frames = []
    for rt in runtimes:
        env = {**os.environ, **runtime.environment(rt)}
        proc = subprocess.run([sys.executable, "-m", "reproduce.layer_regression", "--csv"], env=env, cwd=REPO,
                              capture_output=True, text=True, check=True)
        label = runtime.label(rt)
        frames.append(pd.read_csv(io.StringIO(proc.stdout)).assign(rep=label, run_id=label))
        print(f"measured under {label}", file=sys.stderr)
    for s in range(ulp_seeds):
        frames.append(measure(ulp_seed=s).assign(rep=f"ulp_seed={s}", run_id=f"ulp{s}"))
        print(f"measured with last-bit perturbation {s}", file=sys.stderr)
    runs = pd.concat(frames, ignore_index=True)
    rule = Rule(k, {m: Tolerance(rel=floor_rel) for m in METRICS})
    from oats.runtime import cpu_model

    source = (f"this project's layer-level reference, {len(runtimes)} runtimes of conf/repeat/machines.yaml and "
              f"{ulp_seeds} last-bit perturbations of the layers, on "
              f"{cpu_model()}, torch {torch.__version__}; {TABLE} methods on seeded numpy layers {LAYERS}")
    doc = build(runs, rule, source, [runtime.label(rt) for rt in runtimes]
                + [f"ulp_seed={s} (W, X moved by 0/±1 ulp)" for s in range(ulp_seeds)])
    path = out_dir / "layers.yaml"
    from oats.io import atomic_write_text

    atomic_write_text(path, "# Layer-level reference: recorded by reproduce/layer_regression.py --record.\n"
                      + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", action="store_true", help="print the measured long table as CSV and stop")
    p.add_argument("--record", action="store_true", help="measure under every machines runtime and record")
    p.add_argument("--k", type=float, default=3.0)
    p.add_argument("--floor", type=float, default=1e-4, help="relative tolerance floor of every cell")
    args = p.parse_args()
    if args.csv:
        measure().to_csv(sys.stdout, index=False)
        return
    if args.record:
        from reproduce.expected import EXPECTED_DIR

        print(f"wrote {record(args.k, args.floor, EXPECTED_DIR)}")
    table, orderings, md = check(measure())
    print(md)
    sys.exit(int((table.status == "fail").any() or (orderings.status == "fail").any()))


if __name__ == "__main__":
    main()
