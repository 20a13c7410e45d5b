r"""An adapter cache and a batch scheduler, simulated honestly.  (Chapter 13)

A server holding thousands of adapters keeps only a few where the GPU computes with them. What
that costs depends on which adapters the requests ask for, and on how requests are put into batches.

* **The trace.** ``zipf_trace`` draws adapter ids i.i.d. from a Zipf law: adapter :math:`k` of
  :math:`N` is asked for with probability :math:`P(k) = (k+1)^{-s} / H_{N,s}`, where
  :math:`H_{N,s} = \sum_{j=1}^{N} j^{-s}`; the most popular adapter's share is :math:`1/H_{N,s}`.
  :math:`s = 0` is uniform; the larger :math:`s`, the more a few adapters dominate. Python's
  ``random.Random(seed)`` draws it: the same trace on any machine.
* **The cache.** ``simulate_cache``: ``slots`` adapters fit; a request for one that is not there is a
  *miss*, i.e. a load, which evicts the least recently used (``"lru"``) or the first loaded (``"fifo"``)
  when the cache is full. ``simulate_two_tier`` models vLLM's two tiers: ``gpu_slots`` GPU slots
  (``max_loras``) inside a host cache of ``cpu_slots`` adapters (``max_cpu_loras``). A GPU miss is a
  host -> slot copy; if the adapter is not in the host cache either, a disk load comes first. The host
  cache contains the GPU slots' adapters (evicting one from the host frees its slot too), both tiers
  follow ``policy``. Requests are taken one at a time, in trace order: batching is the scheduler's part.
* **The scheduler.** ``schedule_batches``: request :math:`i` arrives at :math:`i \cdot` ``arrival_gap_s``
  and needs one row of one decode batch. A batch holds at most ``max_batch`` rows and at most
  ``max_loras`` distinct adapters (vLLM's meaning) and takes ``batch_cost_s + adapter_cost_s * adapters``
  seconds (numbers measured elsewhere: they are parameters here). ``"fcfs"`` takes the queue in arrival
  order and closes the batch at the first request that would break a limit (vLLM's scheduler instead
  skips such a request and looks further down the queue). ``"grouped"`` serves the adapters with the most
  waiting requests, oldest request first, but a request that has waited ``max_wait_batches`` batches is
  served before anything else, as far as the limits allow (the starvation guard). The wait of a request
  is the time from its arrival to the start of its batch. ``simulate_scheduler`` summarises.
* **The real load time.** ``measure_load_seconds`` writes a few real SmolLM2 adapters and times reading
  one file (from the page cache, as a warm server would) and ``minilora.load_adapter`` into the model.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import heapq
import itertools
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import minilora
from minilora.course.models import load_chat_model
from minilora.utils import check_int, check_number

__all__ = ["zipf_trace", "CacheStats", "simulate_cache", "TwoTierStats", "simulate_two_tier", "Batch",
           "schedule_batches", "SchedulerStats", "simulate_scheduler", "LoadTimes", "measure_load_seconds"]

POLICIES = ("lru", "fifo")
SCHEDULERS = ("fcfs", "grouped")


def zipf_trace(n_requests: int, n_adapters: int, s: float = 1.0, seed: int = 0) -> list[int]:
    """``n_requests`` adapter ids in ``0..n_adapters-1``, i.i.d. with ``P(k)`` proportional to ``1/(k+1)**s``."""
    check_int(n_requests, "n_requests")
    check_int(n_adapters, "n_adapters")
    s = check_number(s, "s", low=0, hint="Use s=0 for a uniform trace, s around 1 for a realistic skew.")
    check_int(seed, "seed", minimum=0)
    cum = list(itertools.accumulate((k + 1) ** -s for k in range(n_adapters)))
    rng = random.Random(seed)
    return [min(bisect.bisect_right(cum, rng.random() * cum[-1]), n_adapters - 1) for _ in range(n_requests)]


def _check(trace, choice: str, allowed: tuple[str, ...], name: str) -> list[int]:
    """``trace`` as a list, once it and ``choice`` (one of ``allowed``) are checked."""
    if not isinstance(trace, (list, tuple)) or not trace:
        raise (ValueError if isinstance(trace, (list, tuple)) else TypeError)(
            f"trace must be a non-empty list of adapter ids (ints >= 0), e.g. zipf_trace(10_000, 1000), got {trace!r}.")
    for a in trace:
        check_int(a, "every adapter id in trace", minimum=0)
    if choice not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {choice!r}.")
    return list(trace)


@dataclasses.dataclass(frozen=True)
class CacheStats:
    """One tier: every miss is one load."""
    requests: int
    hits: int
    misses: int
    hit_rate: float
    loads_per_1000: float


class _Cache:
    """``slots`` adapter ids, oldest first: a hit moves the id to the end under LRU, never under FIFO."""

    def __init__(self, slots: int, policy: str):
        self.slots, self.lru, self.held = slots, policy == "lru", collections.OrderedDict()

    def hit(self, a: int) -> bool:
        if a in self.held:
            if self.lru:
                self.held.move_to_end(a)
            return True
        return False

    def insert(self, a: int) -> int | None:
        """Add ``a`` (not held); return the evicted id, if any."""
        evicted = self.held.popitem(last=False)[0] if len(self.held) >= self.slots else None
        self.held[a] = None
        return evicted


def simulate_cache(trace: list[int], slots: int, policy: str = "lru") -> CacheStats:
    """Serve ``trace`` in order from a cache of ``slots`` adapters evicting by ``policy`` ("lru" or "fifo")."""
    trace = _check(trace, policy, POLICIES, "policy")
    check_int(slots, "slots", hint="A cache holds at least one adapter.")
    cache, hits = _Cache(slots, policy), 0
    for a in trace:
        if cache.hit(a):
            hits += 1
        else:
            cache.insert(a)
    n = len(trace)
    return CacheStats(n, hits, n - hits, hits / n, 1000 * (n - hits) / n)


@dataclasses.dataclass(frozen=True)
class TwoTierStats:
    """GPU slots inside a host cache: ``slot_copies = host_hits + disk_loads`` (every GPU miss is a copy)."""
    requests: int
    gpu_hits: int
    host_hits: int
    disk_loads: int
    slot_copies: int
    gpu_hit_rate: float
    disk_loads_per_1000: float
    slot_copies_per_1000: float


def simulate_two_tier(trace: list[int], gpu_slots: int, cpu_slots: int, policy: str = "lru") -> TwoTierStats:
    """vLLM's ``max_loras`` GPU slots inside ``max_cpu_loras`` host slots, both evicting by ``policy``."""
    trace = _check(trace, policy, POLICIES, "policy")
    check_int(gpu_slots, "gpu_slots")
    check_int(cpu_slots, "cpu_slots", minimum=gpu_slots,
              hint="The host cache holds every adapter in a GPU slot (vLLM: max_cpu_loras >= max_loras).")
    gpu, host = _Cache(gpu_slots, policy), _Cache(cpu_slots, policy)
    gpu_hits = host_hits = disk = 0
    for a in trace:
        in_host = host.hit(a)  # refresh the host's order too: the adapter is in use
        if gpu.hit(a):
            gpu_hits += 1
            continue
        if in_host:
            host_hits += 1
        else:
            disk += 1
            gone = host.insert(a)
            if gone is not None:
                gpu.held.pop(gone, None)  # inclusion: an adapter leaves its slot when it leaves the host
        gpu.insert(a)
    n, copies = len(trace), host_hits + disk
    return TwoTierStats(n, gpu_hits, host_hits, disk, copies, gpu_hits / n, 1000 * disk / n, 1000 * copies / n)


