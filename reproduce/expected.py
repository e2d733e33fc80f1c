"""Expected values of a table: sourced values, their tolerances, and the orderings that must hold.

``results/expected/NAME.yaml`` holds, per cell (row, col, metric), a value with its source. A cell's
tolerance is, in this order: its own ``tolerance``; derived from its measured ``spread`` by the file's
``rule``; its metric's entry in ``tolerances``. The rule (written in the file, never per cell):

    tolerance = max(k * std, floor[metric])        (in the floor's unit: rel = of the value)

and a cell whose derived tolerance exceeds ``max[metric]`` is *unstable*: reported with its spread,
not checked, since a tolerance that wide would pass anything. ``orderings`` (a < b in one column)
are checked on every run; reproduce/record_expected.py keeps only those that hold across the spread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .tables import REPO

EXPECTED_DIR = REPO / "results" / "expected"

Key = tuple[str, str, str]  # (row, col, metric)


@dataclass(frozen=True)
class Tolerance:
    rel: float | None = None
    abs: float | None = None

    @classmethod
    def parse(cls, tol: Any, what: str) -> "Tolerance":
        if not isinstance(tol, Mapping) or not tol or set(tol) - {"rel", "abs"} or len(tol) != 1:
            raise ValueError(f"tolerance of {what} must be {{rel: x}} or {{abs: x}}, got {tol!r}")
        (kind, value), = tol.items()
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"tolerance of {what}: {kind}={value!r} must be a number >= 0")
        return cls(**{kind: float(value)})

    def width(self, expected: float) -> float:
        """The tolerance in the metric's own unit around ``expected``."""
        return self.rel * abs(expected) if self.rel is not None else float(self.abs or 0.0)

    def check(self, value: float, expected: float) -> tuple[bool, float]:
        """(within tolerance, delta as reported: relative if rel is set, else absolute)."""
        if self.rel is not None:
            delta = (value - expected) / abs(expected)
            return abs(delta) <= self.rel * (1 + 1e-9), delta
        delta = value - expected
        return abs(delta) <= (self.abs or 0.0) * (1 + 1e-9) + 1e-12, delta

    def to_dict(self) -> dict:
        return {"rel": self.rel} if self.rel is not None else {"abs": self.abs}

    def __str__(self) -> str:
        return f"±{self.rel:.2%}" if self.rel is not None else f"±{self.abs:g}"


@dataclass(frozen=True)
class Spread:
    """A cell measured over several runs (repeat=machines): std (ddof 1), min, max (NaN when a published
    value gives its std only), number of runs."""

    std: float
    min: float
    max: float
    n: int


@dataclass(frozen=True)
class Rule:
    """tolerance = max(k * std, floor[metric]); unstable when that exceeds max[metric]."""

    k: float
    floor: dict[str, Tolerance]
    max: dict[str, Tolerance] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str) -> "Rule":
        k = data.get("k")
        if not isinstance(k, (int, float)) or k <= 0:
            raise ValueError(f"{where}: rule.k={k!r} must be a positive number")
        floor = {m: Tolerance.parse(t, f"rule.floor[{m}]") for m, t in (data.get("floor") or {}).items()}
        ceiling = {m: Tolerance.parse(t, f"rule.max[{m}]") for m, t in (data.get("max") or {}).items()}
        return cls(float(k), floor, ceiling)

    def derive(self, metric: str, value: float, spread: Spread) -> tuple[Tolerance, bool]:
        """(tolerance, unstable) of a cell with mean ``value`` and measured ``spread``."""
        if metric not in self.floor:
            raise ValueError(f"rule has no floor for metric {metric!r}")
        floor = self.floor[metric]
        std = 0.0 if math.isnan(spread.std) else spread.std
        if floor.rel is not None:
            rel_std = self.k * std / abs(value) if value else (0.0 if std == 0 else math.inf)
            tol = Tolerance(rel=max(rel_std, floor.rel))
        else:
            tol = Tolerance(abs=max(self.k * std, floor.abs or 0.0))
        ceiling = self.max.get(metric)
        unstable = ceiling is not None and tol.width(value) > ceiling.width(value) * (1 + 1e-9)
        return tol, unstable

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"k": self.k, "floor": {m: t.to_dict() for m, t in self.floor.items()}}
        if self.max:
            out["max"] = {m: t.to_dict() for m, t in self.max.items()}
        return out


@dataclass(frozen=True)
class Ordering:
    """In column ``col``, metric ``metric``: the value of row ``lower`` is below that of row ``higher``."""

    metric: str
    col: str
    lower: str
    higher: str

    def __str__(self) -> str:
        return f"{self.col} {self.metric}: {self.lower} < {self.higher}"


