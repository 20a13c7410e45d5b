"""Chapter 12 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import pytest
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.exercises import ch12


# Exercise 12.1 --------------------------------------------------------------------------------------
def allreduce_bytes(r, d_model, n_layers, bytes_per_value):
    return n_layers * 2 * r * (d_model + d_model) * bytes_per_value


BYTES_WRONG = {
    "values, not bytes": lambda r, d, n, s: n * 2 * r * 2 * d,
    "one matrix per layer": lambda r, d, n, s: n * r * 2 * d * s,
    "A only": lambda r, d, n, s: n * 2 * r * d * s,
    "full matrices": lambda r, d, n, s: n * 2 * d * d * s,
    "off by a layer": lambda r, d, n, s: (n - 1) * 2 * r * 2 * d * s,
    "a string": lambda r, d, n, s: "lots",
}


# Exercise 12.2 --------------------------------------------------------------------------------------
def zero_bytes_per_gpu(n, w, stage):
    return [16 * n, 4 * n + 12 * n / w, 2 * n + 14 * n / w, 16 * n / w][stage]


ZERO_WRONG = {
    "no master copy": lambda n, w, s: [12 * n, 4 * n + 8 * n / w, 2 * n + 10 * n / w, 12 * n / w][s],
    "everything sharded": lambda n, w, s: 16 * n if s == 0 else 16 * n / w,
    "stage 1 shards gradients": lambda n, w, s: [16 * n, 2 * n + 14 * n / w, 2 * n + 14 * n / w, 16 * n / w][s],
    "stage 2 keeps gradients": lambda n, w, s: [16 * n, 4 * n + 12 * n / w, 4 * n + 12 * n / w, 16 * n / w][s],
    "a list": lambda n, w, s: [16 * n],
}


# Exercise 12.3 --------------------------------------------------------------------------------------
def batch_and_steps(n, b, g, w):
    return b * g * w, n // (b * g * w)


STEPS_WRONG = {
    "no world size": lambda n, b, g, w: (b * g, n // (b * g)),
    "no accumulation": lambda n, b, g, w: (b * w, n // (b * w)),
    "rounded up": lambda n, b, g, w: (b * g * w, -(-n // (b * g * w))),
    "not whole": lambda n, b, g, w: (b * g * w, n / (b * g * w)),
    "one number": lambda n, b, g, w: b * g * w,
}

CASES = [
    (ch12.check_allreduce_bytes, allreduce_bytes, BYTES_WRONG),
    (ch12.check_zero_bytes_per_gpu, zero_bytes_per_gpu, ZERO_WRONG),
    (ch12.check_batch_and_steps, batch_and_steps, STEPS_WRONG),
]

test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES, hint_required=True)


@pytest.mark.parametrize("check,wrong,fragment", [
    (ch12.check_allreduce_bytes, BYTES_WRONG["values, not bytes"], "Multiply by bytes_per_value"),
    (ch12.check_allreduce_bytes, BYTES_WRONG["one matrix per layer"], "two adapted matrices, query and value"),
    (ch12.check_allreduce_bytes, BYTES_WRONG["A only"], "two factors, A (r x d_in) and B"),
    (ch12.check_allreduce_bytes, BYTES_WRONG["full matrices"], "you counted the full d_model x d_model"),
    (ch12.check_allreduce_bytes, BYTES_WRONG["off by a layer"], "the answer is 16,777,216 bytes"),
    (ch12.check_allreduce_bytes, BYTES_WRONG["a string"], "should be a number"),
    (ch12.check_zero_bytes_per_gpu, ZERO_WRONG["no master copy"], "4 (fp32 master weight)"),
    (ch12.check_zero_bytes_per_gpu, ZERO_WRONG["everything sharded"], "you divided everything by the world size"),
    (ch12.check_zero_bytes_per_gpu, ZERO_WRONG["stage 1 shards gradients"], "that is stage 2"),
    (ch12.check_zero_bytes_per_gpu, ZERO_WRONG["stage 2 keeps gradients"], "stage 2 shards the 2-byte gradients"),
    (ch12.check_zero_bytes_per_gpu, ZERO_WRONG["a list"], "should be a number"),
    (ch12.check_batch_and_steps, STEPS_WRONG["no world size"], "multiply all three"),
    (ch12.check_batch_and_steps, STEPS_WRONG["no accumulation"], "multiply all three"),
    (ch12.check_batch_and_steps, STEPS_WRONG["rounded up"], "round down"),
    (ch12.check_batch_and_steps, STEPS_WRONG["not whole"], "steps are whole"),
    (ch12.check_batch_and_steps, STEPS_WRONG["one number"], "return two numbers"),
])
def test_hints_are_specific(check, wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, check=check)
