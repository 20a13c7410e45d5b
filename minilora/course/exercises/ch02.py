r"""Exercises of chapter 02 (A LoRA layer from scratch).

* 2.1 ``merge_weights(W0, A, B, alpha, r) -> W``: the merged weight
  :math:`W = W_0 + \frac{\alpha}{r} B A`, as a new tensor (``W0`` itself unchanged).
* 2.2 ``lora_forward(x, W0, b, A, B, scaling) -> h``: the output of a LoRA linear layer,
  :math:`h = x W_0^T + b + s\,(x A^T) B^T`, for inputs with any number of leading dimensions.
* 2.3 ``rslora_scaling(alpha, r) -> float``: rank-stabilised LoRA's scaling :math:`\alpha / \sqrt{r}`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ._core import Hint, checker

__all__ = ["check_merge_weights", "check_lora_forward", "check_rslora_scaling"]


def _factors(d_out: int = 6, d_in: int = 5, r: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(d_out, d_in, generator=g)
    A = torch.randn(r, d_in, generator=g)
    B = torch.randn(d_out, r, generator=g)
    b = torch.randn(d_out, generator=g)
    return W0, A, B, b


def _close(a, b, tol: float = 1e-5) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and bool(torch.allclose(a, b, atol=tol, rtol=tol))


@checker("Exercise 2.1: merge by hand")
def check_merge_weights(merge_weights: Callable) -> None:
    """``merge_weights(W0, A, B, alpha, r)`` must return ``W0 + alpha / r * B @ A``."""
    for (d_out, d_in, r, alpha) in [(6, 5, 2, 4.0), (3, 7, 1, 1.0), (4, 4, 3, 6.0)]:
        W0, A, B, _ = _factors(d_out, d_in, r)
        W0_copy = W0.clone()
        W = merge_weights(W0, A.clone(), B.clone(), alpha, r)
        if not isinstance(W, torch.Tensor):
            raise Hint(f"return a tensor (the merged weight), got {type(W).__name__}.")
        if not torch.equal(W0, W0_copy):
            raise Hint("you changed W0 in place (e.g. W0 += ...). Return a new tensor: W0 + ..., so that "
                       "the frozen base weight stays available for unmerging.")
        if W.shape != W0.shape:
            raise Hint(f"the merged weight must have W0's shape {tuple(W0.shape)}, got {tuple(W.shape)}. "
                       "B has shape (out, r) and A has shape (r, in), so B @ A is (out, in).")
        want = W0 + alpha / r * B @ A
        if _close(W, want):
            continue
        if _close(W, W0 + B @ A):
            raise Hint("you forgot the scaling: the update is (alpha / r) * B @ A, not B @ A.")
        if _close(W, W0 + r / alpha * B @ A):
            raise Hint("the scaling is upside down: it is alpha / r, not r / alpha.")
        if _close(W, W0 + alpha / math.sqrt(r) * B @ A):
            raise Hint("alpha / sqrt(r) is rsLoRA's scaling; plain LoRA uses alpha / r.")
        if _close(W, alpha / r * B @ A):
            raise Hint("you returned only the update; add it to W0: W0 + alpha / r * B @ A.")
        raise Hint(f"for alpha={alpha}, r={r} the merged weight is wrong; compute W0 + (alpha / r) * (B @ A).")


@checker("Exercise 2.2: the LoRA forward pass")
def check_lora_forward(lora_forward: Callable) -> None:
    """``lora_forward(x, W0, b, A, B, scaling)`` must equal ``x @ W0.T + b + scaling * x @ A.T @ B.T``."""
    W0, A, B, b = _factors(6, 5, 2, seed=1)
    g = torch.Generator().manual_seed(2)
    for shape in [(5,), (4, 5), (2, 3, 5)]:
        x = torch.randn(*shape, generator=g)
        s = 1.5
        try:
            h = lora_forward(x, W0, b, A, B, s)
        except RuntimeError as e:
            if len(shape) == 1:
                raise
            raise Hint(f"your function fails for x of shape {tuple(shape)} (a batch): {e}. Write it with the "
                       "input on the left, x @ W0.T + ..., so that leading dimensions are kept.") from e
        want = x @ W0.T + b + s * (x @ A.T) @ B.T
        if not isinstance(h, torch.Tensor):
            raise Hint(f"return a tensor, got {type(h).__name__}.")
        if h.shape != want.shape:
            raise Hint(f"for x of shape {tuple(shape)} the output must have shape {tuple(want.shape)}, got "
                       f"{tuple(h.shape)}. Multiply on the right by the transposes: x @ W0.T, x @ A.T, ... "
                       "so that any leading (batch) dimensions are kept.")
        if _close(h, want):
            continue
        if _close(h, x @ W0.T + b):
            raise Hint("your output is the base layer's alone: add the LoRA path scaling * (x @ A.T) @ B.T.")
        if _close(h, x @ W0.T + s * (x @ A.T) @ B.T):
            raise Hint("you forgot the bias b of the base layer.")
        if _close(h, x @ W0.T + b + (x @ A.T) @ B.T):
            raise Hint("you forgot to multiply the LoRA path by scaling.")
        raise Hint("compute h = x @ W0.T + b + scaling * (x @ A.T) @ B.T (A first: it maps in -> r).")


@checker("Exercise 2.3: rsLoRA scaling")
def check_rslora_scaling(rslora_scaling: Callable) -> None:
    """``rslora_scaling(alpha, r)`` must return ``alpha / sqrt(r)``."""
    for alpha, r in [(16, 4), (8, 16), (1, 1), (32, 64), (3.0, 2)]:
        got = rslora_scaling(alpha, r)
        if isinstance(got, torch.Tensor):
            got = got.item()
        if not isinstance(got, (int, float)):
            raise Hint(f"return a number (a Python float), got {type(got).__name__}.")
        want = alpha / math.sqrt(r)
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        if r != 1 and math.isclose(got, alpha / r, rel_tol=1e-6):
            raise Hint("alpha / r is plain LoRA's scaling; rsLoRA divides by the square root of r.")
        if r != 1 and math.isclose(got, math.sqrt(alpha / r), rel_tol=1e-6):
            raise Hint("only r goes under the square root: alpha / sqrt(r), not sqrt(alpha / r).")
        if r != 1 and math.isclose(got, alpha * math.sqrt(r), rel_tol=1e-6):
            raise Hint("divide by sqrt(r), do not multiply: alpha / sqrt(r).")
        raise Hint(f"for alpha={alpha}, r={r} expected {want:.4f}, got {got}. Use alpha / math.sqrt(r).")
