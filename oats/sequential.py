"""The one sequential driver behind every method.

Captures the first block's inputs once; then for each block: collects the
statistics the method declares in one forward pass (hooks on every linear),
compresses every linear, re-runs the block so the next block sees compressed
outputs, moves the block back to the host and writes a checkpoint. Only the
current block and the calibration activations live on the compute device.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from baselines.owl import outlier_ratio, owl_sparsities
from baselines.wanda import wanda_scores

from .budget import NM, BudgetError, parse_nm
from .io import atomic_write_json
from .layers import CompressedLinear, SplitLinear, load_compressed, save_compressed, set_submodule
from .methods import Method, get_method
from .models.adapters import Unit, get_adapter, text_config
from .report import CompressionReport, LayerRecord
from .stats import InputStats


@dataclass(frozen=True)
class OWLConfig:
    """OWL allocation: outliers are scores > hyper_m x mean; block sparsities spread over [t - lam, t + lam]."""

    hyper_m: float = 3.0
    lam: float = 0.08


class CheckpointMismatchError(RuntimeError):
    pass


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda if available else cpu; a CUDA device that is not there is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    return dev


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


# ------------------------------------------------------------------ capture

class _StopForward(Exception):
    pass


class _Catcher(nn.Module):
    """Stands in for block ``index``: records its inputs, passes hidden states through unchanged."""

    def __init__(self, index: int, last: int, store: dict) -> None:
        super().__init__()
        self.index, self.last, self.store = index, last, store

    def forward(self, hidden_states, *args, **kwargs):
        store = self.store
        if self.index == 0:
            store["inputs"].append(hidden_states.detach().to(store["keep_on"]))
        if store["kwargs"][self.index] is None:
            store["kwargs"][self.index] = {**kwargs, **({"_args": args} if args else {})}
        if self.index == self.last or store["kwargs"][-1] is not None:
            raise _StopForward  # everything needed from this sample is recorded
        return hidden_states


@torch.no_grad()
def capture_inputs(model: nn.Module, blocks: nn.ModuleList, calib: torch.Tensor, device: torch.device,
                   keep_on: torch.device, call: Callable[[nn.Module, torch.Tensor], Any] | None = None,
                   ) -> tuple[torch.Tensor, list[dict]]:
    """Hidden states entering block 0 for every calibration item, and each block's keyword inputs.

    calib: (n, seqlen) token ids, or (n, C, H, W) images for a vision encoder -> inputs
    (n, tokens, hidden) on ``keep_on``, and per-block kwargs (attention mask, position
    embeddings, ...) captured from the first item; they depend only on the number of
    tokens, which is the same for all items. ``call(model, item)`` runs the model on one
    item (default: the model's adapter's, e.g. ``model(ids[None], use_cache=False)``).
    """
    call = call or get_adapter(model).call
    originals = list(blocks)
    store: dict = {"inputs": [], "kwargs": [None] * len(blocks), "keep_on": keep_on}
    host = _device_of(model)
    for i in range(len(blocks)):
        blocks[i] = _Catcher(i, len(blocks) - 1, store)
    try:
        model.to(device)  # moves embeddings, rotary tables, norms; blocks are detached
        for item in calib:
            try:
                call(model, item.to(device))
            except _StopForward:
                pass
    finally:
        model.to(host)
        for i, block in enumerate(originals):
            blocks[i] = block
    return torch.cat(store["inputs"]), store["kwargs"]


# ------------------------------------------------------------------ per-block passes

def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for a in range(0, n, batch_size):
        yield slice(a, min(a + batch_size, n))


def _call_block(block: nn.Module, x: torch.Tensor, kw: dict) -> torch.Tensor:
    kw = dict(kw)
    args = kw.pop("_args", ())
    out = block(x, *args, **kw)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_block(block: nn.Module, inps: torch.Tensor, kw: dict, device: torch.device, batch_size: int,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Forward every calibration sequence through ``block``; writes into ``out`` (may be ``inps``)."""
    kw = _to(kw, device)
    for sl in _batches(inps.shape[0], batch_size):
        y = _call_block(block, inps[sl].to(device), kw)
        if out is not None:
            out[sl] = y.to(out.device)
    return out