@dataclasses.dataclass(frozen=True)
class Batch:
    """One decode batch: when it starts, and the indices into the trace of the requests it serves."""
    start_s: float
    requests: tuple[int, ...]


def schedule_batches(trace: list[int], scheduler: str, max_batch: int, max_loras: int, arrival_gap_s: float,
                     batch_cost_s: float, adapter_cost_s: float, max_wait_batches: int = 8) -> list[Batch]:
    """The batches ``scheduler`` ("fcfs" or "grouped") runs for ``trace``, one request per ``arrival_gap_s``."""
    trace = _check(trace, scheduler, SCHEDULERS, "scheduler")
    check_int(max_batch, "max_batch")
    check_int(max_loras, "max_loras", hint="A batch serves at least one adapter.")
    gap = check_number(arrival_gap_s, "arrival_gap_s", low=0)
    cost = check_number(batch_cost_s, "batch_cost_s", low=0, low_open=True, hint="A batch takes time.")
    per = check_number(adapter_cost_s, "adapter_cost_s", low=0)
    check_int(max_wait_batches, "max_wait_batches", minimum=0)
    n, now, nxt, done, batches = len(trace), 0.0, 0, 0, []
    fifo = collections.deque()  # waiting requests in arrival order (grouped: served ones removed lazily)
    by_adapter: dict[int, collections.deque] = collections.defaultdict(collections.deque)
    arrived_at_batch, served = [0] * n, [False] * n
    while done < n:
        if done == nxt:  # nothing waits: the server idles until the next arrival
            now = max(now, nxt * gap)
        while nxt < n and nxt * gap <= now:
            arrived_at_batch[nxt] = len(batches)
            fifo.append(nxt)
            if scheduler == "grouped":
                by_adapter[trace[nxt]].append(nxt)
            nxt += 1
        rows: list[int] = []
        adapters: dict[int, None] = {}  # in order of entry

        def fits(i: int) -> bool:
            return len(rows) < max_batch and (trace[i] in adapters or len(adapters) < max_loras)

        def take(i: int) -> None:
            rows.append(i)
            adapters[trace[i]] = None
            served[i] = True

        if scheduler == "fcfs":
            while fifo and fits(fifo[0]):
                take(fifo.popleft())
        else:
            while fifo and served[fifo[0]]:
                fifo.popleft()
            for i in fifo:  # the starvation guard: overdue requests first, oldest first
                if len(batches) - arrived_at_batch[i] < max_wait_batches or len(rows) == max_batch:
                    break
                if not served[i] and fits(i):
                    take(i)
            ranked = heapq.nsmallest(max_loras, ((-len(q), q[0], a) for a, q in by_adapter.items() if q
                                                 and a not in adapters))
            for a in [*adapters, *(a for _, _, a in ranked)]:
                q = by_adapter[a]
                while q and served[q[0]]:
                    q.popleft()
                while q and fits(q[0]):
                    take(q.popleft())
            for a in [a for a, q in by_adapter.items() if not q]:
                del by_adapter[a]
        batches.append(Batch(now, tuple(rows)))
        done += len(rows)
        now += cost + per * len(adapters)
    return batches


