"""The method contract table: one row per registered method (tests/test_contract.py checks every row).

Adding a method = its module + its rows in the tables + one row here. ``params``: fast settings for
tests on tiny models; ``nm``: whether an N:M sparse part applies; ``bad``: parameter values the method
must refuse, naming the key (empty for a method without parameters).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    params: dict = field(default_factory=dict)
    nm: bool = True
    bad: dict = field(default_factory=dict)


CONTRACT: dict[str, Row] = {
    "magnitude": Row(),
    "wanda": Row(),
    "sparsegpt": Row(params={"blocksize": 16}, bad={"blocksize": 0, "percdamp": -0.1}),
    "lowrank": Row(nm=False, bad={"scaled": "yes"}),
    "dsnot": Row(params={"max_cycle_time": 10}, bad={"initial": "random", "max_cycle_time": -1, "skip_layer": "attn"}),
    "hassle": Row(params={"alternations": 2},
                  bad={"alternations": 0, "damping": -0.1, "init": "random", "rank_ratio": 1.5, "match": "model"}),
    "oats": Row(params={"rank_ratio": 0.3, "iterations": 4},
                bad={"iterations": 0, "rank_ratio": 1.5, "threshold": "column", "svd": "lanczos"}),
}

METHOD_PARAMS = {name: row.params for name, row in CONTRACT.items()}
