"""A learning rate chosen on validation, inside the rates tried: start with a few, extend while the best is at an end.

A rate chosen at the edge of its grid may not be the best one (the best could lie beyond). ``choose_rate``
tries ``start``, then, while the best so far is the lowest or the highest rate tried, the next rate of
``ladder`` beyond it, at most ``extensions`` times; the best is the highest ``score(lr)`` (a tuple compares
element by element: put tie-breakers after the main score).
"""
from __future__ import annotations

from typing import Callable, Sequence


def choose_rate(score: Callable[[float], tuple], start: Sequence[float], ladder: Sequence[float],
                extensions: int = 2) -> tuple[float, dict[float, tuple]]:
    """(the chosen rate, every rate tried with its score). ``start`` must be rates of ``ladder``."""
    if not start or any(lr not in ladder for lr in start):
        raise ValueError(f"start {list(start)} must be non-empty and every rate on the ladder {list(ladder)}.")
    tried: dict[float, tuple] = {}
    todo = list(start)
    for _ in range(extensions + 1):
        for lr in todo:
            tried[lr] = score(lr)
        best = max(tried, key=lambda lr: (*tried[lr], -lr))  # ties: the smaller rate
        i, grid = list(ladder).index(best), sorted(tried)
        if best == grid[0] and i > 0:
            todo = [ladder[i - 1]]
        elif best == grid[-1] and i < len(ladder) - 1:
            todo = [ladder[i + 1]]
        else:
            break
    return best, tried
