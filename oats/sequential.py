"""The one sequential driver behind every method.

Captures the first block's inputs once; then for each block: collects the statistics the method
needs in one forward pass (hooks on every linear), compresses the block (each linear on its own,
or the whole block for a method that matches the dense block's outputs), re-runs the block so the
next one sees compressed outputs, moves it back to the host and writes a checkpoint. Only the
current block and the calibration activations live on the compute device.

A block's linears are independent given its statistics, so on a CPU with small layers (where one
layer's products cannot keep several threads busy) they are compressed by ``layer_workers`` threads
at once, each with its share of the intra-op threads, and installed in their order afterwards.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from .allocation import OWLConfig, owl_allocation
from .budget import NM, BudgetError, LayerBudget, parse_nm
from .capture import block_on, capture_inputs, resolve_device, run_block
from .checkpoint import Checkpoint, fingerprint
from .layers import CompressedLinear, SplitLinear, set_submodule
from .models.adapters import Unit, get_adapter, text_config
from .models.lazy import disk_weights
from .profile import mark_worker_thread, phase
from .registry import Factors, Method, get_method
from .report import CompressionReport, LayerRecord
from .runtime import check_count, trim_heap
from .stats import LayerStats, collect_stats


@dataclass
class BlockJob:
    """One block to compress, as :meth:`Method.compress_block` sees it.

    ``inputs``: (n, tokens, hidden) the block's inputs (outputs of the already compressed blocks).
    ``dense_inputs`` / ``targets``: (n, tokens, hidden) the *dense* model's inputs to this block and
    the dense block's outputs on them, kept by the driver only for methods with ``needs_targets``;
    else None. ``stats``: the method's input statistics per unit path, collected on ``inputs``.
    """

    index: int
    block: nn.Module
    units: list[Unit]
    inputs: torch.Tensor
    dense_inputs: torch.Tensor | None
    targets: torch.Tensor | None
    kwargs: dict
    device: torch.device
    batch_size: int
    stats: dict[str, LayerStats]
    method: Method
    compression: float | None
    nm: NM | None
    records: list[LayerRecord] = field(default_factory=list)
    workers: int = 1  # linears compressed at once by compress_units

    def budget(self, unit: Unit, rows: tuple[int, int] | None = None) -> LayerBudget:
        lin = self.block.get_submodule(unit.path)
        a, b = rows or (0, lin.out_features)
        return self.method.budget(b - a, lin.in_features, self.compression, self.nm)

    def compress_units(self, units: list[Unit]) -> None:
        """Compress the linears ``units`` with the method's per-layer function (``workers`` parts at a
        time, each a pure function of its weight, statistics and budget) and install them in order."""
        jobs = [(unit, part, rows) for unit in units
                for part, rows in (unit.parts or {"": (0, self.block.get_submodule(unit.path).out_features)}).items()]
        if self.workers > 1 and len(jobs) > 1:
            with _threads_split(self.workers) as pool:
                done = list(pool.map(lambda job: self._compress_part(*job), jobs))
        else:
            done = [self._compress_part(*job) for job in jobs]
        for unit in units:
            mine = [(part, f, sec) for (u, part, _), (f, sec) in zip(jobs, done) if u is unit]
            self.replace(unit, {part: f for part, f, _ in mine}, {part: sec for part, _, sec in mine})

    def _compress_part(self, unit: Unit, part: str, rows: tuple[int, int]) -> tuple[Factors, float]:
        a, b = rows
        t0 = time.perf_counter()
        factors = self.method.compress(self.block.get_submodule(unit.path).weight.data[a:b],
                                       self.stats.get(unit.path), self.budget(unit, rows), name=_name(unit, part))
        return factors, time.perf_counter() - t0

    def replace(self, unit: Unit, factors: dict[str, Factors], seconds: dict[str, float] | None = None) -> None:
        """Install the compressed layer(s) of ``unit`` ({part: factors}; part '' for a plain linear) and
        record them. The driver casts to the model's dtype and keeps the original bias."""
        lin = self.block.get_submodule(unit.path)
        dt, bias = lin.weight.dtype, lin.bias
        parts = unit.parts or {"": (0, lin.out_features)}
        new = {}
        for part, (a, b) in parts.items():
            f = factors[part]
            new[part] = CompressedLinear(f.sparse.to(dt), None if f.U is None else f.U.to(dt),
                                         None if f.V is None else f.V.to(dt), None if bias is None else bias.data[a:b])
            budget, st = self.budget(unit, (a, b)), self.stats.get(unit.path)
            self.records.append(LayerRecord(
                block=self.index, name=_name(unit, part), d_out=b - a, d_in=lin.in_features, rank=new[part].rank,
                nnz=new[part].nnz, params=new[part].num_params(include_bias=False), budget_params=budget.params,
                dense_params=budget.dense_params, target_compression=1 - budget.params / budget.dense_params,
                dead_columns=st.dead_columns() if st is not None else 0,
                seconds=round((seconds or {}).get(part, 0.0), 4)))
        set_submodule(self.block, unit.path, SplitLinear(new) if unit.parts else new[""])

    def outputs(self) -> torch.Tensor:
        """The block's current outputs on ``inputs`` (n, tokens, hidden), on the inputs' device."""
        return run_block(self.block, self.inputs, self.kwargs, self.device, self.batch_size,
                         out=torch.empty_like(self.inputs))


