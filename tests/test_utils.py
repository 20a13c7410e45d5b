"""The shared argument checks: TypeError for a wrong type, ValueError for a wrong value, messages that help."""
import math

import pytest

from minilora.utils import check_bool, check_int, check_number


@pytest.mark.parametrize("value", [1, 7, 2**40])
def test_check_int_returns_a_valid_int(value):
    assert check_int(value, "r") == value


@pytest.mark.parametrize("value", [True, False, 1.0, "3", None, [1]])
def test_check_int_refuses_other_types_with_a_type_error(value):
    with pytest.raises(TypeError, match=r"r must be an integer >= 1, got"):
        check_int(value, "r")


def test_check_int_refuses_small_values_with_a_value_error_and_the_hint():
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1, got 0\. e\.g\. steps=100"):
        check_int(0, "steps", hint="e.g. steps=100")
    assert check_int(0, "count", minimum=0) == 0
    assert check_int(None, "max_steps", optional=True) is None
    with pytest.raises(TypeError, match="or None"):
        check_int("x", "max_steps", optional=True)


def test_check_number_bounds_open_and_closed():
    assert check_number(0.5, "p", 0, 1, high_open=True) == 0.5
    assert check_number(0, "p", 0, 1, high_open=True) == 0.0
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\), got 1"):
        check_number(1, "p", 0, 1, high_open=True)
    with pytest.raises(ValueError, match=r"lr must be a number > 0, got 0"):
        check_number(0, "lr", low=0, low_open=True)
    with pytest.raises(ValueError, match="got nan"):
        check_number(math.nan, "lr", low=0, low_open=True)
    with pytest.raises(TypeError, match=r"lr must be a number > 0, got True \(bool\)"):
        check_number(True, "lr", low=0, low_open=True)
    assert check_number(None, "max_grad_norm", low=0, low_open=True, optional=True) is None


def test_check_bool():
    assert check_bool(False, "use_rslora") is False
    with pytest.raises(TypeError, match="use_rslora must be True or False, got 1"):
        check_bool(1, "use_rslora")
