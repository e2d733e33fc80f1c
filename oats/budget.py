"""One place that turns (compression, rank ratio, N:M) into a per-layer budget.

Conventions (see ../shared/METHODS.md):

* ``compression`` rho is the fraction of a layer's parameters removed; the kept
  parameter count is ``floor((1 - rho) * d_out * d_in)``.
* ``rank_ratio`` kappa is the share of the kept parameters given to the
  low-rank factors: ``rank = floor(kappa * kept / (d_out + d_in))``; the sparse
  part gets the rest, so ``rank * (d_out + d_in) + nnz == kept`` exactly for
  layer-wise thresholding. Row-wise thresholding keeps the same count in every
  row, ``floor((kept - rank * (d_out + d_in)) / d_out)``, so at most
  ``d_out - 1`` parameters of the budget go unused.
* ``N:M`` always means *keep N of every M* consecutive input columns (NVIDIA's
  convention), parsed once by :func:`parse_nm`. With N:M the pattern fixes the
  sparse density N/M and, as in the official OATS code, the rank is
  ``floor(kappa * dense_alloc * d_out * d_in / (d_out + d_in))`` with
  ``dense_alloc = (N/M) / (1 - kappa)``; the compression is implied.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

Granularity = Literal["row", "layer"]
GRANULARITIES = ("row", "layer")


class BudgetError(ValueError):
    """A compression setting that cannot produce a valid layer budget."""


@dataclass(frozen=True)
class NM:
    """Keep ``n`` of every ``m`` consecutive input columns in each row."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int)):
            raise BudgetError(f"N:M must be integers, got {self.n!r}:{self.m!r}")
        if self.m < 1 or self.n < 1:
            raise BudgetError(f"N:M={self.n}:{self.m}: N and M must be >= 1")
        if self.n > self.m:
            raise BudgetError(f"N:M={self.n}:{self.m}: N (kept) must be <= M (group size)")

    @property
    def density(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_nm(spec: str | NM | tuple[int, int] | None) -> NM | None:
    """Parse ``"2:4"`` (keep 2 of every 4) into :class:`NM`; ``None``/``""`` -> ``None``."""
    if spec is None or isinstance(spec, NM):
        return spec
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return NM(int(spec[0]), int(spec[1]))
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s in ("", "none", "unstructured"):
            return None
        match = re.fullmatch(r"(\d+)\s*:\s*(\d+)", s)
        if match:
            return NM(int(match.group(1)), int(match.group(2)))
    raise BudgetError(
        f"N:M pattern {spec!r} not understood; write 'N:M' meaning keep N of every M "
        "(e.g. '2:4'), or null for unstructured"
    )


def check_compression(compression: float) -> float:
    if not isinstance(compression, (int, float)) or math.isnan(compression) or not 0.0 < compression < 1.0:
        raise BudgetError(f"compression={compression!r} is outside the open interval (0, 1)")
    return float(compression)


def check_rank_ratio(rank_ratio: float) -> float:
    if not isinstance(rank_ratio, (int, float)) or math.isnan(rank_ratio) or not 0.0 <= rank_ratio <= 1.0:
        raise BudgetError(f"rank_ratio={rank_ratio!r} is outside the closed interval [0, 1]")
    return float(rank_ratio)


@dataclass(frozen=True)
class LayerBudget:
    """What one ``d_out x d_in`` layer keeps.

    ``rank``: rank of the low-rank factors (U is d_out x rank, V is rank x d_in).
    ``nnz``: nonzeros of the sparse part (total over the layer).
    ``row_nnz``: nonzeros per row when thresholding row-wise, else ``None``.
    ``nm``: N:M pattern of the sparse part, or ``None``.
    """

    d_out: int
    d_in: int
    rank: int
    nnz: int
    row_nnz: int | None
    nm: NM | None
    granularity: Granularity

    @property
    def params(self) -> int:
        """Parameters kept: factor entries plus sparse nonzeros."""
        return self.rank * (self.d_out + self.d_in) + self.nnz

    @property
    def dense_params(self) -> int:
        return self.d_out * self.d_in

    @property
    def compression(self) -> float:
        return 1.0 - self.params / self.dense_params


def implied_nm_compression(nm: NM, rank_ratio: float) -> float:
    """Compression implied by an N:M sparse part plus its rank share (official OATS rule)."""
    return 1.0 - nm.density / (1.0 - rank_ratio)


def layer_budget(
    d_out: int,
    d_in: int,
    compression: float | None,
    rank_ratio: float = 0.0,
    nm: NM | str | None = None,
    granularity: Granularity = "row",
    rank: int | None = None,
) -> LayerBudget:
    """Budget of one layer; raises :class:`BudgetError` naming any invalid value.

    ``rank`` fixes the rank instead of deriving it from ``rank_ratio`` (e.g.
    "2:4 + rank 64"); the sparse part then gets what the budget leaves.
    """
    if rank is not None and (not isinstance(rank, int) or rank < 0):
        raise BudgetError(f"rank={rank!r} must be a non-negative integer")
    if d_out < 1 or d_in < 1:
        raise BudgetError(f"layer shape {d_out}x{d_in} must be positive")
    if granularity not in GRANULARITIES:
        raise BudgetError(f"granularity={granularity!r}; allowed: {', '.join(GRANULARITIES)}")
    kappa = check_rank_ratio(rank_ratio)
    nm = parse_nm(nm)
    dense = d_out * d_in
    if nm is None:
        rho = check_compression(compression)  # type: ignore[arg-type]
        kept = math.floor((1.0 - rho) * dense + 1e-9)
        if rank is None:
            rank = math.floor(kappa * kept / (d_out + d_in) + 1e-9)
        sparse = kept - rank * (d_out + d_in)
        if sparse < 0 and rank <= min(d_out, d_in):
            raise BudgetError(
                f"rank {rank} needs {rank * (d_out + d_in)} parameters, more than the {kept} that "
                f"compression={rho} keeps of a {d_out}x{d_in} layer"
            )
        if granularity == "row":
            row_nnz: int | None = sparse // d_out
            nnz = row_nnz * d_out
        else:
            row_nnz, nnz = None, sparse
    else:
        if d_in % nm.m:
            raise BudgetError(f"N:M={nm}: M={nm.m} does not divide the layer's input width d_in={d_in}")
        if kappa >= 1.0:
            raise BudgetError(f"rank_ratio={kappa} leaves nothing for the {nm} sparse part; use rank_ratio < 1")
        implied = implied_nm_compression(nm, kappa)
        if compression is not None and abs(check_compression(compression) - implied) > 1e-3:
            raise BudgetError(
                f"compression={compression} conflicts with N:M={nm} and rank_ratio={kappa}, which imply "
                f"compression {implied:.4f}; leave compression unset (null) with N:M"
            )
        dense_alloc = nm.density / (1.0 - kappa)
        if dense_alloc > 1.0:
            raise BudgetError(
                f"N:M={nm} with rank_ratio={kappa} keeps {dense_alloc:.3f}x the dense parameters (> 1); "
                "lower rank_ratio"
            )
        if rank is None:
            rank = math.floor(kappa * dense_alloc * dense / (d_out + d_in) + 1e-9)
        row_nnz = d_in // nm.m * nm.n
        nnz = row_nnz * d_out
    if rank > min(d_out, d_in):  # reachable only through an explicit rank
        raise BudgetError(f"rank {rank} exceeds min(d_out, d_in)={min(d_out, d_in)} for a {d_out}x{d_in} layer")
    if rank == 0 and nnz == 0:
        raise BudgetError(
            f"compression={compression}, rank_ratio={kappa} keeps nothing of a {d_out}x{d_in} layer "
            "(rank 0 and no nonzeros); lower the compression"
        )
    return LayerBudget(d_out, d_in, rank, nnz, row_nnz, nm, granularity)