@torch.no_grad()
def collect_stats(block: nn.Module, units: list[Unit], inps: torch.Tensor, kw: dict, device: torch.device,
                  batch_size: int, needs: tuple[str, ...]) -> dict[str, InputStats]:
    """One forward pass accumulating the declared statistics for every linear's input."""
    if not needs:
        return {}
    stats: dict[str, InputStats] = {}
    handles = []
    for unit in units:
        lin = block.get_submodule(unit.path)
        st = stats[unit.path] = InputStats(lin.in_features, hessian="hessian" in needs, device=device)
        handles.append(lin.register_forward_hook(lambda m, inp, out, st=st: st.add(inp[0])))
    try:
        run_block(block, inps, kw, device, batch_size)
    finally:
        for h in handles:
            h.remove()
    return stats


# ------------------------------------------------------------------ checkpoints

class Checkpoint:
    """Per-block checkpoint folder: ``block_NNNN.safetensors`` then ``state.json``, each written atomically.

    ``state.json`` is written after the block file, so it only ever names complete blocks.
    """

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    def load(self) -> dict | None:
        if not self.state_path.exists():
            return None
        state = json.loads(self.state_path.read_text())
        if state.get("fingerprint") != self.fingerprint:
            raise CheckpointMismatchError(
                f"checkpoint {self.folder} was written for a different model/method/budget/calibration "
                f"(fingerprint {state.get('fingerprint')} != {self.fingerprint}); use another folder or delete it"
            )
        return state

    def block_file(self, i: int) -> Path:
        return self.folder / f"block_{i:04d}.safetensors"

    def save(self, i: int, block: nn.Module, records: list[LayerRecord], owl: list[float] | None) -> None:
        save_compressed(block, self.block_file(i))
        atomic_write_json(self.state_path, {
            "fingerprint": self.fingerprint,
            "next_block": i + 1,
            "records": [asdict(r) for r in records],
            "owl_sparsity": owl,
        })

    def restore_block(self, i: int, block: nn.Module) -> None:
        load_compressed(block, self.block_file(i))


