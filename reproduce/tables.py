"""A paper table or figure as a grid of runs, each run a list of Hydra overrides of ``conf/compress.yaml``.

A table config (``conf/table/NAME.yaml``) names rows and columns, each a list of
overrides; the run of cell (row, col) composes ``base + row + col + cell`` and
then the overrides the user typed (``model: NAME`` puts ``model=NAME`` first in
``base``). Tables that share rows include a base config (``conf/table/_*.yaml``)
through Hydra's defaults list. A run's identity is a hash of its resolved
config (never a position in a list), so editing a table never renumbers runs
and a finished run is never recomputed.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from oats import runtime
from oats.allocation import DEFAULT_SCORE
from oats.hydra_configs import DENSE, register_configs
from oats.registry import without_later_defaults

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
KINDS = ("table", "figure")
# Settings that do not change a run's numbers; they are left out of its identity.
NON_IDENTITY_KEYS = ("progress", "checkpoint", "save_model", "data_root", "device", "batch_size",
                     "offload_activations", "evaluate_dense", "load")
# Keys of the reproduce app itself; every other override the user types applies to each run.
APP_KEYS = ("table", "launcher", "results_dir", "rerun", "wandb", "hydra", "only", "dry_run", "repeat",
            "gather_only")


register_configs()  # Hydra's method group comes from the method registry


class TableConfigError(ValueError):
    pass


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    kind: str
    base: list[str]
    rows: dict[str, list[str]]
    cols: dict[str, list[str]]
    metrics: list[str]
    cells: dict[str, list[str]] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)
    expected: str | None = None
    plot: dict[str, Any] = field(default_factory=dict)
    needs: str | None = None  # code this table needs that may not exist yet (e.g. "vision", "cpu_speed")
    model: str | None = None  # the table's model (conf/model/NAME.yaml), when its base rows are shared

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "TableSpec":
        cfg = dict(cfg)
        for key in ("name", "rows", "cols", "metrics"):
            if not cfg.get(key):
                raise TableConfigError(f"table config needs a non-empty {key!r} (got {cfg.get(key)!r})")
        kind = cfg.get("kind", "table")
        if kind not in KINDS:
            raise TableConfigError(f"table {cfg['name']}: kind={kind!r}; allowed: {', '.join(KINDS)}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(cfg) - known
        if unknown:
            raise TableConfigError(f"table {cfg['name']}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
        model = cfg.get("model")
        spec = cls(
            name=cfg["name"], title=cfg.get("title", cfg["name"]), kind=kind,
            base=([f"model={model}"] if model else []) + list(cfg.get("base") or []),
            rows={str(k): list(v or []) for k, v in cfg["rows"].items()},
            cols={str(k): list(v or []) for k, v in cfg["cols"].items()},
            metrics=list(cfg["metrics"]), cells={str(k): list(v) for k, v in (cfg.get("cells") or {}).items()},
            skip=[str(s) for s in cfg.get("skip") or []], expected=cfg.get("expected"),
            plot=dict(cfg.get("plot") or {}), needs=cfg.get("needs"), model=model,
        )
        for key in list(spec.cells) + spec.skip:
            row, sep, col = key.partition("|")
            if not sep or row not in spec.rows or col not in spec.cols:
                raise TableConfigError(f"table {spec.name}: cell {key!r} is not 'row|col' of this table's rows/cols")
        return spec


@dataclass(frozen=True)
class Run:
    row: str
    col: str
    overrides: tuple[str, ...]
    config: dict
    run_id: str
    rep: str = ""  # which repetition of its cell ('' = the cell as configured; 'seed=43 threads=1' ...)


@dataclass(frozen=True)
class Repeat:
    """How often each cell runs: over calibration seeds (data.seed + 0..seeds-1) and runtime settings."""

    seeds: int = 1
    runtimes: tuple[dict, ...] = ({},)
    name: str = "single"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "Repeat":
        cfg = dict(cfg or {})
        seeds = cfg.get("seeds", 1)
        if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
            raise TableConfigError(f"repeat.seeds={seeds!r} must be a positive integer")
        runtimes = cfg.get("runtimes") or [{}]
        if not isinstance(runtimes, (list, tuple)):
            raise TableConfigError(f"repeat.runtimes={runtimes!r} must be a list of runtime settings")
        checked = []
        for rt in runtimes:
            if not isinstance(rt, Mapping):
                raise TableConfigError(f"repeat.runtimes entry {rt!r} must be a mapping such as {{threads: 1}}")
            checked.append(runtime.settings(rt))
        return cls(seeds, tuple(checked), str(cfg.get("name", "custom")))

    def variants(self, config: Mapping[str, Any]) -> list[tuple[str, list[str], dict]]:
        """(label, overrides, config) of every repetition of one cell's resolved ``config``."""
        if self.seeds == 1 and self.runtimes == ({},):
            return [("", [], dict(config))]
        base_seed = (config.get("data") or {}).get("seed")
        if self.seeds > 1 and not isinstance(base_seed, int):
            raise TableConfigError(f"repeat.seeds={self.seeds} needs an integer data.seed, got {base_seed!r}")
        out = []
        for s in range(self.seeds):
            for rt in self.runtimes:
                cfg = copy.deepcopy(dict(config))
                overrides, label = [], []
                if s:
                    cfg["data"]["seed"] = base_seed + s
                    overrides.append(f"data.seed={base_seed + s}")
                    label.append(f"seed={base_seed + s}")
                if rt:
                    cfg["runtime"] = {**(cfg.get("runtime") or {}), **rt}
                    overrides += [f"runtime.{k}={v}" for k, v in rt.items()]
                    label.append(runtime.label(rt))
                out.append((" ".join(label), overrides, cfg))
        return out


