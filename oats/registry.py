"""The method registry: what a compression method is, and how the driver finds it by name.

A method is one module (under ``baselines/`` or ``oats/methods/``) holding its maths as pure tensor
functions and a :class:`Method` subclass registered with :func:`register`::

    @register
    @dataclass
    class Wanda(Method):
        name: ClassVar[str] = "wanda"
        needs: ClassVar[tuple[str, ...]] = ("second_moment",)

        def compress(self, W, stats, budget, name="layer"):
            return Factors(wanda_prune(W, stats.column_rms(name), budget))

The dataclass fields are the method's parameters (their defaults are the official ones); ``needs``
names the input statistics (:data:`oats.stats.STATISTICS`) the driver collects for it (a property
when it depends on the parameters). The driver
turns the returned :class:`Factors` into a :class:`~oats.layers.CompressedLinear` (it owns bias and
dtype). A method that must see a whole block (e.g. to match the dense block's outputs) sets
``needs_targets`` and overrides :meth:`Method.compress_block`.

The method modules are found by scanning :data:`METHOD_PACKAGES`, so adding a method is adding
its file.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .budget import NM, LayerBudget, layer_budget
from .stats import LayerStats, check_statistics

METHOD_PACKAGES = ("baselines", "oats.methods")  # every module in these packages may register methods


class UnknownMethodError(ValueError):
    pass


@dataclass
class Factors:
    """What a per-layer method returns: W_hat = sparse + U @ V, in fp32.

    sparse: (d_out, d_in), pruned entries zero. U: (d_out, r) or None. V: (r, d_in) or None.
    """

    sparse: torch.Tensor
    U: torch.Tensor | None = None
    V: torch.Tensor | None = None

    def merged(self) -> torch.Tensor:
        """W_hat = sparse + U @ V: (d_out, d_in)."""
        return self.sparse if self.U is None or self.U.shape[1] == 0 else self.sparse + self.U @ self.V


@dataclass
class Method:
    """Base of every method: a pruner keeps a sparse part only (rank ratio 0).

    ``granularity``: how the sparse part's budget is spread ("row": the same count per output row,
    as Wanda and OATS do; "layer": one count for the whole matrix). ``needs_targets``: the method
    compresses a whole block at once against the dense block's outputs (:meth:`compress_block`).
    ``added_later``: parameters added after results were recorded; a run leaves them out of its
    identity while they are at their defaults (same results), so earlier runs are still found.
    """

    name: ClassVar[str]
    added_later: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ("second_moment",)
    granularity: ClassVar[str] = "row"
    rank_ratio: ClassVar[float] = 0.0
    needs_targets: ClassVar[bool] = False

    def budget(self, d_out: int, d_in: int, compression: float | None, nm: NM | None) -> LayerBudget:
        return layer_budget(d_out, d_in, compression, self.rank_ratio, nm, self.granularity)

    def compress(self, W: torch.Tensor, stats: LayerStats | None, budget: LayerBudget,
                 name: str = "layer") -> Factors:
        """W: (d_out, d_in) weight -> its compressed factors within ``budget``."""
        raise NotImplementedError(f"method {self.name!r} has no per-layer compress()")

    def compress_block(self, job: Any) -> None:
        """Compress every linear of one block (default: each on its own with :meth:`compress`, several
        at once where the driver allows: :meth:`compress` must be a pure function of its arguments).

        ``job`` (an :class:`oats.sequential.BlockJob`) gives the block, its inputs and (with
        ``needs_targets``) the dense block's outputs; ``job.replace(unit, factors)`` installs a
        compressed layer.
        """
        job.compress_units(job.units)

    def describe(self) -> dict:
        return {"name": self.name, "rank_ratio": self.rank_ratio, **dataclasses.asdict(self)}

    def identity(self) -> dict:
        """:meth:`describe` without the ``added_later`` parameters at their defaults (what a checkpoint
        is written for: a checkpoint from before such a parameter existed still resumes)."""
        return without_later_defaults(self.describe())


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a :class:`Method` to the registry under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Method)) or not isinstance(getattr(cls, "name", None), str):
        raise TypeError(f"register() takes a Method subclass with a name, got {cls!r}")
    other = METHODS.get(cls.name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"method name {cls.name!r} is registered twice: {other.__module__}, {cls.__module__}")
    if isinstance(cls.needs, tuple):  # else a property of the parameters, checked by get_method
        check_statistics(cls.needs)
    METHODS[cls.name] = cls
    return cls


_discovered = False


def discover() -> dict[str, type[Method]]:
    """Import every module of :data:`METHOD_PACKAGES` once (each registers its methods); the registry."""
    global _discovered
    if not _discovered:
        for package in METHOD_PACKAGES:
            pkg = importlib.import_module(package)
            for info in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"{package}.{info.name}")
        _discovered = True
    return METHODS


def parameters(name: str) -> dict[str, Any]:
    """A registered method's parameters and their defaults."""
    cls = method_class(name)
    return {f.name: f.default for f in dataclasses.fields(cls)}


def without_later_defaults(params: dict) -> dict:
    """A method's parameters (``name`` among them) without its ``added_later`` ones at their defaults;
    unknown methods are returned as they are."""
    cls = discover().get(params.get("name"))
    if cls is None:
        return params
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return {k: v for k, v in params.items() if not (k in cls.added_later and v == defaults.get(k))}


def method_class(name: str) -> type[Method]:
    methods = discover()
    if name not in methods:
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(sorted(methods))}")
    return methods[name]


def get_method(name: str, **params: Any) -> Method:
    """Build a method by name; unknown names or parameters raise an error naming the allowed ones."""
    cls = method_class(name)
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(params) - allowed
    if unknown:
        raise UnknownMethodError(
            f"method {name!r} has no parameter(s) {sorted(unknown)}; its parameters: {sorted(allowed) or 'none'}")
    method = cls(**params)
    check_statistics(method.needs)
    return method


def check_param(method: str, key: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise a ValueError naming ``method.key=value`` and what is allowed, unless ``ok``."""
    if not ok:
        raise ValueError(f"{method}.{key}={value!r}: {allowed}")
