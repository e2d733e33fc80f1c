"""Hydra's ``method`` config group, generated from the method registry (no hand-kept YAML per method).

``method=NAME`` selects a registered method with its parameters' defaults. A model config may set
per-model defaults (the paper uses OATS rank ratio 0.3 for Llama-3, 0.25 for Phi-3, 0.2 for ViTs)::

    # conf/model/phi3-mini.yaml
    method_params:
      oats: {rank_ratio: 0.25}

so every parameter default reads ``${oc.select:model.method_params.<method>.<param>,<default>}``;
an explicit override (``method.rank_ratio=0.5``) still wins. ``method=dense`` is the uncompressed
reference, and ``_any`` (used by reproduce/run.py) accepts every parameter of every method so that
an override reaches the runs whose method has it.
"""
from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore

from .registry import discover, parameters

DENSE = "dense"  # method name of the uncompressed reference row
ANY = "_any"


def _literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def method_nodes() -> dict[str, dict[str, Any]]:
    """{config name: node} of the method group: every registered method, dense and _any."""
    nodes: dict[str, dict[str, Any]] = {DENSE: {"name": DENSE}}
    every: dict[str, Any] = {}
    for name in sorted(discover()):
        params = parameters(name)
        nodes[name] = {"name": name, **{p: f"${{oc.select:model.method_params.{name}.{p},{_literal(v)}}}"
                                        for p, v in params.items()}}
        every.update(dict.fromkeys(params))
    nodes[ANY] = {"name": "any", **every}
    return nodes


def register_configs() -> None:
    """Put the method group into Hydra's ConfigStore (idempotent); call before composing a config."""
    store = ConfigStore.instance()
    for name, node in method_nodes().items():
        store.store(group="method", name=name, node=node, provider="oats")
