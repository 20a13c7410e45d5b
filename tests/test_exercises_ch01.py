"""The chapter 01 checkers: a stub is 'not attempted', each typical mistake fails with its hint."""
import math

import pytest
import torch

from minilora.exercises import ch01


def stub(*args, **kwargs):
    raise NotImplementedError


def factors_ok(W, r):
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return U[:, :r] * S[:r], Vh[:r]


def factors_sqrt_split(W, r):  # another correct answer: sqrt(S) in both factors
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return U[:, :r] * S[:r].sqrt(), S[:r].sqrt()[:, None] * Vh[:r]


def erank_ok(W):
    s = torch.linalg.svdvals(W)
    p = s[s > 0] / s.sum()
    return torch.exp(-(p * p.log()).sum()).item()


def break_even_ok(d, k):
    return (d * k - 1) // (d + k)


@pytest.mark.parametrize("check", [ch01.check_low_rank_factors, ch01.check_entropy_effective_rank,
                                   ch01.check_break_even_rank])
def test_stub_is_not_attempted(check, capsys):
    assert check(stub) is None
    assert "not attempted yet" in capsys.readouterr().out


def test_correct_answers_pass(capsys):
    assert ch01.check_low_rank_factors(factors_ok) is True
    assert ch01.check_low_rank_factors(factors_sqrt_split) is True
    assert ch01.check_entropy_effective_rank(erank_ok) is True
    assert ch01.check_break_even_rank(break_even_ok) is True
    assert ch01.check_break_even_rank(lambda d, k: math.ceil(d * k / (d + k)) - 1) is True
    assert capsys.readouterr().out.count("passed.") == 5


def _svd(W):
    return torch.linalg.svd(W, full_matrices=False)


@pytest.mark.parametrize("wrong, hint", [
    (lambda W, r: factors_ok(W, r)[0] @ factors_ok(W, r)[1], "you returned one matrix"),
    (lambda W, r: factors_ok(W, r)[::-1], "you returned (A, B)"),
    (lambda W, r: (_svd(W)[0][:, :r], _svd(W)[2][:r]), "dropped the singular values"),
    (lambda W, r: (_svd(W)[0][:, -r:] * _svd(W)[1][-r:], _svd(W)[2][-r:]), "*smallest*"),
    (lambda W, r: (_svd(W)[0][:, :r] * _svd(W)[1][:r], _svd(W)[2].T[:r]), "do not transpose it again"),
    (lambda W, r: (_svd(W)[0][:, :r], _svd(W)[2][:r].T), "B must have shape"),
    (lambda W, r: (torch.zeros(W.shape[0], r, dtype=W.dtype), torch.zeros(r, W.shape[1], dtype=W.dtype)),
     "Eckart-Young"),
    (lambda W, r: [factors_ok(W, r)[0]], "return the pair (B, A)"),
])
def test_low_rank_factors_hints(wrong, hint, capsys):
    assert ch01.check_low_rank_factors(wrong) is False
    assert hint in capsys.readouterr().out


def _p(W, square=False):
    s = torch.linalg.svdvals(W)
    s = s[s > 0] ** (2 if square else 1)
    return s / s.sum()


@pytest.mark.parametrize("wrong, hint", [
    (lambda W: -(_p(W) * _p(W).log()).sum().item(), "entropy H itself"),
    (lambda W: math.exp(-(_p(W, True) * _p(W, True).log()).sum().item()), "squared singular values"),
    (lambda W: math.exp(-(_p(W) * _p(W).log2()).sum().item()), "mixed logarithm bases"),
    (lambda W: 2 ** (-(_p(W) * _p(W).log()).sum().item()), "mixed logarithm bases"),
    (lambda W: torch.exp(-(torch.linalg.svdvals(W) / torch.linalg.svdvals(W).sum() * (
        torch.linalg.svdvals(W) / torch.linalg.svdvals(W).sum()).log()).sum()).item(), "0 * log(0) = nan"),
    (lambda W: int(torch.linalg.matrix_rank(W)), "ordinary rank"),
    (lambda W: torch.linalg.svdvals(W).sum().item(), "p = s / s.sum()"),
    (lambda W: "five", "return a number"),
])
def test_entropy_effective_rank_hints(wrong, hint, capsys):
    assert ch01.check_entropy_effective_rank(wrong) is False
    assert hint in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda d, k: d * k // (d + k), "exactly as many"),
    (lambda d, k: d * k / (d + k), "whole number"),
    (lambda d, k: math.ceil(d * k / (d + k)), "more than"),
    (lambda d, k: min(d, k) // 2, "still trains fewer"),
    (lambda d, k: 1, "still trains fewer"),
])
def test_break_even_rank_hints(wrong, hint, capsys):
    assert ch01.check_break_even_rank(wrong) is False
    assert hint in capsys.readouterr().out
