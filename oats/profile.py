"""Where a run spends its time and memory: wall seconds and peak resident memory per named phase.

Off unless a :class:`Profile` is active, so the driver's ``with phase("statistics"):`` costs a
list lookup. Inside ``with Profile() as prof:`` every phase adds its seconds and calls, and
records the peak RSS reached while it ran (Linux: the process's ``VmHWM``, reset at each phase
start through ``/proc/self/clear_refs``; a phase nested in another counts toward both). A phase run
by a worker thread (the driver's layer workers) adds its seconds and calls only, under a lock:
thread-seconds, so two workers can add up to twice the wall time of their enclosing phase.

    with Profile() as prof:
        compress_model(model, calib, "wanda", 0.5)
    print(prof.table())
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["Profile", "phase", "rss_mib", "mark_worker_thread", "peak_cell"]

_ACTIVE: list["Profile"] = []
_THREAD = threading.local()  # .worker: this thread is one of the driver's layer workers
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def rss_mib() -> tuple[float, float]:
    """(current, peak since the last reset) resident memory of this process in MiB; (nan, nan) off Linux."""
    try:
        fields = dict(line.split(":", 1) for line in _STATUS.read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return float("nan"), float("nan")


def _reset_peak() -> None:
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


class Profile:
    """Seconds, calls and peak RSS (MiB) per phase name, in the order phases first ran."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}
        self._open: list[str] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "Profile":
        _ACTIVE.append(self)
        _reset_peak()
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)

    def _fold(self, names: list[str], peak: float) -> None:
        for name in names:
            row = self.rows[name]
            row["peak_mib"] = max(row["peak_mib"], peak)

    def enter(self, name: str) -> None:
        self._fold(self._open, rss_mib()[1])  # the reset below must not lose the open phases' peak
        self.rows.setdefault(name, {"seconds": 0.0, "calls": 0, "peak_mib": 0.0})
        self._open.append(name)
        _reset_peak()

    def add(self, name: str, seconds: float) -> None:
        """A worker thread's phase: seconds and calls, no peak (the thread's enclosing phase has it)."""
        with self._lock:
            row = self.rows.setdefault(name, {"seconds": 0.0, "calls": 0, "peak_mib": 0.0})
            row["seconds"] += seconds
            row["calls"] += 1

    def exit(self, name: str, seconds: float) -> None:
        self._open.pop()
        row = self.rows[name]
        row["seconds"] += seconds
        row["calls"] += 1
        self._fold([name, *self._open], rss_mib()[1])

    @property
    def peak_mib(self) -> float:
        """The process's peak RSS (MiB) since the profile began. Each phase resets the kernel's
        high-water mark (VmHWM, which also feeds ``ru_maxrss``: read after a profile, that is only the
        peak since the last phase began), so the peak is the largest of the phases' peaks and the
        current mark."""
        return max([r["peak_mib"] for r in self.rows.values()] + [rss_mib()[1]])

    def table(self) -> str:
        lines = [f"{'phase':<14} {'calls':>6} {'seconds':>9} {'peak RSS MiB':>13}"]
        lines += [f"{name:<14} {int(r['calls']):>6} {r['seconds']:>9.2f} {peak_cell(r['peak_mib'], 13)}"
                  for name, r in self.rows.items()]
        return "\n".join(lines)


def peak_cell(peak_mib: float, width: int) -> str:
    """A phase's peak RSS for a table column: '-' for a worker thread's phase (it records none)."""
    return f"{peak_mib:>{width}.0f}" if peak_mib else f"{'-':>{width}}"


def mark_worker_thread() -> None:
    """Called in a worker thread: its phases add thread-seconds (see the module doc)."""
    _THREAD.worker = True


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the body as phase ``name`` of the active profile (nothing when none is active)."""
    if not _ACTIVE:
        yield
        return
    prof = _ACTIVE[-1]
    if getattr(_THREAD, "worker", False):
        start = time.perf_counter()
        try:
            yield
        finally:
            prof.add(name, time.perf_counter() - start)
        return
    prof.enter(name)
    start = time.perf_counter()
    try:
        yield
    finally:
        prof.exit(name, time.perf_counter() - start)
