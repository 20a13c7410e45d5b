"""Small shared helpers: seeding, and the argument checks every module needs.  (Chapters 00 and 03)

``seed_everything(seed)`` seeds Python, NumPy and torch, so that rerunning a notebook on the same
machine gives the same numbers (another CPU may still round differently: chapter 00 explains).

The checks raise the course's error vocabulary: ``TypeError`` for a value of the wrong type (a
bool is not an int, although Python says ``True == 1``), ``ValueError`` for a value out of range;
each message names the argument and says what to pass instead.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int = 0) -> None:
    """Seed ``random``, NumPy and torch (CPU and, if present, CUDA) with ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int in [0, 2**32), got {seed!r} ({type(seed).__name__}); "
                        "e.g. seed_everything(0).")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}; e.g. seed_everything(0).")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def check_int(value, name: str, minimum: int = 1, optional: bool = False, hint: str = "") -> int | None:
    """``value`` if it is an int (not a bool) >= ``minimum`` (or None when ``optional``), else raise:
    ``TypeError`` for another type, ``ValueError`` below ``minimum``."""
    if value is None and optional:
        return None
    what = f"an integer >= {minimum}" + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__}).{' ' + hint if hint else ''}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}.{' ' + hint if hint else ''}")
    return value


def check_number(value, name: str, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False, optional: bool = False, hint: str = "") -> float | None:
    """``value`` as a float if it is a real number (not a bool) within the given bounds, else raise
    ``TypeError`` (not a number) or ``ValueError`` (out of range, or NaN)."""
    if value is None and optional:
        return None
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    what = f"a number in {lo}, {hi}" if lo and hi else f"a number {'>' if low_open else '>='} {low:g}" if lo else \
        f"a number {'<' if high_open else '<='} {high:g}" if hi else "a number"
    extra = f" {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__}).{extra}")
    v = float(value)
    if v != v or (low is not None and (v <= low if low_open else v < low)) or \
            (high is not None and (v >= high if high_open else v > high)):
        raise ValueError(f"{name} must be {what}, got {value!r}.{extra}")
    return v


def check_bool(value, name: str) -> bool:
    """``value`` if it is True or False, else a ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")
    return value
