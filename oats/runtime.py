"""How a run computes on this machine: thread count and the CPU code paths of torch and MKL.

The same config gives bit-different numbers with another thread count (LAPACK's blocking), another
``ATEN_CPU_CAPABILITY`` (torch's vectorised softmax, SiLU, attention) or another MKL code path
(``MKL_CBWR``): the ways two machines differ. A run's ``runtime`` block pins them, so a table can
repeat each cell under several of them and measure the spread (``reproduce/run.py repeat=machines``).
``null`` everywhere (the default) leaves the machine's own choice, which :func:`describe` records.

The ISA and MKL path are read when torch loads, so a run that asks for them runs in a process
started with :func:`environment` (the launcher's subprocess, or ``oats.cli`` re-executing itself).
"""
from __future__ import annotations

import functools
import os
import platform
import re
from pathlib import Path
from typing import Any, Mapping

KEYS = ("threads", "cpu_capability", "mkl_cbwr", "layer_workers")
CPU_CAPABILITIES = ("default", "avx2", "avx512")  # x86 values of ATEN_CPU_CAPABILITY
_CBWR = re.compile(r"(AUTO|COMPATIBLE|SSE4_2|AVX|AVX2|AVX512|AVX512_E1|AVX10)(,STRICT)?")


class RuntimeSettingError(ValueError):
    """A runtime value that is not allowed, or that this machine cannot honour."""


def settings(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The non-null runtime settings of a run config's ``runtime`` block, checked."""
    rt = dict(cfg or {})
    unknown = set(rt) - set(KEYS)
    if unknown:
        raise RuntimeSettingError(f"runtime has unknown key(s) {sorted(unknown)}; allowed: {', '.join(KEYS)}")
    rt = {k: v for k, v in rt.items() if v is not None}
    for key in ("threads", "layer_workers"):
        check_count(f"runtime.{key}", rt.get(key))
    isa = rt.get("cpu_capability")
    if isa is not None and isa not in CPU_CAPABILITIES:
        raise RuntimeSettingError(f"runtime.cpu_capability={isa!r}; allowed: {', '.join(CPU_CAPABILITIES)} or null")
    if isa is not None and isa not in supported_capabilities():
        raise RuntimeSettingError(f"runtime.cpu_capability={isa!r} is not supported by this CPU ({cpu_model()}); "
                                  f"it supports: {', '.join(supported_capabilities())}")
    cbwr = rt.get("mkl_cbwr")
    if cbwr is not None and not (isinstance(cbwr, str) and _CBWR.fullmatch(cbwr)):
        raise RuntimeSettingError(f"runtime.mkl_cbwr={cbwr!r}; allowed: AUTO, COMPATIBLE, SSE4_2, AVX, AVX2, AVX512, "
                                  "AVX512_E1, AVX10 (optionally ',STRICT') or null")
    return rt


def check_count(key: str, value: Any) -> None:
    """A thread or worker count: a positive integer, or None (the machine's own choice)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise RuntimeSettingError(f"{key}={value!r} must be a positive integer or null")


def environment(rt: Mapping[str, Any]) -> dict[str, str]:
    """Environment variables that make a new process compute as ``rt`` asks."""
    env: dict[str, str] = {}
    if rt.get("threads") is not None:
        n = str(rt["threads"])
        env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n)
    if rt.get("cpu_capability") is not None:
        env["ATEN_CPU_CAPABILITY"] = rt["cpu_capability"]
    if rt.get("mkl_cbwr") is not None:
        env["MKL_CBWR"] = rt["mkl_cbwr"]
    return env


def needs_new_process(rt: Mapping[str, Any]) -> bool:
    """True when this process's environment does not already say what ``rt`` asks for."""
    return any(os.environ.get(k) != v for k, v in environment(rt).items())


def apply(rt: Mapping[str, Any]) -> None:
    """Check that this process computes as ``rt`` asks (it was started with :func:`environment`)."""
    import torch

    if rt.get("threads") is not None:
        torch.set_num_threads(int(rt["threads"]))
    isa = rt.get("cpu_capability")
    if isa is not None:
        got = torch.backends.cpu.get_cpu_capability().lower()
        if got != isa:
            raise RuntimeSettingError(f"runtime.cpu_capability={isa!r} but torch runs {got!r} here: "
                                      f"this CPU ({cpu_model()}) lacks it, or torch was loaded before it was set")


_NEEDS_FLAGS = {"avx2": {"avx2", "fma"}, "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"}}


