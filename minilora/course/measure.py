"""Memory measured at run time: the peak resident memory of a block of code.  (Chapters 05 and 08)

``minilora.memory`` computes what training *should* hold; this module measures what the process
*does* hold. The resident set size (RSS) is the RAM pages a process occupies. A background thread
samples it while the code in a ``with measure_peak_rss() as peak:`` block runs, and ``peak.delta``
is the highest value seen minus the value at the start: weights, gradients, optimizer state,
activations, temporaries and whatever the allocator keeps, all together.
"""
from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

__all__ = ["PeakRSS", "measure_peak_rss"]


def _rss_reader():
    """(a function giving this process's resident memory in bytes now, a function to call when
    done, the method's name); (None, None, "ru_maxrss") where neither /proc nor psutil exists."""
    if os.path.exists("/proc/self/statm"):
        page, fd = os.sysconf("SC_PAGE_SIZE"), os.open("/proc/self/statm", os.O_RDONLY)
        return (lambda: int(os.pread(fd, 256, 0).split()[1]) * page), (lambda: os.close(fd)), "/proc/self/statm"
    try:
        import psutil  # optional, and not a dependency: only where /proc does not exist
    except ImportError:
        return None, None, "ru_maxrss"
    proc = psutil.Process()
    return (lambda: proc.memory_info().rss), (lambda: None), "psutil"


@dataclass
class PeakRSS:
    """Result of ``measure_peak_rss``: resident memory before (``baseline``), the highest seen
    (``peak``), and ``delta = peak - baseline``, in bytes."""

    baseline: int = 0
    peak: int = 0
    samples: int = 0
    method: str = ""
    note: str = ""

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.baseline)

    def __str__(self) -> str:
        return (f"peak RSS +{self.delta / 1e6:,.1f} MB above {self.baseline / 1e6:,.1f} MB "
                f"({self.samples} samples via {self.method}){' - ' + self.note if self.note else ''}")


@contextmanager
def measure_peak_rss(interval: float = 0.002) -> Iterator[PeakRSS]:
    """Measure the peak resident memory (RSS) of the code in a ``with`` block, minus what was
    resident when it began. A background thread samples the RSS every ``interval`` seconds
    (Linux: /proc/self/statm; elsewhere psutil if installed), so spikes shorter than that can be
    missed. RSS counts pages touched, for every thread of the process. Garbage is collected and
    (glibc) freed heap returned to the system on entry, so blocks run one after the other compare
    fairly. Without /proc or psutil it falls back to ``ru_maxrss``, a lifetime maximum: the delta
    is then only the amount by which the block raised it (a lower bound), as ``note`` says."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim
        pass
    read, close, method = _rss_reader()
    res = PeakRSS(method=method)
    if read is None:
        try:
            import resource  # Unix only
        except ImportError:  # Windows without psutil
            res.method, res.note = "none", "cannot read memory use here; pip install psutil"
            yield res
            return
        unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        res.baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
        res.note = "lifetime-maximum RSS only: a lower bound, 0 when the block stayed below an earlier peak"
        try:
            yield res
        finally:
            res.peak, res.samples = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit, 1
        return
    res.baseline = res.peak = read()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            res.peak, res.samples = max(res.peak, read()), res.samples + 1
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield res
    finally:
        stop.set()
        thread.join()
        res.peak, res.samples = max(res.peak, read()), res.samples + 1
        close()
