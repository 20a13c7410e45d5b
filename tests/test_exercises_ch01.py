"""Chapter 01 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import math

import pytest
import torch
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.exercises import ch01


# Exercise 1.1 --------------------------------------------------------------------------------------
def low_rank_factors(W, r):
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return U[:, :r] * S[:r], Vh[:r]


def factors_sqrt_split(W, r):  # another correct answer: sqrt(S) in both factors
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return U[:, :r] * S[:r].sqrt(), S[:r].sqrt()[:, None] * Vh[:r]


def _svd(W):
    return torch.linalg.svd(W, full_matrices=False)


FACTORS_WRONG = {
    "one matrix": lambda W, r: low_rank_factors(W, r)[0] @ low_rank_factors(W, r)[1],
    "(A, B) order": lambda W, r: low_rank_factors(W, r)[::-1],
    "no singular values": lambda W, r: (_svd(W)[0][:, :r], _svd(W)[2][:r]),
    "smallest r": lambda W, r: (_svd(W)[0][:, -r:] * _svd(W)[1][-r:], _svd(W)[2][-r:]),
    "Vh transposed again": lambda W, r: (_svd(W)[0][:, :r] * _svd(W)[1][:r], _svd(W)[2].T[:r]),
    "A transposed": lambda W, r: (_svd(W)[0][:, :r], _svd(W)[2][:r].T),
    "zeros": lambda W, r: (torch.zeros(W.shape[0], r, dtype=W.dtype), torch.zeros(r, W.shape[1], dtype=W.dtype)),
    "a one-element list": lambda W, r: [low_rank_factors(W, r)[0]],
}


# Exercise 1.2 --------------------------------------------------------------------------------------
def entropy_effective_rank(W):
    s = torch.linalg.svdvals(W)
    p = s[s > 0] / s.sum()
    return torch.exp(-(p * p.log()).sum()).item()


def _p(W, square=False):
    s = torch.linalg.svdvals(W)
    s = s[s > 0] ** (2 if square else 1)
    return s / s.sum()


ERANK_WRONG = {
    "the entropy": lambda W: -(_p(W) * _p(W).log()).sum().item(),
    "squared singular values": lambda W: math.exp(-(_p(W, True) * _p(W, True).log()).sum().item()),
    "exp of a log2 entropy": lambda W: math.exp(-(_p(W) * _p(W).log2()).sum().item()),
    "2 ** a natural-log entropy": lambda W: 2 ** (-(_p(W) * _p(W).log()).sum().item()),
    "zeros kept": lambda W: torch.exp(-(torch.linalg.svdvals(W) / torch.linalg.svdvals(W).sum() * (
        torch.linalg.svdvals(W) / torch.linalg.svdvals(W).sum()).log()).sum()).item(),
    "the ordinary rank": lambda W: int(torch.linalg.matrix_rank(W)),
    "sum of singular values": lambda W: torch.linalg.svdvals(W).sum().item(),
    "a string": lambda W: "five",
}


# Exercise 1.3 --------------------------------------------------------------------------------------
def break_even_rank(d, k):
    return (d * k - 1) // (d + k)


BREAK_EVEN_WRONG = {
    "not strictly below": lambda d, k: d * k // (d + k),
    "a fraction": lambda d, k: d * k / (d + k),
    "rounded up": lambda d, k: math.ceil(d * k / (d + k)),
    "half the smaller side": lambda d, k: min(d, k) // 2,
    "always 1": lambda d, k: 1,
}

CASES = [
    (ch01.check_low_rank_factors, low_rank_factors, FACTORS_WRONG),
    (ch01.check_entropy_effective_rank, entropy_effective_rank, ERANK_WRONG),
    (ch01.check_break_even_rank, break_even_rank, BREAK_EVEN_WRONG),
]


test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES, hint_required=True)


@pytest.mark.parametrize("check,solution", [
    (ch01.check_low_rank_factors, factors_sqrt_split),
    (ch01.check_break_even_rank, lambda d, k: math.ceil(d * k / (d + k)) - 1),
], ids=["sqrt(S) in both factors", "ceil minus one"])
def test_other_correct_answers_pass(check, solution, capsys):
    assert check(solution) is True
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,fragment", [
    (FACTORS_WRONG["one matrix"], "you returned one matrix"),
    (FACTORS_WRONG["(A, B) order"], "you returned (A, B)"),
    (FACTORS_WRONG["no singular values"], "dropped the singular values"),
    (FACTORS_WRONG["smallest r"], "*smallest*"),
    (FACTORS_WRONG["Vh transposed again"], "do not transpose it again"),
    (FACTORS_WRONG["A transposed"], "B must have shape"),
    (FACTORS_WRONG["zeros"], "Eckart-Young"),
    (FACTORS_WRONG["a one-element list"], "return the pair (B, A)"),
    (ERANK_WRONG["the entropy"], "entropy H itself"),
    (ERANK_WRONG["squared singular values"], "squared singular values"),
    (ERANK_WRONG["exp of a log2 entropy"], "mixed logarithm bases"),
    (ERANK_WRONG["2 ** a natural-log entropy"], "mixed logarithm bases"),
    (ERANK_WRONG["zeros kept"], "0 * log(0) = nan"),
    (ERANK_WRONG["the ordinary rank"], "ordinary rank"),
    (ERANK_WRONG["sum of singular values"], "p = s / s.sum()"),
    (ERANK_WRONG["a string"], "return a number"),
    (BREAK_EVEN_WRONG["not strictly below"], "exactly as many"),
    (BREAK_EVEN_WRONG["a fraction"], "whole number"),
    (BREAK_EVEN_WRONG["rounded up"], "more than"),
    (BREAK_EVEN_WRONG["half the smaller side"], "still trains fewer"),
    (BREAK_EVEN_WRONG["always 1"], "still trains fewer"),
])
def test_hints_are_specific(wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, cases=CASES)