@dataclass
class Expected:
    tolerances: dict[str, Tolerance]
    cells: dict[Key, tuple[float, str]]
    source: str = ""
    cell_tolerances: dict[Key, Tolerance] = field(default_factory=dict)
    spreads: dict[Key, Spread] = field(default_factory=dict)
    rule: Rule | None = None
    orderings: list[Ordering] = field(default_factory=list)

    def tolerance(self, key: Key) -> Tolerance:
        """The cell's own tolerance, else the one its spread and the rule give, else its metric's."""
        return self.judge(key)[0]

    def judge(self, key: Key) -> tuple[Tolerance, bool]:
        """(tolerance, unstable) of a cell that has an expected value."""
        if key in self.cell_tolerances:
            return self.cell_tolerances[key], False
        if self.rule is not None and key in self.spreads:
            return self.rule.derive(key[2], self.cells[key][0], self.spreads[key])
        return self.tolerances[key[2]], False


def load_expected(name: str | None, directory: Path = EXPECTED_DIR) -> Expected:
    """``results/expected/NAME.yaml`` (see the module docstring). A cell without a value (or not
    listed) is unchecked; every value must carry a source and have a tolerance."""
    if not name:
        return Expected({}, {})
    path = directory / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"expected values {path} not found (table names expected: {name!r})")
    data = yaml.safe_load(path.read_text()) or {}
    tolerances = {m: Tolerance.parse(t, repr(m)) for m, t in (data.get("tolerances") or {}).items()}
    rule = Rule.parse(data["rule"], str(path)) if data.get("rule") else None
    exp = Expected(tolerances, {}, data.get("source", ""), rule=rule)
    for cell in data.get("cells") or []:
        if cell.get("value") is None:
            continue
        source = cell.get("source") or data.get("source")
        if not source:
            raise ValueError(f"{path}: cell {cell} has a value but no source")
        key = (str(cell["row"]), str(cell["col"]), cell["metric"])
        exp.cells[key] = (float(cell["value"]), source)
        if cell.get("tolerance") is not None:
            exp.cell_tolerances[key] = Tolerance.parse(cell["tolerance"], f"cell {key} in {path}")
        if cell.get("spread") is not None:
            sp = cell["spread"]
            bound = {b: math.nan if sp.get(b) is None else float(sp[b]) for b in ("min", "max")}  # published: std only
            exp.spreads[key] = Spread(float(sp["std"]), bound["min"], bound["max"], int(sp["n"]))
        has_rule = rule is not None and key in exp.spreads and cell["metric"] in rule.floor
        if key not in exp.cell_tolerances and not has_rule and cell["metric"] not in tolerances:
            raise ValueError(f"{path}: no tolerance for metric {cell['metric']!r} (cell {key})")
    for o in data.get("orderings") or []:
        exp.orderings.append(Ordering(o["metric"], str(o["col"]), str(o["lower"]), str(o["higher"])))
    return exp


def robust_orderings(stats: Mapping[Key, tuple[float, Spread]], rule: Rule) -> list[Ordering]:
    """The orderings a < b (same column and metric) that hold across the measured spread.

    ``stats``: (mean, spread) per cell. a < b is kept when every run of a is below every run of b,
    and the gap of the means exceeds both k standard deviations of the difference and the two
    cells' floors. Orderings implied by two others (a < c < b) are left out.
    """
    groups: dict[tuple[str, str], list[tuple[str, float, Spread]]] = {}
    for (row, col, metric), (mean, spread) in stats.items():
        groups.setdefault((col, metric), []).append((row, mean, spread))
    out = []
    for (col, metric), cells in groups.items():
        floor = rule.floor.get(metric)
        if floor is None:
            continue

        def below(a, b) -> bool:
            (_, ma, sa), (_, mb, sb) = a, b
            std = math.hypot(*(0.0 if math.isnan(s.std) else s.std for s in (sa, sb)))
            return sa.max < sb.min and mb - ma > max(rule.k * std, floor.width(ma) + floor.width(mb))

        pairs = {(a[0], b[0]) for a in cells for b in cells if a is not b and below(a, b)}
        rows = [c[0] for c in cells]
        for lo, hi in sorted(pairs, key=lambda p: (rows.index(p[0]), rows.index(p[1]))):
            if not any((lo, mid) in pairs and (mid, hi) in pairs for mid in rows):
                out.append(Ordering(metric, col, lo, hi))
    return out
