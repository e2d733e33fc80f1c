"""Models whose block weights stay on disk until the driver reaches them (``load=lazy`` / ``load=stream``).

:func:`load_lazy` builds the model's skeleton without weights (parameters on the meta device;
buffers such as rotary tables are computed as usual), loads what is outside the blocks
(embeddings, final norm, head) from the safetensors files, and attaches a :class:`DiskWeights`
as ``model.oats_disk``. The driver and the block-by-block evaluation then call
:meth:`DiskWeights.load` on block ``i`` when they reach it: its tensors are read from the
files straight into ordinary memory (plain reads, :class:`oats.io.TensorFile`: no file page is
mapped, so a tensor's bytes are not resident twice while it loads) and, once the block is
compressed, the dense copies are freed with the replaced layers. With ``streaming`` the driver
also releases each compressed block after writing it to the checkpoint
(:meth:`DiskWeights.release`); the checkpoint is then the compressed model, and :meth:`load`
brings a compressed block back from its file when it is needed again.

Works for any model folder with ``*.safetensors`` weights: the built-ins' dequantised GGUF
cache, local folders and hub snapshots.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from ..io import TensorFile
from ..runtime import trim_heap
from .base import DTYPE_KWARG, ModelNotAvailableError

__all__ = ["DiskWeights", "WeightFileError", "disk_weights", "load_lazy", "safetensors_index"]

ATTR = "oats_disk"


class WeightFileError(RuntimeError):
    """A weight file that cannot be read, lacks a tensor, or holds it in a type that cannot be loaded."""


def safetensors_index(folder: str | Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, for a model folder (sharded or not)."""
    folder = Path(folder)
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (ValueError, KeyError) as err:
            raise WeightFileError(f"{index_file} is not a safetensors index (no weight_map): {err}") from None
        return {key: folder / name for key, name in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotAvailableError(
            f"{folder} holds no .safetensors files: lazy and streamed loading (load=lazy|stream) read the "
            f"weights from safetensors; convert the model (save_pretrained) or use load=eager")
    index = {}
    for file in files:
        with _open(file) as f:
            index.update(dict.fromkeys(f.keys(), file))
    return index


def _open(file: Path):
    try:
        return TensorFile(file)
    except (SafetensorError, OSError) as err:
        raise WeightFileError(f"cannot read weight file {file} ({err}): it is truncated or damaged; "
                              "download or convert it again") from None


def _blocks_prefixes(model: nn.Module) -> list[str]:
    from .adapters import get_adapter

    names = {id(m): name for name, m in model.named_modules()}
    return [names[id(b)] + "." for b in get_adapter(model).blocks(model)]


class DiskWeights:
    """Where a model's tensors live on disk, and the loading / releasing of one block at a time.

    ``compressed``: block index -> its compressed block file (a checkpoint block), for the blocks
    the driver has written; :meth:`load` restores those from it. ``streaming``: the driver
    releases each block once it is written (the model is never whole in memory).
    """

    def __init__(self, model: nn.Module, folder: Path, index: dict[str, Path], dtype: torch.dtype,
                 streaming: bool = False) -> None:
        self.folder, self.index, self.dtype, self.streaming = folder, index, dtype, streaming
        self.prefixes = _blocks_prefixes(model)
        self.compressed: dict[int, Path] = {}

    def materialize(self, root: nn.Module, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
        """Read every meta tensor of ``root`` (a module at ``prefix`` in the model) from the files,
        except those under the submodule paths ``skip``. Tensors shared by two modules (tied
        embeddings) stay shared. Raises :class:`WeightFileError` naming what is missing or unreadable."""
        wanted: dict[int, list[tuple[nn.Module, str, str, bool]]] = defaultdict(list)
        for mname, module in root.named_modules(remove_duplicate=False):
            path = prefix + (f"{mname}." if mname else "")
            if any(path.startswith(s) for s in skip):
                continue
            for is_param, table in ((True, module._parameters), (False, module._buffers)):
                for attr, t in table.items():
                    if t is not None and t.device.type == "meta":
                        wanted[id(t)].append((module, attr, path + attr, is_param))
        by_file: dict[Path, list[tuple[int, str]]] = defaultdict(list)
        missing = []
        for tid, uses in wanted.items():
            key = next((k for _, _, k, _ in uses if k in self.index), None)
            if key is None:
                missing.append(uses[0][2])
            else:
                by_file[self.index[key]].append((tid, key))
        if missing:
            raise WeightFileError(f"{len(missing)} tensor(s) of the model are in no weight file of {self.folder}: "
                                  f"{', '.join(sorted(missing)[:5])}{' ...' if len(missing) > 5 else ''}")
        for file, keys in by_file.items():
            with _open(file) as f:
                for tid, key in keys:
                    value = self._read(f, file, key)
                    module, attr, _, is_param = wanted[tid][0]
                    old = module._parameters[attr] if is_param else module._buffers[attr]
                    if tuple(old.shape) != tuple(value.shape):
                        raise WeightFileError(f"{file}: tensor {key} has shape {tuple(value.shape)}, the model "
                                              f"expects {tuple(old.shape)}")
                    if is_param:
                        value = nn.Parameter(value, requires_grad=old.requires_grad)
                    for module, attr, _, is_param in wanted[tid]:  # one object for every use (tied weights)
                        (module._parameters if is_param else module._buffers)[attr] = value

    def _read(self, f, file: Path, key: str) -> torch.Tensor:
        try:
            value = f.get_tensor(key)
        except (SafetensorError, OSError) as err:
            raise WeightFileError(f"cannot read tensor {key} from {file} ({err}): the file is truncated or "
                                  "damaged") from None
        if not value.is_floating_point():
            raise WeightFileError(f"{file}: tensor {key} is stored as {value.dtype}, which cannot be loaded as "
                                  f"{self.dtype} (quantised weights: dequantise them first)")
        return value.to(self.dtype)  # read into memory of its own: no copy when the type matches

    def load(self, i: int, block: nn.Module) -> None:
        """Bring block ``i`` into memory: its dense tensors from the model's files, then, if the driver
        has written it compressed, its compressed layers from that file. No-op when it is loaded."""
        if not any(t.device.type == "meta" for t in (*block.parameters(), *block.buffers())):
            return
        from ..layers import iter_compressed, load_compressed

        prefix = self.prefixes[i]
        self.materialize(block, prefix, skip=tuple(f"{prefix}{name}." for name, _ in iter_compressed(block)))
        if i in self.compressed:
            load_compressed(block, self.compressed[i], device=torch.device("cpu"), dtype=self.dtype)

    def release(self, i: int, block: nn.Module) -> None:
        """Free block ``i``'s tensors (back to the meta device) and hand the allocator's free heap pages
        back (:func:`oats.runtime.trim_heap`); :meth:`load` brings the block back. Without the trim, a
        block-by-block evaluation of 14 Llama-3-8B-shaped OATS blocks grew by about 110 MiB per block
        (845 MiB after the first block, 2246 MiB after the last; 501 MiB after each with it)."""
        block.to("meta")
        trim_heap()

    def done(self, i: int, block: nn.Module) -> None:
        """A pass is finished with block ``i``: released when streaming, else it stays in memory."""
        if self.streaming:
            self.release(i, block)

    def load_outside(self, model: nn.Module, without: tuple[nn.Module, ...] = ()) -> None:
        """Read what lies outside the blocks (embeddings, final norm, head) if it is not in memory,
        except the modules ``without`` (e.g. the head while capturing block 0's inputs) unless they
        share a tensor with one that is read (tied embeddings)."""
        names = {id(m): name for name, m in model.named_modules()}
        kept = {id(p) for name, m in model.named_modules() if m not in without for p in m.parameters(recurse=False)}
        skip = [f"{names[id(m)]}." for m in without if id(m) in names
                and not any(id(p) in kept for p in m.parameters())]
        self.materialize(model, skip=(*self.prefixes, *skip))

    def release_outside(self, model: nn.Module) -> None:
        """Free the parameters outside the blocks (back to the meta device; tied ones stay tied).
        Computed buffers (rotary tables) are kept: they are in no file."""
        metas: dict[int, nn.Parameter] = {}
        for name, module in model.named_modules():
            if any(f"{name}.".startswith(p) for p in self.prefixes):
                continue
            for attr, p in module._parameters.items():
                if p is not None and p.device.type != "meta":
                    module._parameters[attr] = metas.setdefault(
                        id(p), nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad))

    def load_all(self, model: nn.Module) -> None:
        """Every block in memory (for evaluations that run the whole model at once)."""
        from .adapters import get_adapter

        self.load_outside(model)
        for i, block in enumerate(get_adapter(model).blocks(model)):
            self.load(i, block)


def disk_weights(model: nn.Module) -> DiskWeights | None:
    """The model's :class:`DiskWeights` if it was loaded lazily, else None."""
    return getattr(model, ATTR, None)


def load_lazy(folder: str | Path, dtype: torch.dtype, streaming: bool = False, **kwargs) -> nn.Module:
    """The causal LM of model folder ``folder`` with its blocks left on disk (see the module docstring).

    ``kwargs`` go to ``AutoConfig.from_pretrained``.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..runtime import return_freed_memory

    return_freed_memory()  # blocks come and go: freed ones must leave the process
    folder = Path(folder)
    index = safetensors_index(folder)
    config = AutoConfig.from_pretrained(str(folder), **kwargs)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, **{DTYPE_KWARG: dtype})
    model.tie_weights()  # skipped on the meta device; tied tensors then load once, shared
    weights = DiskWeights(model, folder, index, dtype, streaming)
    if not streaming:  # streamed: embeddings and head are read when a pass needs them, and freed after
        weights.load_outside(model)
    object.__setattr__(model, ATTR, weights)  # a plain attribute, not a submodule
    model.eval()
    return model