def run_identity(config: Mapping[str, Any]) -> str:
    """Hash of the resolved config, without settings that do not change results.

    The dense reference ignores every compression setting, so it is one run per model/eval. Left
    out as well, so that runs made before these settings existed keep their identity: a ``runtime``
    block left to the machine (all null), OWL's default score, and a model's ``method_params``
    (per-model method defaults, already resolved into ``method``), whether perplexity is computed
    block by block (the same numbers), and a method's parameters added later while at their defaults
    (``Method.added_later``) and ``runtime.layer_workers`` left automatic.
    """
    ident = {k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS}
    if (ident.get("runtime") or {}).get("layer_workers", 0) is None:  # automatic: added later
        ident["runtime"] = {k: v for k, v in ident["runtime"].items() if k != "layer_workers"}
    if not any((ident.get("runtime") or {}).values()):
        ident.pop("runtime", None)
    if (ident.get("owl") or {}).get("score") == DEFAULT_SCORE:
        ident["owl"] = {k: v for k, v in ident["owl"].items() if k != "score"}
    if "method_params" in (ident.get("model") or {}):
        ident["model"] = {k: v for k, v in ident["model"].items() if k != "method_params"}
    perplexity = (ident.get("eval") or {}).get("perplexity")
    if isinstance(perplexity, Mapping) and "blockwise" in perplexity:  # how it is computed, not what
        ident["eval"] = {**ident["eval"], "perplexity": {k: v for k, v in perplexity.items() if k != "blockwise"}}
    if ident.get("method"):
        ident["method"] = without_later_defaults(ident["method"])
    if ident.get("method", {}).get("name") == DENSE:
        ident = {k: v for k, v in ident.items() if k not in ("compression", "nm", "owl", "data")}
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _compose(config_name: str, overrides: list[str]) -> dict:
    if GlobalHydra.instance().is_initialized():  # inside the reproduce app: same conf/ search path
        cfg = compose(config_name=config_name, overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="oats_run"):
            cfg = compose(config_name=config_name, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def compose_run(overrides: list[str]) -> dict:
    """Resolved config of one run: ``conf/compress.yaml`` with ``overrides`` (Hydra syntax)."""
    return _compose("compress", overrides)


def expand(spec: TableSpec, extra: list[str] | None = None, repeat: Repeat | None = None) -> list[Run]:
    """Every (row, col) cell of the table as a composed run; ``extra`` overrides apply to all of them.

    With ``repeat``, each cell gives one run per (seed, runtime) repetition (a cell's repetitions
    that resolve to the same run, e.g. the Dense row over calibration seeds, are listed once).
    """
    repeat = repeat or Repeat()
    runs = []
    for row, row_ov in spec.rows.items():
        for col, col_ov in spec.cols.items():
            key = f"{row}|{col}"
            if key in spec.skip:
                continue
            overrides = [*spec.base, *row_ov, *col_ov, *spec.cells.get(key, [])]
            try:
                overrides += applicable(extra or [], compose_run(overrides) if extra else {})
                config = compose_run(overrides)
            except Exception as e:  # Hydra's own message names the key or value
                raise TableConfigError(f"table {spec.name}, cell {key}: {e}") from None
            seen = set()
            for label, rep_overrides, rep_config in repeat.variants(config):
                run_id = run_identity(rep_config)
                if run_id not in seen:
                    seen.add(run_id)
                    runs.append(Run(row, col, tuple(overrides + rep_overrides), rep_config, run_id, label))
    return runs


def _has_key(config: Mapping[str, Any], dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def applicable(extra: list[str], config: Mapping[str, Any]) -> list[str]:
    """The user's overrides that apply to this run: group choices, +/~ edits, and keys the run has.

    ``method.rank_ratio=0.2`` on a table that also has Wanda rows changes the OATS rows only.
    """
    return [ov for ov in extra
            if ov.startswith(("+", "~")) or "." not in ov.split("=", 1)[0] or _has_key(config, ov.split("=", 1)[0])]


def forwarded_overrides(task_overrides: list[str]) -> list[str]:
    """The user's overrides that are about each run rather than the reproduce app."""
    out = []
    for ov in task_overrides:
        key = ov.lstrip("+~").split("=", 1)[0]
        if key.split(".", 1)[0] not in APP_KEYS:
            out.append(ov)
    return out


def list_tables() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "table").glob("*.yaml") if not p.stem.startswith("_"))


def method_cells(table: str, extra: list[str] | None = None) -> list[tuple[str, str, dict, float | None, str | None]]:
    """(row, col, method config, compression, nm) of every compressed cell of ``conf/table/<table>.yaml``
    (with ``extra`` overrides): the benchmarks and the layer-level regression take their methods from here."""
    spec = TableSpec.from_config(_compose("reproduce", [f"table={table}"])["table"])
    return [(r.row, r.col, dict(r.config["method"]), r.config.get("compression"), r.config.get("nm"))
            for r in expand(spec, extra) if r.config["method"]["name"] != DENSE]
