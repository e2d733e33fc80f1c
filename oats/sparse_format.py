"""The compact sparse format: one bit per weight plus the kept values (compressed-tensors' sparse bitmask).

A (d_out, d_in) sparse matrix is stored as four tensors, named as ``compressed-tensors`` names them
(the format vLLM and llm-compressor read), so that a sparse-only checkpoint is that library's
``sparse-bitmask`` format:

* ``compressed``: the nonzeros row by row, 1-D, fp32 or bf16;
* ``bitmask``: uint8 (d_out, ceil(d_in / 8)), bit ``j % 8`` of byte ``j // 8`` set where column j is
  kept (``numpy.packbits(..., bitorder="little")``);
* ``shape``: int64 ``[d_out, d_in]``;
* ``row_offsets``: int64 (d_out,), the index in ``compressed`` of each row's first value.

At density p that is ``1/8 + 4 p`` bytes per weight in fp32 (``1/8 + 2 p`` in bf16) against 4 (2)
dense, whatever the pattern. N:M patterns use the same layout: a 2:4 or 4:8 group's bits are no
more than its in-group indices would take (4 bits per 4 weights either way for 2:4, 8 against 12
for 4:8), and one format keeps one kernel. Products run on the native kernels
(:func:`oats.native.bitmask_matmul`: AVX-512 or AVX2 chosen at run time), or on PyTorch when they
are not built.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import native

SUFFIXES = ("compressed", "bitmask", "shape", "row_offsets")
VALUE_DTYPES = (torch.float32, torch.bfloat16)  # the kernels' value types
STORAGE_DTYPES = VALUE_DTYPES + (torch.float16,)  # what the format stores (fp16 products expand to dense)
_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)


@dataclass
class BitmaskTensor:
    """A sparse (d_out, d_in) matrix in the bitmask format (see the module doc)."""

    values: torch.Tensor
    bitmask: torch.Tensor
    row_offsets: torch.Tensor
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        d_out, d_in = self.shape
        if self.values.dtype not in STORAGE_DTYPES:
            raise ValueError(f"bitmask values dtype {self.values.dtype}; allowed: fp32, bf16, fp16")
        if self.bitmask.dtype != torch.uint8 or tuple(self.bitmask.shape) != (d_out, (d_in + 7) // 8):
            raise ValueError(f"bitmask {self.bitmask.dtype} {tuple(self.bitmask.shape)} does not fit shape "
                             f"{self.shape}: expected uint8 ({d_out}, {(d_in + 7) // 8})")
        if tuple(self.row_offsets.shape) != (d_out,):
            raise ValueError(f"row_offsets of shape {tuple(self.row_offsets.shape)}; expected ({d_out},)")
        self.values = self.values.contiguous().view(-1)
        self.bitmask = self.bitmask.contiguous()
        self.row_offsets = self.row_offsets.to(torch.int64).contiguous()
        # the kernels trust these arrays: check they agree (a damaged file must not read out of bounds)
        if d_in % 8 and d_out and int((self.bitmask[:, -1] >> (d_in % 8)).max()) != 0:
            raise ValueError(f"bitmask of shape {self.shape} has bits set past column {d_in}")
        counts = torch.from_numpy(_POPCOUNT[self.bitmask.numpy()].sum(1, dtype=np.int64))
        expected = torch.cumsum(counts, 0) - counts
        if not torch.equal(self.row_offsets, expected) or int(counts.sum()) != self.values.numel():
            raise ValueError(f"bitmask tensor of shape {self.shape}: row_offsets or the number of values "
                             f"({self.values.numel()}) disagree with the bitmask ({int(counts.sum())} bits set)")

    @classmethod
    def from_dense(cls, S: torch.Tensor, dtype: torch.dtype | None = None) -> BitmaskTensor:
        """S's nonzeros (in ``dtype``, default S's if fp32/bf16 else fp32) and their bitmask."""
        if S.dim() != 2:
            raise ValueError(f"BitmaskTensor.from_dense takes a 2-D matrix, got shape {tuple(S.shape)}")
        dtype = dtype or (S.dtype if S.dtype in STORAGE_DTYPES else torch.float32)
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"bitmask values dtype {dtype}; allowed: fp32, bf16, fp16")
        S = S.detach().cpu().to(dtype)
        keep = S != 0
        counts = keep.sum(1)
        offsets = torch.zeros(S.shape[0], dtype=torch.int64)
        offsets[1:] = counts.cumsum(0)[:-1]
        bits = torch.from_numpy(np.packbits(keep.numpy(), axis=-1, bitorder="little"))
        return cls(S[keep], bits, offsets, (S.shape[0], S.shape[1]))

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def nbytes(self) -> int:
        """Bytes of the values, bitmask and row offsets."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.bitmask, self.row_offsets))

    def mask(self) -> torch.Tensor:
        """The kept entries, bool (d_out, d_in)."""
        bits = np.unpackbits(self.bitmask.numpy(), axis=-1, count=self.shape[1], bitorder="little")
        return torch.from_numpy(bits.astype(bool))

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense matrix (zeros where not kept)."""
        if native.available() and self.values.dtype in VALUE_DTYPES:
            return native.bitmask_to_dense(self.values, self.bitmask, self.row_offsets, self.shape[1]).to(dtype)
        out = torch.zeros(self.shape, dtype=dtype)
        out[self.mask()] = self.values.to(dtype)
        return out

    def matmul(self, x: torch.Tensor, out: torch.Tensor | None = None, accumulate: bool = False,
               isa: str | None = None) -> torch.Tensor:
        """``x S^T`` for x (n, d_in) fp32: (n, d_out) fp32 (added to ``out`` with ``accumulate``)."""
        x = x.to(torch.float32).contiguous()
        if native.available() and self.values.dtype in VALUE_DTYPES:
            return native.bitmask_matmul(self.values, self.bitmask, self.row_offsets, self.shape[1], x, out,
                                         accumulate, isa)[0]
        y = x @ self.to_dense().T
        if out is None:
            return y
        return out.add_(y) if accumulate else out.copy_(y)

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """The four tensors under ``prefix.compressed`` etc. (compressed-tensors' names)."""
        return {f"{prefix}.compressed": self.values, f"{prefix}.bitmask": self.bitmask,
                f"{prefix}.shape": torch.tensor(self.shape, dtype=torch.int64),
                f"{prefix}.row_offsets": self.row_offsets}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], prefix: str) -> BitmaskTensor:
        missing = [s for s in SUFFIXES if f"{prefix}.{s}" not in tensors]
        if missing:
            raise KeyError(f"bitmask tensor {prefix!r} lacks {', '.join(prefix + '.' + m for m in missing)}")
        shape = tuple(int(v) for v in tensors[f"{prefix}.shape"].tolist())
        return cls(tensors[f"{prefix}.compressed"], tensors[f"{prefix}.bitmask"], tensors[f"{prefix}.row_offsets"],
                   shape)  # type: ignore[arg-type]
