"""Chapter 02 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import math

import pytest
import torch
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.exercises import ch02


# Exercise 2.1 --------------------------------------------------------------------------------------
def merge_weights(W0, A, B, alpha, r):
    return W0 + alpha / r * B @ A


def _in_place(W0, A, B, alpha, r):
    W0 += alpha / r * B @ A
    return W0


MERGE_WRONG = {
    "in place": _in_place,
    "no scaling": lambda W0, A, B, alpha, r: W0 + B @ A,
    "r / alpha": lambda W0, A, B, alpha, r: W0 + r / alpha * B @ A,
    "rsLoRA scaling": lambda W0, A, B, alpha, r: W0 + alpha / math.sqrt(r) * B @ A,
    "update only": lambda W0, A, B, alpha, r: alpha / r * B @ A,
    "transposed": lambda W0, A, B, alpha, r: (W0 + alpha / r * B @ A).T,
    "subtracted": lambda W0, A, B, alpha, r: W0 - alpha / r * B @ A,
    "a list": lambda W0, A, B, alpha, r: (W0 + alpha / r * B @ A).tolist(),
}


# Exercise 2.2 --------------------------------------------------------------------------------------
def lora_forward(x, W0, b, A, B, s):
    return x @ W0.T + b + s * (x @ A.T) @ B.T


FORWARD_WRONG = {
    "base layer only": lambda x, W0, b, A, B, s: x @ W0.T + b,
    "no bias": lambda x, W0, b, A, B, s: x @ W0.T + s * (x @ A.T) @ B.T,
    "no scaling": lambda x, W0, b, A, B, s: x @ W0.T + b + (x @ A.T) @ B.T,
    "flattened": lambda x, W0, b, A, B, s: (x @ W0.T + b + s * (x @ A.T) @ B.T).reshape(-1),
    "bias subtracted": lambda x, W0, b, A, B, s: x @ W0.T - b + s * (x @ A.T) @ B.T,
    "input on the right": lambda x, W0, b, A, B, s: W0 @ x + b + s * B @ (A @ x),
    "crashes": lambda x, W0, b, A, B, s: x @ W0 + b,  # the checker reports the exception
}


# Exercise 2.3 --------------------------------------------------------------------------------------
def rslora_scaling(alpha, r):
    return alpha / math.sqrt(r)


RSLORA_WRONG = {
    "plain LoRA": lambda alpha, r: alpha / r,
    "sqrt of the ratio": lambda alpha, r: math.sqrt(alpha / r),
    "multiplied": lambda alpha, r: alpha * math.sqrt(r),
    "r squared": lambda alpha, r: alpha / r ** 2,
    "a string": lambda alpha, r: str(alpha / math.sqrt(r)),
}

CASES = [
    (ch02.check_merge_weights, merge_weights, MERGE_WRONG),
    (ch02.check_lora_forward, lora_forward, FORWARD_WRONG),
    (ch02.check_rslora_scaling, rslora_scaling, RSLORA_WRONG),
]


test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES)


@pytest.mark.parametrize("check,solution", [
    (ch02.check_merge_weights, lambda W0, A, B, alpha, r: torch.addmm(W0, B, A, alpha=alpha / r)),
    (ch02.check_lora_forward, lambda x, W0, b, A, B, s: torch.nn.functional.linear(x, W0 + s * B @ A, b)),
    (ch02.check_rslora_scaling, lambda alpha, r: torch.tensor(alpha / r ** 0.5)),
], ids=["torch.addmm", "F.linear on the merged weight", "a tensor"])
def test_other_correct_answers_pass(check, solution, capsys):
    assert check(solution) is True
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,fragment", [
    (MERGE_WRONG["in place"], "in place"),
    (MERGE_WRONG["no scaling"], "forgot the scaling"),
    (MERGE_WRONG["r / alpha"], "upside down"),
    (MERGE_WRONG["rsLoRA scaling"], "rsLoRA"),
    (MERGE_WRONG["update only"], "only the update"),
    (MERGE_WRONG["transposed"], "shape"),
    (MERGE_WRONG["subtracted"], "merged weight is wrong"),
    (MERGE_WRONG["a list"], "return a tensor"),
    (FORWARD_WRONG["base layer only"], "base layer's alone"),
    (FORWARD_WRONG["no bias"], "forgot the bias"),
    (FORWARD_WRONG["no scaling"], "multiply the LoRA path by scaling"),
    (FORWARD_WRONG["flattened"], "shape"),
    (FORWARD_WRONG["bias subtracted"], "compute h ="),
    (FORWARD_WRONG["input on the right"], "fails for x of shape (4, 5) (a batch)"),
    (FORWARD_WRONG["crashes"], "raised"),
    (RSLORA_WRONG["plain LoRA"], "plain LoRA"),
    (RSLORA_WRONG["sqrt of the ratio"], "only r goes under"),
    (RSLORA_WRONG["multiplied"], "do not multiply"),
    (RSLORA_WRONG["r squared"], "expected"),
    (RSLORA_WRONG["a string"], "return a number"),
])
def test_hints_are_specific(wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, cases=CASES)
