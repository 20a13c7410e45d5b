"""The chapter 03 checkers: a stub is 'not attempted', each typical mistake fails with its hint."""
import pytest
import torch
from torch import nn

from minilora.exercises import ch03
from minilora.layers import LoRALinear


def stub(*args, **kwargs):
    raise NotImplementedError


def count_ok(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def add_lora_ok(model, r, alpha):
    linears = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    for i in linears[:-1]:
        model[i] = LoRALinear(model[i], r=r, alpha=alpha)
    return model


@torch.no_grad()
def accuracy_ok(model, X, y):
    model.eval()
    return (model(X).argmax(-1) == y).float().mean().item()


@pytest.mark.parametrize("check", [ch03.check_count_trainable, ch03.check_add_lora_to_mlp, ch03.check_accuracy])
def test_stub_is_not_attempted(check, capsys):
    assert check(stub) is None
    assert "not attempted yet" in capsys.readouterr().out


def test_correct_answers_pass(capsys):
    assert ch03.check_count_trainable(count_ok) is True
    assert ch03.check_count_trainable(lambda m: int(sum(p.numel() * p.requires_grad for p in m.parameters()))) is True
    assert ch03.check_add_lora_to_mlp(add_lora_ok) is True
    assert ch03.check_accuracy(accuracy_ok) is True
    assert ch03.check_accuracy(lambda m, X, y: torch.no_grad()(lambda: (m.eval()(X).argmax(1) == y).double().mean())()
                               ) is True
    assert capsys.readouterr().out.count("passed.") == 5


@pytest.mark.parametrize("wrong,hint", [
    (lambda m: sum(p.numel() for p in m.parameters()), "frozen parameters too"),
    (lambda m: sum(1 for p in m.parameters() if p.requires_grad), "parameter *tensors*"),
    (lambda m: sum(p.numel() for p in m.parameters() if not p.requires_grad), "you counted the frozen"),
    (lambda m: float(count_ok(m)), "return an int"),
    (lambda m: count_ok(m) + 1, "you returned"),
])
def test_count_trainable_wrong_answers(wrong, hint, capsys):
    assert ch03.check_count_trainable(wrong) is False
    assert hint in capsys.readouterr().out


def lora_everywhere(model, r, alpha):
    for i, m in enumerate(model):
        if isinstance(m, nn.Linear):
            model[i] = LoRALinear(m, r=r, alpha=alpha)
    return model


def lora_first_only(model, r, alpha):
    model[0] = LoRALinear(model[0], r=r, alpha=alpha)
    return model


def head_frozen(model, r, alpha):
    model = add_lora_ok(model, r, alpha)
    model[-1].requires_grad_(False)
    return model


def wrong_alpha(model, r, alpha):
    return add_lora_ok(model, r, r)


def no_return(model, r, alpha):
    add_lora_ok(model, r, alpha)


def a_frozen(model, r, alpha):
    model = add_lora_ok(model, r, alpha)
    for m in model:
        if isinstance(m, LoRALinear):
            m.lora_A["default"].requires_grad_(False)
    return model


def changed_output(model, r, alpha):
    model = add_lora_ok(model, r, alpha)
    with torch.no_grad():
        for m in model:
            if isinstance(m, LoRALinear):
                m.lora_B["default"].fill_(0.1)
    return model


def dropped_a_layer(model, r, alpha):
    return nn.Sequential(*[m for m in add_lora_ok(model, r, alpha)][2:])


@pytest.mark.parametrize("wrong,hint", [
    (lora_everywhere, "leave the last layer"),
    (lora_first_only, "some hidden layer is not wrapped"),
    (head_frozen, "head must stay trainable"),
    (wrong_alpha, "use the given rank and alpha"),
    (no_return, "return the model"),
    (a_frozen, "expected"),
    (changed_output, "exactly what it did before"),
    (dropped_a_layer, "linear layers"),
])
def test_add_lora_wrong_answers(wrong, hint, capsys):
    assert ch03.check_add_lora_to_mlp(wrong) is False
    assert hint in capsys.readouterr().out


def train_mode(model, X, y):
    with torch.no_grad():
        return (model(X).argmax(-1) == y).float().mean().item()


def with_graph(model, X, y):
    model.eval()
    return (model(X).softmax(-1).max(-1).values * 0 + (model(X).argmax(-1) == y)).mean()


@pytest.mark.parametrize("wrong,hint", [
    (train_mode, "model.eval()"),
    (lambda m, X, y: 100 * accuracy_ok(m, X, y), "not a percentage"),
    (lambda m, X, y: accuracy_ok(m, X, y) * len(y), "number of correct predictions"),
    (with_graph, "carries a graph"),
    (lambda m, X, y: str(accuracy_ok(m, X, y)), "return a float"),
])
def test_accuracy_wrong_answers(wrong, hint, capsys):
    assert ch03.check_accuracy(wrong) is False
    assert hint in capsys.readouterr().out
