r"""Exercises of chapter 00 (Welcome): counting the parameters LoRA saves.

* 0.0 (demo) ``add(a, b)``: shows the three answers a checker gives.
* 0.1 ``linear_param_count(d_in, d_out, bias=True)``: the parameters of ``nn.Linear(d_in, d_out)``,
  a weight of shape (d_out, d_in) plus, with ``bias=True``, one bias per output.
* 0.2 ``lora_fraction(d, k, r)``: the fraction :math:`\frac{r(d+k)}{dk}` of a d x k weight
  matrix that a rank-r LoRA update trains (B is d x r, A is r x k).
"""
from __future__ import annotations

import math
from typing import Callable

from torch import nn

from ._core import Hint, checker

__all__ = ["check_demo_add", "check_linear_params", "check_lora_fraction"]


def _is_number(x: object) -> bool:
    try:
        float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _close(x: object, y: float, rel: float = 1e-9) -> bool:
    try:
        return math.isclose(float(x), y, rel_tol=rel, abs_tol=1e-12)
    except (TypeError, ValueError):
        return False


@checker("Exercise 0.0 (demo): add two numbers")
def check_demo_add(add: Callable[[float, float], float]) -> None:
    """``add(a, b)`` must return ``a + b``."""
    for a, b in [(2, 3), (-1.5, 4.0), (0, 0)]:
        got = add(a, b)
        if _close(got, a * b) and not _close(got, a + b):
            raise Hint(f"add({a}, {b}) returned {got}, which is a * b. Use + instead of *.")
        if not _close(got, a + b):
            raise Hint(f"add({a}, {b}) returned {got!r}; expected {a + b}.")


def _linear_count(d_in: int, d_out: int, bias: bool) -> int:
    return sum(p.numel() for p in nn.Linear(d_in, d_out, bias=bias, device="meta").parameters())


@checker("Exercise 0.1: parameters of nn.Linear")
def check_linear_params(linear_param_count: Callable[..., int]) -> None:
    """``linear_param_count(d_in, d_out, bias=True)`` must count what ``nn.Linear`` holds."""
    for d_in, d_out in [(3, 5), (64, 10), (768, 3072)]:
        want = _linear_count(d_in, d_out, True)
        got = linear_param_count(d_in, d_out)
        if isinstance(got, bool) or not _is_number(got):
            raise Hint(f"return a whole number (an int), got {type(got).__name__} {got!r}.")
        if _close(got, want):
            continue
        if _close(got, d_in * d_out):
            raise Hint(f"for ({d_in}, {d_out}) you returned {got}: that is the weight matrix only. "
                       "nn.Linear also has a bias vector (bias=True is the default).")
        if _close(got, d_in * d_out + d_in):
            raise Hint(f"for ({d_in}, {d_out}) you returned {got}: the bias has one entry per *output* "
                       "feature (d_out), not per input feature.")
        raise Hint(f"linear_param_count({d_in}, {d_out}) returned {got!r}, expected {want}. The weight has "
                   "shape (d_out, d_in) and the bias shape (d_out,); compare with "
                   f"sum(p.numel() for p in nn.Linear({d_in}, {d_out}).parameters()).")
    for d_in, d_out in [(3, 5), (768, 3072)]:
        want = _linear_count(d_in, d_out, False)
        got = linear_param_count(d_in, d_out, bias=False)
        if not _close(got, want):
            raise Hint(f"linear_param_count({d_in}, {d_out}, bias=False) returned {got!r}, expected {want}: "
                       "honour the `bias` argument; without a bias only the weight is left.")


@checker("Exercise 0.2: the fraction of parameters LoRA trains")
def check_lora_fraction(lora_fraction: Callable[[int, int, int], float]) -> None:
    """``lora_fraction(d, k, r)`` must return ``r * (d + k) / (d * k)``."""
    for d, k, r in [(6, 4, 2), (4096, 4096, 8), (384, 1536, 4)]:
        want = r * (d + k) / (d * k)
        got = lora_fraction(d, k, r)
        if _close(got, want):
            continue
        where = f"lora_fraction({d}, {k}, {r}) returned {got!r}"
        if _close(got, r * (d + k)):
            raise Hint(f"{where}: that is LoRA's parameter count r(d+k). Divide it by d*k, the count "
                       "of the full matrix, to get a fraction.")
        if _close(got, d * k / (r * (d + k))):
            raise Hint(f"{where}: that is upside down. LoRA's count r(d+k) goes on top, d*k below.")
        if _close(got, (d + k) / (d * k)):
            raise Hint(f"{where}: you forgot the rank. B has r columns and A has r rows: r(d+k) numbers.")
        if _close(got, r * (d + k) // (d * k)):
            raise Hint(f"{where}: use / (true division), not // (integer division): the fraction is below 1.")
        if _close(got, r * d * k / (d * k)) or _close(got, r * (d * k) / (d + k)):
            raise Hint(f"{where}. B is d x r and A is r x k, so LoRA trains r*d + r*k = r(d+k) numbers; "
                       "return r(d+k) / (d*k).")
        raise Hint(f"{where}, expected {want:.6g}. LoRA trains B (d x r) and A (r x k): r(d+k) numbers "
                   "against d*k for the full matrix; return their ratio.")