def supported_capabilities() -> tuple[str, ...]:
    """The ``cpu_capability`` values this CPU can run ('default' everywhere; avx2/avx512 on x86 with the flags)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return ("default", *(isa for isa, need in _NEEDS_FLAGS.items() if need <= flags))


def cpu_model() -> str:
    """The CPU's model name (e.g. 'AMD EPYC', 'Intel(R) Xeon(R) ...')."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, Any]:
    """What this process computes with: CPU, torch's kernel ISA, threads and the MKL path asked for."""
    import torch

    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability().lower(),
        "threads": torch.get_num_threads(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
    }


def label(rt: Mapping[str, Any]) -> str:
    """Short name of a runtime setting, e.g. 'threads=1 cpu_capability=avx2' ('' for the machine's own)."""
    return " ".join(f"{k}={rt[k]}" for k in KEYS if rt.get(k) is not None)


@functools.lru_cache(maxsize=1)
def _libc():
    """The C library (ctypes), or None where it cannot be loaded."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def return_freed_memory(threshold: int = 32 << 20) -> bool:
    """Fix glibc's allocator thresholds so that freed memory leaves the process.

    By default glibc raises its mmap threshold each time a large block is freed (up to 32 MiB) and
    its trim threshold with it, and keeps the freed heap space: measured on SmolLM2-135M streamed
    block by block, 0.5 GB freed and never returned. Fixing both (which turns that adaptation off)
    sends tensors of ``threshold`` bytes or more to their own mappings, returned when freed; smaller
    ones come from the heap, whose free pages the driver hands back after each block
    (:func:`trim_heap`). The threshold is 32 MiB, not lower: with 1 MiB every activation of a block
    forward was a fresh mapping, zero-filled page by page (SmolLM2 OATS, 2 threads: 50 s of system
    time and 40% slower forward passes). Numbers are unaffected. Returns False where the C library
    has no ``mallopt`` (not glibc).
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    m_mmap_threshold, m_trim_threshold = -3, -1
    return bool(mallopt(m_mmap_threshold, int(threshold))) and bool(mallopt(m_trim_threshold, int(threshold)))


def trim_heap() -> bool:
    """Hand the allocator's free heap pages back to the system (glibc ``malloc_trim(0)``, which also
    releases free pages in the middle of the heap). Cheap (milliseconds); the driver calls it after
    each block. Returns False where the C library has no ``malloc_trim``."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    return malloc_trim is not None and bool(malloc_trim(0))


def file_mappings(suffix: str) -> list[tuple[int, int]]:
    """Address ranges of this process's memory mappings of files whose path ends with ``suffix``
    (``/proc/self/maps``; empty where there is none)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(suffix):
            a, b = fields[0].split("-")
            ranges.append((int(a, 16), int(b, 16)))
    return ranges


def drop_pages(t, mappings: list[tuple[int, int]]) -> bool:
    """Take the whole memory pages under CPU tensor ``t`` out of this process's resident set
    (``madvise(MADV_DONTNEED)``), if ``t`` lies inside one of the file ``mappings``
    (:func:`file_mappings`); the file keeps them in the page cache and a later read maps them
    again. Anything else (ordinary memory, which MADV_DONTNEED would zero) is left alone.
    Returns whether pages were dropped."""
    import ctypes
    import mmap

    start, nbytes = t.data_ptr(), t.numel() * t.element_size()
    if not any(a <= start and start + nbytes <= b for a, b in mappings):
        return False
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, (start + nbytes) // page * page
    madvise = getattr(_libc(), "madvise", None)
    if last <= first or madvise is None:
        return False
    madvise_dontneed = 4
    return madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), madvise_dontneed) == 0
