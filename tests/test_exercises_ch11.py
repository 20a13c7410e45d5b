"""Chapter 11 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import pytest
import torch
from checker_protocol import assert_specific_hint, protocol_tests

from minilora import merging
from minilora.course.exercises import ch11


# Exercise 11.1 --------------------------------------------------------------------------------------
def majority_sign_mask(trimmed, method):
    sign = trimmed.sign()
    votes = trimmed.sum(dim=0) if method == "total" else sign.sum(dim=0)
    return sign == torch.where(votes >= 0, 1.0, -1.0)


SIGN_WRONG = {
    "swapped methods": lambda t, m: majority_sign_mask(t, "frequency" if m == "total" else "total"),
    "torch.sign of the votes": lambda t, m: t.sign() == (t.sum(0) if m == "total" else t.sign().sum(0)).sign(),
    "ties to minus": lambda t, m: t.sign() == torch.where((t.sum(0) if m == "total" else t.sign().sum(0)) > 0,
                                                          1.0, -1.0),
    "one entry per position": lambda t, m: torch.where(t.sum(0) >= 0, 1.0, -1.0) > 0,
    "numbers, not bool": lambda t, m: majority_sign_mask(t, m).float(),
    "a list": lambda t, m: majority_sign_mask(t, m).tolist(),
}


# Exercise 11.2 --------------------------------------------------------------------------------------
def dare(tensor, density, generator):
    keep = torch.bernoulli(torch.full_like(tensor, density), generator=generator)
    return tensor * keep / density


DARE_WRONG = {
    "no rescale": lambda t, d, g: t * torch.bernoulli(torch.full_like(t, d), generator=g),
    "times density": lambda t, d, g: t * torch.bernoulli(torch.full_like(t, d), generator=g) * d,
    "keeps 1 - density": lambda t, d, g: t * torch.bernoulli(torch.full_like(t, 1 - d), generator=g) / d,
    "top-k": lambda t, d, g: merging.prune(t, d, "magnitude") / d,
    "global generator": lambda t, d, g: t * torch.bernoulli(torch.full_like(t, d)) / d,
    "in place": lambda t, d, g: t.mul_(torch.bernoulli(torch.full_like(t, d), generator=g) / d),
    "divide by 1 - density": lambda t, d, g: t * torch.bernoulli(torch.full_like(t, d), generator=g) / (1 - d),
}


# Exercise 11.3 --------------------------------------------------------------------------------------
def ties_by_hand():
    return [[0.0, -8.5, 0.0], [-8.0, 6.5, -7.0], [0.0, -9.0, -8.5]]


TIES_WRONG = {
    "untrimmed": lambda: [[4.0, -7.0, -3.5], [5.0, 6.5, -5.5], [3.0, -7.0, -8.5]],
    "sum": lambda: [[0.0, -17.0, 0.0], [-8.0, 13.0, -7.0], [0.0, -9.0, -17.0]],
    "no election": lambda: [[0.0, -17.0, 0.0], [-1.0, 13.0, -1.0], [0.0, -3.0, -17.0]],
    "frequency": lambda: [[0.0, -8.5, 0.0], [7.0, 6.5, 6.0], [0.0, 6.0, -8.5]],
    "one entry off": lambda: [[0.0, -8.5, 0.0], [-8.0, 6.5, -7.0], [0.0, -9.0, 8.5]],
    "2x2": lambda: [[0.0, -8.5], [-8.0, 6.5]],
    "a string": lambda: "no idea",
}

CASES = [
    (ch11.check_majority_sign_mask, majority_sign_mask, SIGN_WRONG),
    (ch11.check_dare, dare, DARE_WRONG),
    (ch11.check_ties_by_hand, ties_by_hand, TIES_WRONG),
]

test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES, hint_required=True)


@pytest.mark.parametrize("check,wrong,fragment", [
    (ch11.check_majority_sign_mask, SIGN_WRONG["swapped methods"], "with the other rule"),
    (ch11.check_majority_sign_mask, SIGN_WRONG["torch.sign of the votes"], "a tie (the vote sums to exactly 0)"),
    (ch11.check_majority_sign_mask, SIGN_WRONG["ties to minus"], "a tie (the vote sums to exactly 0)"),
    (ch11.check_majority_sign_mask, SIGN_WRONG["one entry per position"], "the mask for every task"),
    (ch11.check_majority_sign_mask, SIGN_WRONG["numbers, not bool"], "a bool mask"),
    (ch11.check_dare, DARE_WRONG["no rescale"], "rescale them by 1 / density"),
    (ch11.check_dare, DARE_WRONG["times density"], "divide by it instead"),
    (ch11.check_dare, DARE_WRONG["keeps 1 - density"], "density is the fraction KEPT"),
    (ch11.check_dare, DARE_WRONG["top-k"], "that is trimming (TIES)"),
    (ch11.check_dare, DARE_WRONG["global generator"], "the `generator` you are given"),
    (ch11.check_dare, DARE_WRONG["in place"], "in place"),
    (ch11.check_dare, DARE_WRONG["divide by 1 - density"], "input value / density"),
    (ch11.check_ties_by_hand, TIES_WRONG["untrimmed"], "trim first"),
    (ch11.check_ties_by_hand, TIES_WRONG["sum"], "you summed them"),
    (ch11.check_ties_by_hand, TIES_WRONG["no election"], "elect a sign per entry"),
    (ch11.check_ties_by_hand, TIES_WRONG["frequency"], "elect with 'total'"),
    (ch11.check_ties_by_hand, TIES_WRONG["one entry off"], "1 entries differ, for example at (row, column) (2, 2)"),
    (ch11.check_ties_by_hand, TIES_WRONG["2x2"], "the result is 3x3"),
    (ch11.check_ties_by_hand, TIES_WRONG["a string"], "a list of three lists"),
])
def test_hints_are_specific(check, wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, check=check)


def test_the_example_answer_is_what_the_library_and_peft_compute():
    from peft.utils import merge_utils

    want = merge_utils.ties(ch11.TIES_EXAMPLE, torch.ones(3), ch11.TIES_DENSITY, "total")
    torch.testing.assert_close(torch.tensor(ties_by_hand()), want)
