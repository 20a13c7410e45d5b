"""Chapter 03 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import pytest
import torch
from checker_protocol import assert_specific_hint, protocol_tests
from torch import nn

from minilora.course.exercises import ch03
from minilora.layers import LoRALinear


# Exercise 3.1 --------------------------------------------------------------------------------------
def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


COUNT_WRONG = {
    "frozen counted too": lambda m: sum(p.numel() for p in m.parameters()),
    "tensors, not numbers": lambda m: sum(1 for p in m.parameters() if p.requires_grad),
    "the frozen ones": lambda m: sum(p.numel() for p in m.parameters() if not p.requires_grad),
    "a float": lambda m: float(count_trainable(m)),
    "off by one": lambda m: count_trainable(m) + 1,
}


# Exercise 3.2 --------------------------------------------------------------------------------------
def add_lora_to_mlp(model, r, lora_alpha):
    linears = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    for i in linears[:-1]:
        model[i] = LoRALinear(model[i], r=r, lora_alpha=lora_alpha)
    return model


def _lora_everywhere(model, r, lora_alpha):
    for i, m in enumerate(model):
        if isinstance(m, nn.Linear):
            model[i] = LoRALinear(m, r=r, lora_alpha=lora_alpha)
    return model


def _lora_first_only(model, r, lora_alpha):
    model[0] = LoRALinear(model[0], r=r, lora_alpha=lora_alpha)
    return model


def _head_frozen(model, r, lora_alpha):
    model = add_lora_to_mlp(model, r, lora_alpha)
    model[-1].requires_grad_(False)
    return model


def _wrong_alpha(model, r, lora_alpha):
    return add_lora_to_mlp(model, r, r)


def _no_return(model, r, lora_alpha):
    add_lora_to_mlp(model, r, lora_alpha)


def _a_frozen(model, r, lora_alpha):
    model = add_lora_to_mlp(model, r, lora_alpha)
    for m in model:
        if isinstance(m, LoRALinear):
            m.lora_A["default"].requires_grad_(False)
    return model


def _changed_output(model, r, lora_alpha):
    model = add_lora_to_mlp(model, r, lora_alpha)
    with torch.no_grad():
        for m in model:
            if isinstance(m, LoRALinear):
                m.lora_B["default"].weight.fill_(0.1)  # lora_B[name] is an nn.Linear: B is its weight
    return model


def _dropped_a_layer(model, r, lora_alpha):
    return nn.Sequential(*[m for m in add_lora_to_mlp(model, r, lora_alpha)][2:])


ADD_LORA_WRONG = {
    "LoRA on the head too": _lora_everywhere,
    "first layer only": _lora_first_only,
    "head frozen": _head_frozen,
    "alpha = r": _wrong_alpha,
    "no return": _no_return,
    "A frozen": _a_frozen,
    "B not zero": _changed_output,
    "dropped a layer": _dropped_a_layer,
}


# Exercise 3.3 --------------------------------------------------------------------------------------
@torch.no_grad()
def accuracy(model, X, y):
    model.eval()
    return (model(X).argmax(-1) == y).float().mean().item()


def _train_mode(model, X, y):
    with torch.no_grad():
        return (model(X).argmax(-1) == y).float().mean().item()


def _with_graph(model, X, y):
    model.eval()
    return (model(X).softmax(-1).max(-1).values * 0 + (model(X).argmax(-1) == y)).mean()


ACCURACY_WRONG = {
    "train mode": _train_mode,
    "a percentage": lambda m, X, y: 100 * accuracy(m, X, y),
    "a count": lambda m, X, y: accuracy(m, X, y) * len(y),
    "carries a graph": _with_graph,
    "a string": lambda m, X, y: str(accuracy(m, X, y)),
}

CASES = [
    (ch03.check_count_trainable, count_trainable, COUNT_WRONG),
    (ch03.check_add_lora_to_mlp, add_lora_to_mlp, ADD_LORA_WRONG),
    (ch03.check_accuracy, accuracy, ACCURACY_WRONG),
]


test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES, hint_required=True)


@pytest.mark.parametrize("check,solution", [
    (ch03.check_count_trainable, lambda m: int(sum(p.numel() * p.requires_grad for p in m.parameters()))),
    (ch03.check_accuracy,
     lambda m, X, y: torch.no_grad()(lambda: (m.eval()(X).argmax(1) == y).double().mean())()),
], ids=["numel times requires_grad", "a float64 tensor"])
def test_other_correct_answers_pass(check, solution, capsys):
    assert check(solution) is True
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,fragment", [
    (COUNT_WRONG["frozen counted too"], "frozen parameters too"),
    (COUNT_WRONG["tensors, not numbers"], "parameter *tensors*"),
    (COUNT_WRONG["the frozen ones"], "you counted the frozen"),
    (COUNT_WRONG["a float"], "return an int"),
    (COUNT_WRONG["off by one"], "you returned"),
    (ADD_LORA_WRONG["LoRA on the head too"], "leave the last layer"),
    (ADD_LORA_WRONG["first layer only"], "some hidden layer is not wrapped"),
    (ADD_LORA_WRONG["head frozen"], "head must stay trainable"),
    (ADD_LORA_WRONG["alpha = r"], "use the given rank and alpha"),
    (ADD_LORA_WRONG["no return"], "return the model"),
    (ADD_LORA_WRONG["A frozen"], "expected"),
    (ADD_LORA_WRONG["B not zero"], "exactly what it did before"),
    (ADD_LORA_WRONG["dropped a layer"], "linear layers"),
    (ACCURACY_WRONG["train mode"], "model.eval()"),
    (ACCURACY_WRONG["a percentage"], "not a percentage"),
    (ACCURACY_WRONG["a count"], "number of correct predictions"),
    (ACCURACY_WRONG["carries a graph"], "carries a graph"),
    (ACCURACY_WRONG["a string"], "return a float"),
])
def test_hints_are_specific(wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, cases=CASES)
