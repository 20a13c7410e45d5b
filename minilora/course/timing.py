"""Side-by-side timings and the bytes an operation allocates.  (Chapter 13)

A CPU's speed drifts while it runs (other programs, frequency scaling, a warm or cold cache), so two
timings taken a minute apart do not compare. ``interleaved`` runs every candidate once per round, in a
rotated order, for several rounds, and reports per-round ratios to a reference: a drift hits all the
candidates of a round alike and cancels in the ratio. The medians over rounds are what the chapter shows.

``allocated_bytes`` counts the bytes of every new tensor the operations inside a call create (views and
in-place results excluded), by watching torch's dispatcher: the temporaries a kernel materialises, such
as BGMV's per-token copies of the adapters' factors. It is a total over the call, not a peak.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["Timing", "interleaved", "allocated_bytes"]


@dataclass
class Timing:
    """One candidate's seconds per call over the rounds, and its per-round ratio to the reference."""
    name: str
    seconds: list[float]
    ratios: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def ratio(self) -> float:
        """Median over rounds of (this candidate's time / the reference's time in the same round)."""
        return statistics.median(self.ratios)

    @property
    def ratio_iqr(self) -> tuple[float, float]:
        if len(self.ratios) < 2:
            return self.ratio, self.ratio
        q1, _, q3 = statistics.quantiles(self.ratios, n=4, method="inclusive")
        return q1, q3


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, reference: str | None = None,
                warmup: int = 1, calls: int = 1) -> dict[str, Timing]:
    """Time every function of ``fns`` once per round (``calls`` calls, averaged), the order rotated by one
    each round, after ``warmup`` untimed rounds. Ratios are to ``reference`` (default: the first)."""
    if not fns or rounds < 1 or calls < 1:
        raise ValueError("give at least one function, rounds >= 1 and calls >= 1.")
    names = list(fns)
    reference = names[0] if reference is None else reference
    if reference not in fns:
        raise ValueError(f"reference {reference!r} is not one of {names}.")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for k in range(rounds):
        for n in names[k % len(names):] + names[:k % len(names)]:
            t0 = time.perf_counter()
            for _ in range(calls):
                fns[n]()
            seconds[n].append((time.perf_counter() - t0) / calls)
    ref = seconds[reference]
    return {n: Timing(n, s, [a / b for a, b in zip(s, ref)]) for n, s in seconds.items()}


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            if not t._is_view() and t.untyped_storage().data_ptr() not in inputs:
                self.bytes += t.untyped_storage().nbytes()
        return out


def _tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [t for x in tree for t in _tensors(x)]
    if isinstance(tree, dict):
        return [t for x in tree.values() for t in _tensors(x)]
    return []


def allocated_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the new tensors that the operations run by ``fn()`` create (a total, not a peak)."""
    counter = _Counter()
    with counter:
        fn()
    return counter.bytes