def _name(unit: Unit, part: str) -> str:
    return f"{unit.path}.{part}" if part else unit.path


SMALL_LAYER = 4 << 20  # weights: layers up to this size leave threads idle in one layer's products


@contextmanager
def _threads_split(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of ``workers`` threads, the process's intra-op threads shared among them meanwhile."""
    threads = torch.get_num_threads()
    share = max(1, threads // workers)
    torch.set_num_threads(share)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="oats-layer", initializer=_worker_init,
                                initargs=(share,)) as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)  # in the worker too: OpenMP's count (MKL's products follow it) is per thread
    mark_worker_thread()


def layer_workers_for(blocks, plan, device: torch.device, requested: int | None) -> int:
    """Linears compressed at once: ``requested`` if given, else 2 on a CPU with at least 2 threads
    whose largest linear has at most :data:`SMALL_LAYER` weights (measured on SmolLM2-135M, 2 threads:
    OATS on a block's 7 linears 0.52 s one at a time, 0.43 s two at a time), else 1."""
    check_count("layer_workers", requested)
    if requested is not None:
        return requested
    if device.type != "cpu" or torch.get_num_threads() < 2:
        return 1
    largest = max((b.get_submodule(u.path).weight.numel() for b, units in zip(blocks, plan) for u in units),
                  default=0)
    return 2 if largest <= SMALL_LAYER else 1


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
    layer_workers: int | None = None,
) -> CompressionReport:
    """Compress every linear layer of every transformer block of ``model`` in place.

    calib: (n, seqlen) LongTensor of calibration token ids, or for a vision encoder
    (ViT, DINOv2, timm) an (n, C, H, W) float tensor of preprocessed images. ``method``: a
    :class:`~oats.registry.Method` or its name. ``compression``: fraction of each
    layer's parameters removed (None with N:M, which fixes it). ``owl``: allocate
    per-block compression with OWL around ``compression``. ``checkpoint_dir``:
    write a checkpoint after each block and resume from it. ``layer_workers``: linears of a block
    compressed at once (None: :func:`layer_workers_for` decides). Returns the measured
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
    plan = [adapter.units(b, text_config(model)) for b in blocks]
    workers = layer_workers_for(blocks, plan, device, layer_workers)
    compressions: list[float | None] = [compression] * len(blocks)
    _validate_budgets(blocks, plan, method, compressions, nm)

    weights = disk_weights(model)
    if weights is not None and weights.streaming and not checkpoint_dir:
        raise ValueError("a streamed model (load=stream) is written block by block to the checkpoint, its only "
                         "copy: pass checkpoint_dir (checkpoint=true)")
    ckpt = None
    if checkpoint_dir:
        ckpt = Checkpoint(checkpoint_dir, fingerprint(model, method.identity(), compression, str(nm) if nm else None,
                                                      owl.describe() if owl else None, calib))
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
    with phase("capture"):
        inps, kwargs = capture_inputs(model, blocks, calib, device, keep_on)
    dense = inps.clone() if method.needs_targets else None  # the dense model's stream: inputs to block i

    bar = tqdm(range(len(blocks)), desc=f"{method.name} blocks", disable=not progress)
    for i in bar:
        with block_on(model, i, blocks[i], device) as block:
            targets = None
            if dense is not None:  # the dense block's outputs, before it is compressed (or restored)
                with phase("propagate"):
                    targets = run_block(block, dense, kwargs[i], device, batch_size, out=torch.empty_like(dense))
            if i < start:  # compressed in an earlier run: restore and propagate
                ckpt.restore_block(i, block)
                block.to(device)
            else:
                with phase("statistics"):
                    stats = collect_stats(block, plan[i], inps, kwargs[i], device, batch_size, method.needs)
                job = BlockJob(i, block, plan[i], inps, dense, targets, kwargs[i], device, batch_size, stats,
                               method, compressions[i], nm, workers=workers)
                bar.set_postfix_str(f"block {i}")
                with phase("compress"):
                    method.compress_block(job)
                records += job.records
            dense = targets
            if i + 1 < len(blocks):  # the last block's outputs feed nothing
                with phase("propagate"):
                    run_block(block, inps, kwargs[i], device, batch_size, out=inps)
            if ckpt is not None and i >= start:
                with phase("checkpoint"):
                    ckpt.save(i, block, records, owl_sparsity)
            if weights is not None and ckpt is not None:  # streaming: the checkpoint block is then its only copy
                weights.compressed[i] = ckpt.block_file(i)
        trim_heap()  # the block's freed weights and activations leave the process
    del inps, dense, targets
    return CompressionReport(records, method=method.describe(), compression=compression,
                             nm=str(nm) if nm else None, owl_sparsity=owl_sparsity)