def fingerprint(model: nn.Module, method: Method, compression: float | None, nm: NM | None,
                owl: OWLConfig | None, calib: torch.Tensor) -> str:
    cfg = text_config(model)
    desc = {
        "model_type": cfg.model_type,
        "layers": getattr(cfg, "num_hidden_layers", None),
        "hidden": getattr(cfg, "hidden_size", None),
        "method": method.describe(),
        "compression": compression,
        "nm": str(nm) if nm else None,
        "owl": asdict(owl) if owl else None,
        "calib": hashlib.sha256(calib.cpu().numpy().tobytes()).hexdigest(),
        "calib_shape": list(calib.shape),
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ the driver

def _validate_budgets(blocks, plan, method: Method, compressions: list[float | None], nm: NM | None) -> None:
    """Every layer's budget is computed before any work, so bad settings fail fast."""
    for i, (block, units) in enumerate(zip(blocks, plan)):
        for unit in units:
            lin = block.get_submodule(unit.path)
            for a, b in (unit.parts or {"": (0, lin.out_features)}).values():
                try:
                    method.budget(b - a, lin.in_features, compressions[i], nm)
                except BudgetError as e:
                    raise BudgetError(f"block {i} {unit.path}: {e}") from None


@torch.no_grad()
def owl_allocation(model: nn.Module, calib: torch.Tensor, target: float, owl: OWLConfig,
                   device: torch.device, batch_size: int = 1, offload_activations: bool = False,
                   progress: bool = True) -> list[float]:
    """OWL per-block sparsity from a pass over the *dense* model (Wanda scores of every linear)."""
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    keep_on = torch.device("cpu") if offload_activations else device
    inps, kwargs = capture_inputs(model, blocks, calib, device, keep_on)
    ratios = []
    for i in tqdm(range(len(blocks)), desc="OWL outlier pass", disable=not progress):
        block, host = blocks[i], _device_of(blocks[i])
        block.to(device)
        units = adapter.units(block, text_config(model))
        stats = collect_stats(block, units, inps, kwargs[i], device, batch_size, ("second_moment",))
        scores = [wanda_scores(block.get_submodule(u.path).weight, stats[u.path].column_rms(u.path)) for u in units]
        ratios.append(outlier_ratio(scores, owl.hyper_m))
        run_block(block, inps, kwargs[i], device, batch_size, out=inps)
        block.to(host)
    return owl_sparsities(ratios, target, owl.lam)


def compress_model(
    model: nn.Module,
    calib: torch.Tensor,
    method: Method | str = "oats",
    compression: float | None = 0.5,
    nm: NM | str | None = None,
    *,
    device: str | torch.device = "cpu",
    owl: OWLConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    batch_size: int = 1,
    offload_activations: bool = False,
    progress: bool = True,
) -> CompressionReport:
    """Compress every linear layer of every transformer block of ``model`` in place.

    calib: (n, seqlen) LongTensor of calibration token ids, or for a vision encoder
    (ViT, DINOv2, timm) an (n, C, H, W) float tensor of preprocessed images. ``method``: a
    :class:`~oats.methods.Method` or its name. ``compression``: fraction of each
    layer's parameters removed (None with N:M, which fixes it). ``owl``: allocate
    per-block compression with OWL around ``compression``. ``checkpoint_dir``:
    write a checkpoint after each block and resume from it. Returns the measured
    per-layer report.
    """
    method = get_method(method) if isinstance(method, str) else method
    nm = parse_nm(nm)
    adapter = get_adapter(model)
    adapter.check_calibration(calib)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if owl is not None and nm is not None:
        raise BudgetError(f"OWL allocates unstructured sparsity; it cannot be combined with N:M={nm}")
    device = resolve_device(device)
    blocks = adapter.blocks(model)
    cfg = text_config(model)
    plan = [adapter.units(b, cfg) for b in blocks]
    compressions: list[float | None] = [compression] * len(blocks)
    _validate_budgets(blocks, plan, method, compressions, nm)

    ckpt = Checkpoint(checkpoint_dir, fingerprint(model, method, compression, nm, owl, calib)) if checkpoint_dir else None
    state = ckpt.load() if ckpt else None
    owl_sparsity = state["owl_sparsity"] if state else None
    if owl is not None and owl_sparsity is None:
        owl_sparsity = owl_allocation(model, calib, compression, owl, device, batch_size, offload_activations, progress)
    if owl_sparsity is not None:
        compressions = list(owl_sparsity)
        _validate_budgets(blocks, plan, method, compressions, nm)

    records = [LayerRecord(**r) for r in state["records"]] if state else []
    start = state["next_block"] if state else 0
    if start:
        print(f"resuming from checkpoint {checkpoint_dir}: blocks 0-{start - 1} of {len(blocks)} already compressed",
              flush=True)
    keep_on = torch.device("cpu") if offload_activations else device
    inps, kwargs = capture_inputs(model, blocks, calib, device, keep_on)

    bar = tqdm(range(len(blocks)), desc=f"{method.name} blocks", disable=not progress)
    for i in bar:
        block, host = blocks[i], _device_of(blocks[i])
        if i < start:  # compressed in an earlier run: restore and propagate
            ckpt.restore_block(i, block)
            block.to(device)
        else:
            block.to(device)
            stats = collect_stats(block, plan[i], inps, kwargs[i], device, batch_size, method.needs)
            for unit in plan[i]:
                bar.set_postfix_str(unit.path)
                records += _compress_unit(block, unit, stats.get(unit.path), method, compressions[i], nm, i)
        run_block(block, inps, kwargs[i], device, batch_size, out=inps)
        block.to(host)
        if ckpt is not None and i >= start:
            ckpt.save(i, block, records, owl_sparsity)
    del inps
    return CompressionReport(records, method=method.describe(), compression=compression,
                             nm=str(nm) if nm else None, owl_sparsity=owl_sparsity)


def _compress_unit(block: nn.Module, unit: Unit, stats: InputStats | None, method: Method,
                   compression: float | None, nm: NM | None, block_index: int) -> list[LayerRecord]:
    lin = block.get_submodule(unit.path)
    W, bias = lin.weight.data, (None if lin.bias is None else lin.bias.data)
    parts = unit.parts or {"": (0, lin.out_features)}
    new: dict[str, CompressedLinear] = {}
    records = []
    for part, (a, b) in parts.items():
        name = f"{unit.path}.{part}" if part else unit.path
        budget = method.budget(b - a, lin.in_features, compression, nm)
        t0 = time.perf_counter()
        cl = method.compress(W[a:b], stats, budget, None if bias is None else bias[a:b], name=name)
        new[part] = cl
        records.append(LayerRecord(
            block=block_index, name=name, d_out=b - a, d_in=lin.in_features, rank=cl.rank, nnz=cl.nnz,
            params=cl.num_params(include_bias=False), budget_params=budget.params, dense_params=budget.dense_params,
            target_compression=1 - budget.params / budget.dense_params,
            dead_columns=stats.dead_columns() if stats is not None else 0,
            seconds=round(time.perf_counter() - t0, 4),
        ))
    set_submodule(block, unit.path, SplitLinear(new) if unit.parts else new[""])
    return records
