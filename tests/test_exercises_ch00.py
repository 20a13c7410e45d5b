"""Chapter 00 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import pytest
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.exercises import ch00


# Exercise 0.0 (demo) -------------------------------------------------------------------------------
def add(a, b):
    return a + b


ADD_WRONG = {
    "multiplied": lambda a, b: a * b,
    "subtracted": lambda a, b: a - b,
}


# Exercise 0.1 --------------------------------------------------------------------------------------
def linear_param_count(d_in, d_out, bias=True):
    return d_in * d_out + (d_out if bias else 0)


LINEAR_WRONG = {
    "weight only": lambda d_in, d_out, bias=True: d_in * d_out,
    "bias per input": lambda d_in, d_out, bias=True: d_in * d_out + d_in,
    "bias always": lambda d_in, d_out, bias=True: d_in * d_out + d_out,
    "both plus one": lambda d_in, d_out, bias=True: (d_in + 1) * (d_out + 1),
    "a string": lambda d_in, d_out, bias=True: "many",
    "a bool": lambda d_in, d_out, bias=True: True,
}


# Exercise 0.2 --------------------------------------------------------------------------------------
def lora_fraction(d, k, r):
    return r * (d + k) / (d * k)


FRACTION_WRONG = {
    "the count, not a fraction": lambda d, k, r: r * (d + k),
    "upside down": lambda d, k, r: d * k / (r * (d + k)),
    "forgot the rank": lambda d, k, r: (d + k) / (d * k),
    "integer division": lambda d, k, r: r * (d + k) // (d * k),
    "r d k / (d + k)": lambda d, k, r: r * d * k / (d + k),
    "something else": lambda d, k, r: r / d,
    "raises": lambda d, k, r: 1 / 0,
}

CASES = [
    (ch00.check_demo_add, add, ADD_WRONG),
    (ch00.check_linear_params, linear_param_count, LINEAR_WRONG),
    (ch00.check_lora_fraction, lora_fraction, FRACTION_WRONG),
]


test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES)


@pytest.mark.parametrize("wrong,fragment", [
    (ADD_WRONG["multiplied"], "Use + instead of *"),
    (ADD_WRONG["subtracted"], "expected"),
    (LINEAR_WRONG["weight only"], "weight matrix only"),
    (LINEAR_WRONG["bias per input"], "per *output* feature"),
    (LINEAR_WRONG["bias always"], "honour the `bias` argument"),
    (LINEAR_WRONG["both plus one"], "shape (d_out, d_in)"),
    (LINEAR_WRONG["a string"], "whole number"),
    (LINEAR_WRONG["a bool"], "whole number"),
    (FRACTION_WRONG["the count, not a fraction"], "Divide it by d*k"),
    (FRACTION_WRONG["upside down"], "upside down"),
    (FRACTION_WRONG["forgot the rank"], "forgot the rank"),
    (FRACTION_WRONG["integer division"], "integer division"),
    (FRACTION_WRONG["r d k / (d + k)"], "r(d+k) / (d*k)"),
    (FRACTION_WRONG["something else"], "expected"),
    (FRACTION_WRONG["raises"], "ZeroDivisionError"),
])
def test_hints_are_specific(wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, cases=CASES)
