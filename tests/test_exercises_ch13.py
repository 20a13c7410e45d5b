"""Chapter 13 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import pytest
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.exercises import ch13
from minilora.course.serving_sim import simulate_cache


# Exercise 13.1 --------------------------------------------------------------------------------------
def bgmv_row(x, A, B, i):
    return B[i] @ (A[i] @ x)


ROW_WRONG = {
    "shrink only": lambda x, A, B, i: A[i] @ x,
    "always adapter 0": lambda x, A, B, i: B[0] @ (A[0] @ x),
    "scaled twice": lambda x, A, B, i: 2 * B[i] @ (A[i] @ x),
    "a list": lambda x, A, B, i: (B[i] @ (A[i] @ x)).tolist(),
}


# Exercise 13.2 --------------------------------------------------------------------------------------
def slots_for_hit_rate(trace, target):
    slots = 1
    while simulate_cache(trace, slots, "lru").hit_rate < target:
        slots += 1
    return slots


SLOTS_WRONG = {
    "one too many": lambda t, target: slots_for_hit_rate(t, target) + 1,
    "one too few": lambda t, target: max(1, slots_for_hit_rate(t, target) - 1) if slots_for_hit_rate(t, target) > 1
    else 0,
    "every adapter": lambda t, target: len(set(t)),
    "a float": lambda t, target: float(slots_for_hit_rate(t, target)),
}


# Exercise 13.3 --------------------------------------------------------------------------------------
def adapters_bytes(n, r, shapes, size):
    return n * r * sum(a + b for a, b in shapes) * size


BYTES_WRONG = {
    "values": lambda n, r, shapes, size: n * r * sum(a + b for a, b in shapes),
    "full matrices": lambda n, r, shapes, size: n * sum(a * b for a, b in shapes) * size,
    "one adapter": lambda n, r, shapes, size: r * sum(a + b for a, b in shapes) * size,
    "a string": lambda n, r, shapes, size: "many",
}

CASES = [
    (ch13.check_bgmv_row, bgmv_row, ROW_WRONG),
    (ch13.check_slots_for_hit_rate, slots_for_hit_rate, SLOTS_WRONG),
    (ch13.check_adapters_bytes, adapters_bytes, BYTES_WRONG),
]

test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES, hint_required=True)


@pytest.mark.parametrize("check,wrong,fragment", [
    (ch13.check_bgmv_row, ROW_WRONG["shrink only"], "that is the shrink"),
    (ch13.check_bgmv_row, ROW_WRONG["always adapter 0"], "row i uses adapter i"),
    (ch13.check_bgmv_row, ROW_WRONG["scaled twice"], "already inside B_stack"),
    (ch13.check_bgmv_row, ROW_WRONG["a list"], "return a tensor"),
    (ch13.check_slots_for_hit_rate, SLOTS_WRONG["one too many"], "return the fewest"),
    (ch13.check_slots_for_hit_rate, SLOTS_WRONG["one too few"], "below the target"),
    (ch13.check_slots_for_hit_rate, SLOTS_WRONG["a float"], "whole number of slots"),
    (ch13.check_adapters_bytes, BYTES_WRONG["values"], "Multiply by bytes_per_value"),
    (ch13.check_adapters_bytes, BYTES_WRONG["full matrices"], "whole d_in x d_out matrices"),
    (ch13.check_adapters_bytes, BYTES_WRONG["one adapter"], "multiply by n_adapters"),
    (ch13.check_adapters_bytes, BYTES_WRONG["a string"], "number of bytes"),
])
def test_hints_are_specific(check, wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, check=check)
