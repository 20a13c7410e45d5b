r"""Exercises of chapter 01 (Why low rank?).

* 1.1 ``low_rank_factors(W, r) -> (B, A)``: LoRA-shaped factors, B (out x r) and A (r x in), whose
  product is the best rank-r approximation of W (Eckart--Young: the truncated SVD
  :math:`U_r \Sigma_r V_r^T`).
* 1.2 ``entropy_effective_rank(W) -> float``: Roy & Vetterli's effective rank
  :math:`\exp(H(p))` with :math:`p_i = \sigma_i / \sum_j \sigma_j` and
  :math:`H(p) = -\sum_i p_i \ln p_i` (with :math:`0 \ln 0 = 0`).
* 1.3 ``break_even_rank(d, k) -> int``: the largest rank r at which LoRA still trains fewer
  numbers than the full d x k matrix, i.e. the largest r with :math:`r(d+k) < dk`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ._core import Hint, checker

__all__ = ["check_low_rank_factors", "check_entropy_effective_rank", "check_break_even_rank"]


def _matrices() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(12, 8, generator=g, dtype=torch.float64),
            torch.randn(5, 9, generator=g, dtype=torch.float64)]


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-6) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=tol, atol=tol))


@checker("Exercise 1.1: LoRA-shaped factors of the best rank-r approximation")
def check_low_rank_factors(low_rank_factors: Callable[[torch.Tensor, int], tuple]) -> None:
    """``low_rank_factors(W, r)`` must return ``(B, A)`` with ``B @ A`` the truncated SVD of W."""
    for W, r in [(_matrices()[0], 3), (_matrices()[1], 1), (_matrices()[0], 8)]:
        out, (d, k) = low_rank_factors(W.clone(), r), W.shape
        if isinstance(out, torch.Tensor):
            raise Hint("you returned one matrix. LoRA stores the update as two factors: return the pair "
                       "(B, A) with B of shape (out, r) and A of shape (r, in), so that B @ A approximates W.")
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise Hint(f"return the pair (B, A), got {type(out).__name__}.")
        B, A = (torch.as_tensor(t).to(torch.float64) for t in out)
        if B.shape == (r, k) and A.shape == (d, r) and (r, k) != (d, r):
            raise Hint("you returned (A, B); return (B, A), in the order of the product B @ A.")
        if B.shape != (d, r) or A.shape != (r, k):
            raise Hint(f"for W of shape {tuple(W.shape)} and r={r}, B must have shape {(d, r)} (like lora_B: "
                       f"out x r) and A shape {(r, k)} (like lora_A: r x in); got B {tuple(B.shape)}, "
                       f"A {tuple(A.shape)}. Slice U[:, :r] and Vh[:r] (the first r rows of Vh).")
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        best = S[r:].square().sum().sqrt().item()
        err = torch.linalg.matrix_norm(W - B @ A).item()
        if err <= best + 1e-6 * S.norm().item():
            continue
        BA = B @ A
        if _close(BA, U[:, :r] @ Vh[:r]):
            raise Hint("B @ A = U_r V_r^T: you dropped the singular values. Put them into one factor, "
                       "e.g. B = U[:, :r] * S[:r] (or split sqrt(S) between B and A).")
        if _close(BA, U[:, -r:] @ torch.diag(S[-r:]) @ Vh[-r:]):
            raise Hint("you kept the r *smallest* singular values. torch.linalg.svd sorts them largest "
                       "first, so take the first r: U[:, :r], S[:r], Vh[:r].")
        if Vh.shape[0] == Vh.shape[1] and _close(BA, U[:, :r] @ torch.diag(S[:r]) @ Vh.T[:r]):
            raise Hint("torch.linalg.svd already returns Vh = V^T: A is Vh[:r] (its first r rows); "
                       "do not transpose it again.")
        raise Hint(f"for r={r}, ||W - B @ A||_F = {err:.4f}, but the best rank-{r} approximation "
                   f"(Eckart-Young) reaches {best:.4f}. Use U, S, Vh = torch.linalg.svd(W, "
                   "full_matrices=False) and B = U[:, :r] * S[:r], A = Vh[:r].")


def _entropy_rank(W: torch.Tensor, square: bool = False, log=torch.log) -> float:
    s = torch.linalg.svdvals(W.to(torch.float64))
    s = s[s > 0] ** (2 if square else 1)
    p = s / s.sum()
    return math.exp(-(p * log(p)).sum().item())


def _effective_rank_cases() -> list[tuple[str, torch.Tensor]]:
    W0, W1 = _matrices()
    u, v = torch.arange(1.0, 7.0, dtype=torch.float64), torch.linspace(-1, 1, 4, dtype=torch.float64)
    two = torch.zeros(6, 4, dtype=torch.float64)  # singular values 3, 1, 0, 0 (exact zeros)
    two[0, 0], two[1, 1] = 3.0, 1.0
    return [("torch.eye(5)", torch.eye(5, dtype=torch.float64)), ("a rank-1 outer product", torch.outer(u, v)),
            ("diag(3, 1) padded with zeros to 6x4", two), ("a random 12x8 matrix", W0)]


@checker("Exercise 1.2: the entropy effective rank (Roy & Vetterli)")
def check_entropy_effective_rank(entropy_effective_rank: Callable[[torch.Tensor], float]) -> None:
    """``entropy_effective_rank(W)`` must return ``exp(-sum p_i ln p_i)``, ``p_i = s_i / sum(s)``."""
    for name, W in _effective_rank_cases():
        want = _entropy_rank(W)
        got = entropy_effective_rank(W.clone())
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise Hint(f"return a number (a float), got {type(got).__name__}.") from None
        if math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-7):
            continue
        where = f"for {name} you returned {got:.4f}, expected {want:.4f}"
        if math.isnan(got):
            raise Hint(f"for {name} you returned nan: a zero singular value gives p = 0 and 0 * log(0) = nan "
                       "in floating point. Keep only the positive ones (s = s[s > 0]): by convention 0 ln 0 = 0.")
        if math.isclose(got, math.log(want), rel_tol=1e-5, abs_tol=1e-7):
            raise Hint(f"{where}: that is the entropy H itself. The effective rank is exp(H).")
        if math.isclose(got, _entropy_rank(W, square=True), rel_tol=1e-5):
            raise Hint(f"{where}: you normalised the squared singular values (energies). Roy & Vetterli use "
                       "the singular values themselves: p_i = s_i / sum(s).")
        H = math.log(want)
        if any(math.isclose(got, math.exp(x), rel_tol=1e-5) for x in (H / math.log(2), H * math.log(2))):
            raise Hint(f"{where}: you mixed logarithm bases. Use exp with the natural log (or 2**H with log2).")
        if got == int(torch.linalg.matrix_rank(W)):
            raise Hint(f"{where}: that is the ordinary rank. The effective rank weighs each direction by its "
                       "share p_i = s_i / sum(s) and is usually not a whole number.")
        raise Hint(f"{where}. Compute s = torch.linalg.svdvals(W), p = s / s.sum() (dropping zeros), "
                   "H = -(p * p.log()).sum(), and return exp(H).")


@checker("Exercise 1.3: the break-even rank")
def check_break_even_rank(break_even_rank: Callable[[int, int], int]) -> None:
    """``break_even_rank(d, k)`` must return the largest r with ``r * (d + k) < d * k``."""
    for d, k in [(10, 7), (4096, 4096), (768, 3072), (6, 3)]:
        want = (d * k - 1) // (d + k)
        got = break_even_rank(d, k)
        if isinstance(got, bool) or not isinstance(got, int) and not (isinstance(got, float) and got.is_integer()):
            raise Hint(f"break_even_rank({d}, {k}) returned {got!r}: return a whole number (an int). "
                       "Ranks are integers; use // or math.floor.")
        got = int(got)
        if got == want:
            continue
        if got * (d + k) == d * k:
            raise Hint(f"for ({d}, {k}), at r = {got} LoRA trains r(d+k) = {got * (d + k)} numbers, exactly as "
                       f"many as the full matrix (d*k = {d * k}), not fewer. You need r(d+k) < dk strictly.")
        if got > want:
            raise Hint(f"for ({d}, {k}), at r = {got} LoRA trains r(d+k) = {got * (d + k)} numbers, more than "
                       f"the full matrix's d*k = {d * k}. Round d*k/(d+k) down, and stay strictly below it.")
        raise Hint(f"for ({d}, {k}) you returned {got}, but r = {got + 1} still trains fewer numbers: "
                   f"{got + 1}*(d+k) = {(got + 1) * (d + k)} < d*k = {d * k}. Find the largest such r.")