@dataclasses.dataclass(frozen=True)
class SchedulerStats:
    """Means are over batches (rows, adapters, rows per adapter) or over requests (waits)."""
    requests: int
    batches: int
    mean_rows_per_batch: float
    mean_adapters_per_batch: float
    mean_rows_per_adapter: float
    mean_wait_s: float
    p95_wait_s: float
    max_wait_s: float
    makespan_s: float


def simulate_scheduler(trace: list[int], scheduler: str, max_batch: int, max_loras: int, arrival_gap_s: float,
                       batch_cost_s: float, adapter_cost_s: float, max_wait_batches: int = 8) -> SchedulerStats:
    """``schedule_batches`` summarised; p95 is the nearest-rank 95th percentile of the waits."""
    batches = schedule_batches(trace, scheduler, max_batch, max_loras, arrival_gap_s, batch_cost_s, adapter_cost_s,
                               max_wait_batches)
    waits = sorted(b.start_s - i * arrival_gap_s for b in batches for i in b.requests)
    kinds = [len({trace[i] for i in b.requests}) for b in batches]
    last = batches[-1]
    return SchedulerStats(
        len(waits), len(batches), statistics.fmean(len(b.requests) for b in batches), statistics.fmean(kinds),
        statistics.fmean(len(b.requests) / k for b, k in zip(batches, kinds)), statistics.fmean(waits),
        waits[math.ceil(0.95 * len(waits)) - 1], waits[-1],
        last.start_s + batch_cost_s + adapter_cost_s * kinds[-1])


@dataclasses.dataclass(frozen=True)
class LoadTimes:
    """Medians over ``repeats`` x ``n_adapters`` timings, on this machine's CPU."""
    file_bytes: int
    disk_to_host_s: float  # safetensors.torch.load_file of one adapter_model.safetensors
    load_adapter_s: float  # minilora.load_adapter of that folder into SmolLM2 as a new adapter


def measure_load_seconds(n_adapters: int = 4, repeats: int = 5, r: int = 8, seed: int = 0) -> LoadTimes:
    """Save ``n_adapters`` SmolLM2-135M LoRA adapters (q_proj, v_proj; B random) in a temporary folder and time
    reading each file and loading it into the model; ``AssetsMissing`` if SmolLM2 is not cached."""
    for value, name in ((n_adapters, "n_adapters"), (repeats, "repeats"), (r, "r")):
        check_int(value, name)
    model, _ = load_chat_model()
    config = minilora.LoRAConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"])
    gen = torch.Generator().manual_seed(seed)
    disk, load = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folders = [Path(tmp) / f"adapter{i}" for i in range(n_adapters)]
        for i, folder in enumerate(folders):
            minilora.add_adapter(model, f"adapter{i}", config)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if f"lora_B.adapter{i}." in name:
                        p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
            minilora.save_adapter(model, folder, f"adapter{i}")
        for _ in range(repeats):
            for folder in folders:
                t = time.perf_counter()
                load_file(folder / "adapter_model.safetensors")
                disk.append(time.perf_counter() - t)
                t = time.perf_counter()
                minilora.load_adapter(model, folder, "incoming")
                load.append(time.perf_counter() - t)
                minilora.delete_adapter(model, "incoming")
        size = (folders[0] / "adapter_model.safetensors").stat().st_size
    return LoadTimes(size, statistics.median(disk), statistics.median(load))
