"""Checkers for chapter 11: model merging.

* 11.1 ``majority_sign_mask(trimmed, method)``: TIES' sign election, as a mask of the agreeing entries.
* 11.2 ``dare(tensor, density, generator)``: DARE's random drop and rescale.
* 11.3 ``ties_by_hand()``: predict TIES' merge of the three 3x3 task tensors ``TIES_EXAMPLE``.
"""
from __future__ import annotations

import torch

from ...merging import calculate_majority_sign_mask, magnitude_prune, prune, ties
from ._core import Hint, checker

__all__ = ["TIES_EXAMPLE", "TIES_DENSITY", "check_majority_sign_mask", "check_dare", "check_ties_by_hand"]

#: Three task tensors for exercise 11.3; merged with TIES at ``TIES_DENSITY``, weights 1, "total".
TIES_EXAMPLE = [torch.tensor(t, dtype=torch.float32) for t in (
    [[-1, -8, -2], [7, 6, -4], [3, -5, -9]],
    [[4, -9, 5], [3, -2, -7], [-1, 6, -8]],
    [[-1, -4, -5], [-8, 7, 6], [-2, -9, 3]],
)]
TIES_DENSITY = 0.5  # int(0.5 * 9) = 4 entries kept per task


def _tensor(x, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise Hint(f"{what} should be a torch.Tensor, got {type(x).__name__}.")
    return x.detach()


def _sign_case(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(3, 4, 5, generator=g)
    t[torch.rand(3, 4, 5, generator=g) < 0.4] = 0.0  # trimmed entries are zero
    t[:, 0, 0] = torch.tensor([2.0, -1.0, -1.0])     # total 0: a tie, elected +
    t[:, 0, 1] = torch.tensor([5.0, -1.0, -1.0])     # total +3, but two votes against one
    t[:, 0, 2] = torch.tensor([0.0, 0.0, 0.0])       # nobody votes: a tie, elected +; nobody agrees
    return t


@checker("Exercise 11.1: TIES' sign election")
def check_majority_sign_mask(fn) -> None:
    """``fn(trimmed, method)`` must return PEFT's ``calculate_majority_sign_mask``: a bool tensor
    shaped like ``trimmed`` (tasks first), True where an entry's sign is the elected one."""
    for seed in (0, 1):
        t = _sign_case(seed)
        for method in ("total", "frequency"):
            got = _tensor(fn(t.clone(), method), "the mask")
            want = calculate_majority_sign_mask(t, method)
            if got.shape != want.shape:
                if got.shape == want.shape[1:]:
                    raise Hint("return the mask for every task, shape (tasks, ...) like `trimmed`: True where "
                               "that task's entry has the elected sign. You returned one entry per position.")
                raise Hint(f"the mask should have the shape of `trimmed`, {tuple(want.shape)}; got {tuple(got.shape)}.")
            if got.dtype != torch.bool:
                raise Hint("return a bool mask (e.g. `sign == elected`), not numbers.")
            if torch.equal(got, want):
                continue
            other = calculate_majority_sign_mask(t, "frequency" if method == "total" else "total")
            if torch.equal(got, other):
                raise Hint(f"for method={method!r} you elected with the other rule: 'total' is the sign of the "
                           "sum of the values, 'frequency' the sign of the sum of their signs (a vote per task).")
            if got[:, 0, 0].tolist() == [False, True, True] or got[:, 0, 2].any():
                raise Hint("a tie (the vote sums to exactly 0) elects + in PEFT: `torch.where(votes >= 0, 1, -1)`. "
                           "torch.sign(0) is 0, which no entry can agree with. Zero entries never agree.")
            raise Hint(f"for method={method!r} the mask differs from the elected signs at "
                       f"{int((got != want).sum())} entries.")


@checker("Exercise 11.2: DARE's drop and rescale")
def check_dare(fn) -> None:
    """``fn(tensor, density, generator)`` must zero each entry with probability ``1 - density``
    (drawn from ``generator``) and divide the survivors by ``density``."""
    tensor = torch.randn(200, 200, generator=torch.Generator().manual_seed(11)) + 0.01
    for density in (0.1, 0.5, 0.9):
        given = tensor.clone()
        out = _tensor(fn(given, density, torch.Generator().manual_seed(1)), "the result")
        if not torch.equal(given, tensor):
            raise Hint("do not change the input in place: return a new tensor.")
        if out.shape != tensor.shape:
            raise Hint(f"return a tensor shaped like the input, {tuple(tensor.shape)}; got {tuple(out.shape)}.")
        kept = out != 0
        fraction = float(kept.float().mean())
        where = f"at density={density}"
        if torch.allclose(out[kept], tensor[kept]):
            raise Hint(f"{where} the survivors are unchanged: rescale them by 1 / density (= 1 / (1 - p)), so that "
                       "every entry keeps its expected value.")
        if torch.allclose(out[kept], tensor[kept] * density):
            raise Hint(f"{where} the survivors are multiplied by density: divide by it instead.")
        if not torch.allclose(out[kept], tensor[kept] / density, rtol=1e-5, atol=1e-6):
            raise Hint(f"{where} every survivor should be its input value / density.")
        if abs(fraction - (1 - density)) < 0.02 and density != 0.5:
            raise Hint(f"{where} you kept {fraction:.0%} of the entries: density is the fraction KEPT; each entry is "
                       "dropped with probability p = 1 - density.")
        if abs(fraction - density) > 0.02:
            raise Hint(f"{where} you kept {fraction:.1%} of the entries; keep each with probability density.")
        top = prune(tensor, density, "magnitude") != 0
        if torch.equal(kept, top):
            raise Hint(f"{where} you kept the largest entries: that is trimming (TIES). DARE drops at random, "
                       "whatever the size: torch.bernoulli(torch.full_like(tensor, density), generator=generator).")
        again = _tensor(fn(tensor.clone(), density, torch.Generator().manual_seed(1)), "the result")
        other = _tensor(fn(tensor.clone(), density, torch.Generator().manual_seed(2)), "the result")
        if not torch.equal(again, out) or torch.equal(other, out):
            raise Hint("draw the random mask from the `generator` you are given (generator=generator), so that the "
                       "same seed gives the same drop and another seed another one.")


@checker("Exercise 11.3: TIES by hand")
def check_ties_by_hand(fn) -> None:
    """``fn()`` must return TIES' merge of ``TIES_EXAMPLE`` (density 0.5, weights 1, "total") as a
    3x3 tensor or nested list."""
    got = fn()
    try:
        got = torch.as_tensor(got, dtype=torch.float32)
    except (TypeError, ValueError):
        raise Hint("return the 3x3 result as a tensor or a list of three lists of three numbers.") from None
    if got.shape != (3, 3):
        raise Hint(f"the result is 3x3, like each task tensor; got shape {tuple(got.shape)}.")
    ones = torch.ones(3)
    want = ties(TIES_EXAMPLE, ones, TIES_DENSITY)
    if torch.allclose(got, want):
        return
    trimmed = torch.stack([prune(t, TIES_DENSITY, "magnitude") for t in TIES_EXAMPLE])
    agree = calculate_majority_sign_mask(trimmed, "total")
    wrong = {
        "untrimmed": (ties(TIES_EXAMPLE, ones, 1.0), "trim first: keep only the 4 largest-magnitude entries of each "
                      "task tensor (int(0.5 * 9) = 4) and zero the other 5."),
        "sum": ((trimmed * agree).sum(0), "the disjoint MEAN divides by the number of tasks that agree with the "
                "elected sign (at least 1); you summed them."),
        "no election": (magnitude_prune(TIES_EXAMPLE, ones, TIES_DENSITY), "after trimming, elect a sign per entry "
                        "(the sign of the sum) and average only the tasks that agree with it; you added everything."),
        "mean of all": (trimmed.sum(0) / 3, "average over the tasks that agree with the elected sign, not over all 3."),
        "frequency": (ties(TIES_EXAMPLE, ones, TIES_DENSITY, "frequency"), "elect with 'total', the sign of the SUM "
                      "of the trimmed values, not the sign with more votes."),
    }
    for answer, hint in wrong.values():
        if torch.allclose(got, answer):
            raise Hint(hint)
    bad = [(int(i), int(j)) for i, j in zip(*torch.nonzero(~torch.isclose(got, want), as_tuple=True))]
    raise Hint(f"{len(bad)} entries differ, for example at (row, column) {bad[0]}: trim each tensor, elect the sign of "
               "the sum of the trimmed values, then average the entries that agree.")
