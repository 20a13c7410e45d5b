"""Checkers for chapter 13: serving many adapters.

* 13.1 ``bgmv_row(x, A_stack, B_stack, i)``: one row of BGMV by hand, the update ``B_stack[i] @ (A_stack[i] @ x)``
  of a vector ``x`` (in,) with stacks A (N, r, in) and B (N, out, r) whose scaling is already folded into B.
* 13.2 ``slots_for_hit_rate(trace, target)``: the fewest LRU slots whose hit rate on ``trace`` reaches
  ``target``.
* 13.3 ``adapters_bytes(n_adapters, r, shapes, bytes_per_value)``: the bytes of ``n_adapters`` LoRA adapters of
  rank ``r`` on layers of the given ``(d_in, d_out)`` shapes.
"""
from __future__ import annotations

import torch

from ..serving_sim import simulate_cache, zipf_trace
from ._core import Hint, checker

__all__ = ["check_bgmv_row", "check_slots_for_hit_rate", "check_adapters_bytes"]


@checker("Exercise 13.1: one row of BGMV")
def check_bgmv_row(fn) -> None:
    """``fn(x, A_stack, B_stack, i)`` must return ``B_stack[i] @ (A_stack[i] @ x)`` for several stacks and rows."""
    g = torch.Generator().manual_seed(13)
    for n, r, d_in, d_out in ((3, 4, 6, 5), (5, 2, 8, 8), (2, 8, 16, 3)):
        A, B = torch.randn(n, r, d_in, generator=g), torch.randn(n, d_out, r, generator=g)  # (N, r, in), (N, out, r)
        x = torch.randn(d_in, generator=g)
        for i in range(n):
            got = fn(x, A, B, i)
            want = B[i] @ (A[i] @ x)
            if not isinstance(got, torch.Tensor):
                raise Hint(f"return a tensor, got {type(got).__name__}.")
            if got.shape != want.shape:
                if got.shape == (r,):
                    raise Hint(f"your result has shape {tuple(got.shape)}, the rank: that is the shrink A[i] @ x. "
                               "Expand it with B[i] too.")
                raise Hint(f"one row's update has shape (out,) = {tuple(want.shape)}; yours is {tuple(got.shape)}.")
            if i > 0 and torch.allclose(got, B[0] @ (A[0] @ x), atol=1e-5):
                raise Hint("row i uses adapter i: index the stacks with i (A_stack[i], B_stack[i]), not with 0.")
            if not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
                raise Hint("shrink first, v = A_stack[i] @ x (r,), then expand, B_stack[i] @ v (out,). The scaling is "
                           "already inside B_stack: do not multiply by it again.")


def _lru_slots(trace: list[int], target: float) -> int:
    for slots in range(1, len(set(trace)) + 1):
        if simulate_cache(trace, slots, "lru").hit_rate >= target:
            return slots
    return len(set(trace))


@checker("Exercise 13.2: slots for a target hit rate")
def check_slots_for_hit_rate(fn) -> None:
    """``fn(trace, target)`` must return the fewest LRU slots whose hit rate on ``trace`` is >= ``target``."""
    cases = [([0, 1, 0, 1, 0, 1], 0.5), ([0, 1, 2, 0, 1, 2, 0, 1, 2], 0.5), (zipf_trace(2000, 50, 1.1, 7), 0.6),
             (zipf_trace(2000, 200, 0.9, 3), 0.3)]
    for trace, target in cases:
        got, want = fn(trace, target), _lru_slots(trace, target)
        if isinstance(got, bool) or not isinstance(got, int):
            raise Hint(f"return a whole number of slots, got {got!r}.")
        if got == want:
            continue
        where = f"on a trace of {len(trace)} requests with target {target}"
        if got > want and simulate_cache(trace, got - 1, "lru").hit_rate >= target:
            raise Hint(f"{where} you returned {got}, but {got - 1} slots already reach the target: return the fewest.")
        if got < want:
            rate = simulate_cache(trace, max(got, 1), "lru").hit_rate
            raise Hint(f"{where} {got} slots give a hit rate of {rate:.3f}, below the target. Count hits with "
                       "minilora.course.serving_sim.simulate_cache(trace, slots, 'lru').hit_rate and try more slots.")
        raise Hint(f"{where} the answer is {want} slots; you returned {got}.")


@checker("Exercise 13.3: the bytes of N adapters")
def check_adapters_bytes(fn) -> None:
    """``fn(n_adapters, r, shapes, bytes_per_value)`` = ``n_adapters * r * sum(d_in + d_out) * bytes_per_value``."""
    smol = [(576, 576), (576, 192)] * 30  # SmolLM2-135M: q_proj and v_proj in 30 layers
    llama7b = [(4096, 4096)] * 64  # Llama-2-7B: q_proj and v_proj in 32 layers
    for n, r, shapes, size in ((1, 8, smol, 4), (1000, 8, smol, 2), (10, 16, llama7b, 2), (3, 1, [(5, 7)], 4)):
        got = fn(n, r, shapes, size)
        want = n * r * sum(a + b for a, b in shapes) * size
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise Hint(f"return a number of bytes, got {type(got).__name__}.")
        if got == want:
            continue
        case = f"for {n} adapters of rank {r} on {len(shapes)} layers, {size} bytes per value"
        if got == want // size:
            raise Hint(f"{case} you returned {got:,}: that is the number of values. Multiply by bytes_per_value.")
        if got == n * sum(a * b for a, b in shapes) * size:
            raise Hint(f"{case} you counted whole d_in x d_out matrices: that is a full fine-tune's copy. An adapter "
                       "holds A (r x d_in) and B (d_out x r).")
        if got == want // n:
            raise Hint(f"{case} that is one adapter: multiply by n_adapters.")
        raise Hint(f"{case} the answer is {want:,} bytes; you returned {got:,}.")
