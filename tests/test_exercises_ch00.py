"""The chapter 00 checkers: a stub is 'not attempted', each typical mistake fails with its hint."""
import pytest

from minilora.exercises import ch00


def stub(*args, **kwargs):
    raise NotImplementedError


def linear_ok(d_in, d_out, bias=True):
    return d_in * d_out + (d_out if bias else 0)


def fraction_ok(d, k, r):
    return r * (d + k) / (d * k)


@pytest.mark.parametrize("check", [ch00.check_demo_add, ch00.check_linear_params, ch00.check_lora_fraction])
def test_stub_is_not_attempted(check, capsys):
    assert check(stub) is None
    assert "not attempted yet" in capsys.readouterr().out


def test_correct_answers_pass(capsys):
    assert ch00.check_demo_add(lambda a, b: a + b) is True
    assert ch00.check_linear_params(linear_ok) is True
    assert ch00.check_lora_fraction(fraction_ok) is True
    assert capsys.readouterr().out.count("passed.") == 3


@pytest.mark.parametrize("wrong, hint", [
    (lambda a, b: a * b, "Use + instead of *"),
    (lambda a, b: a - b, "expected"),
])
def test_demo_add_hints(wrong, hint, capsys):
    assert ch00.check_demo_add(wrong) is False
    assert hint in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda d_in, d_out, bias=True: d_in * d_out, "weight matrix only"),
    (lambda d_in, d_out, bias=True: d_in * d_out + d_in, "per *output* feature"),
    (lambda d_in, d_out, bias=True: d_in * d_out + d_out, "honour the `bias` argument"),
    (lambda d_in, d_out, bias=True: (d_in + 1) * (d_out + 1), "shape (d_out, d_in)"),
    (lambda d_in, d_out, bias=True: "many", "whole number"),
    (lambda d_in, d_out, bias=True: True, "whole number"),
])
def test_linear_params_hints(wrong, hint, capsys):
    assert ch00.check_linear_params(wrong) is False
    assert hint in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda d, k, r: r * (d + k), "Divide it by d*k"),
    (lambda d, k, r: d * k / (r * (d + k)), "upside down"),
    (lambda d, k, r: (d + k) / (d * k), "forgot the rank"),
    (lambda d, k, r: r * (d + k) // (d * k), "integer division"),
    (lambda d, k, r: r * d * k / (d + k), "r(d+k) / (d*k)"),
    (lambda d, k, r: r / d, "expected"),
    (lambda d, k, r: 1 / 0, "ZeroDivisionError"),
])
def test_lora_fraction_hints(wrong, hint, capsys):
    assert ch00.check_lora_fraction(wrong) is False
    assert hint in capsys.readouterr().out
