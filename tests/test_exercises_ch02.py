"""The chapter 02 checkers: a stub is 'not attempted', each typical mistake fails with its hint."""
import math

import pytest
import torch

from minilora.exercises import ch02


def stub(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("check", [ch02.check_merge_weights, ch02.check_lora_forward, ch02.check_rslora_scaling])
def test_stub_is_not_attempted(check, capsys):
    assert check(stub) is None
    assert "not attempted yet" in capsys.readouterr().out


def test_correct_answers_pass(capsys):
    assert ch02.check_merge_weights(lambda W0, A, B, alpha, r: W0 + alpha / r * B @ A) is True
    assert ch02.check_merge_weights(lambda W0, A, B, alpha, r: torch.addmm(W0, B, A, alpha=alpha / r)) is True
    assert ch02.check_lora_forward(lambda x, W0, b, A, B, s: x @ W0.T + b + s * (x @ A.T) @ B.T) is True
    assert ch02.check_lora_forward(
        lambda x, W0, b, A, B, s: torch.nn.functional.linear(x, W0 + s * B @ A, b)) is True
    assert ch02.check_rslora_scaling(lambda alpha, r: alpha / math.sqrt(r)) is True
    assert ch02.check_rslora_scaling(lambda alpha, r: torch.tensor(alpha / r ** 0.5)) is True
    assert capsys.readouterr().out.count("passed.") == 6


def in_place(W0, A, B, alpha, r):
    W0 += alpha / r * B @ A
    return W0


@pytest.mark.parametrize("wrong,hint", [
    (in_place, "in place"),
    (lambda W0, A, B, alpha, r: W0 + B @ A, "forgot the scaling"),
    (lambda W0, A, B, alpha, r: W0 + r / alpha * B @ A, "upside down"),
    (lambda W0, A, B, alpha, r: W0 + alpha / math.sqrt(r) * B @ A, "rsLoRA"),
    (lambda W0, A, B, alpha, r: alpha / r * B @ A, "only the update"),
    (lambda W0, A, B, alpha, r: (W0 + alpha / r * B @ A).T, "shape"),
    (lambda W0, A, B, alpha, r: W0 - alpha / r * B @ A, "merged weight is wrong"),
    (lambda W0, A, B, alpha, r: (W0 + alpha / r * B @ A).tolist(), "return a tensor"),
])
def test_merge_weights_wrong_answers(wrong, hint, capsys):
    assert ch02.check_merge_weights(wrong) is False
    assert hint in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda x, W0, b, A, B, s: x @ W0.T + b, "base layer's alone"),
    (lambda x, W0, b, A, B, s: x @ W0.T + s * (x @ A.T) @ B.T, "forgot the bias"),
    (lambda x, W0, b, A, B, s: x @ W0.T + b + (x @ A.T) @ B.T, "multiply the LoRA path by scaling"),
    (lambda x, W0, b, A, B, s: (x @ W0.T + b + s * (x @ A.T) @ B.T).reshape(-1), "shape"),
    (lambda x, W0, b, A, B, s: x @ W0.T - b + s * (x @ A.T) @ B.T, "compute h ="),
    (lambda x, W0, b, A, B, s: W0 @ x + b + s * B @ (A @ x), "fails for x of shape (4, 5) (a batch)"),
    (lambda x, W0, b, A, B, s: x @ W0 + b, "raised"),  # crashes: the checker reports it
])
def test_lora_forward_wrong_answers(wrong, hint, capsys):
    assert ch02.check_lora_forward(wrong) is False
    assert hint in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda alpha, r: alpha / r, "plain LoRA"),
    (lambda alpha, r: math.sqrt(alpha / r), "only r goes under"),
    (lambda alpha, r: alpha * math.sqrt(r), "do not multiply"),
    (lambda alpha, r: alpha / r ** 2, "expected"),
    (lambda alpha, r: str(alpha / math.sqrt(r)), "return a number"),
])
def test_rslora_scaling_wrong_answers(wrong, hint, capsys):
    assert ch02.check_rslora_scaling(wrong) is False
    assert hint in capsys.readouterr().out
