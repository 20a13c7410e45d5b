"""Chapter 06 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import math

import pytest
import torch
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.exercises import ch06


# Exercise 6.1 --------------------------------------------------------------------------------------
def stacked_delta(layer, names):
    return sum(layer.scaling[n] * layer.lora_B[n].weight @ layer.lora_A[n].weight for n in names)


STACKED_WRONG = {
    "transposed": lambda layer, names: stacked_delta(layer, names).T,
    "no scaling": lambda layer, names: sum(layer.lora_B[n].weight @ layer.lora_A[n].weight for n in names),
    "first scaling only": lambda layer, names: layer.scaling[names[0]] * sum(
        layer.lora_B[n].weight @ layer.lora_A[n].weight for n in names),
    "every adapter": lambda layer, names: stacked_delta(layer, layer.adapters),
    "first name only": lambda layer, names: stacked_delta(layer, names[:1]),
    "a list": lambda layer, names: stacked_delta(layer, names).tolist(),
    "mean instead of sum": lambda layer, names: stacked_delta(layer, names) / len(names),
}


# Exercise 6.2 --------------------------------------------------------------------------------------
def concat_merge(As, Bs, scalings, weights):
    A = torch.cat([w * s * a for a, s, w in zip(As, scalings, weights)])
    return A, torch.cat(Bs, dim=1)


def _peft_linear(As, Bs, s, w):
    """PEFT's "linear": sum the square-root-weighted A's and B's separately (cross terms)."""
    A = sum(math.copysign(math.sqrt(abs(wi * si)), wi * si) * a for a, si, wi in zip(As, s, w))
    B = sum(math.sqrt(abs(wi * si)) * b for b, si, wi in zip(Bs, s, w))
    return A, B


CONCAT_WRONG = {
    "weights twice": lambda As, Bs, s, w: (torch.cat([wi * si * a for a, si, wi in zip(As, s, w)]),
                                           torch.cat([wi * b for b, wi in zip(Bs, w)], dim=1)),
    "no weights": lambda As, Bs, s, w: concat_merge(As, Bs, s, [1.0] * len(w)),
    "no scalings": lambda As, Bs, s, w: concat_merge(As, Bs, [1.0] * len(s), w),
    "cat on the wrong dim": lambda As, Bs, s, w: (torch.cat(As, dim=1), torch.cat(Bs, dim=0)),
    "peft linear (cross terms)": _peft_linear,
    "one tensor": lambda As, Bs, s, w: concat_merge(As, Bs, s, w)[0],
}


# Exercise 6.3 --------------------------------------------------------------------------------------
def linear_merge(As, Bs, scalings, weights):
    """PEFT's "linear": the sign of w_i s_i on A, the square root of its size on both factors."""
    c = [math.copysign(math.sqrt(abs(w * s)), w * s) for s, w in zip(scalings, weights)]
    return sum(ci * a for ci, a in zip(c, As)), sum(abs(ci) * b for ci, b in zip(c, Bs))


def linear_merge_sign_on_b(As, Bs, scalings, weights):
    c = [math.copysign(math.sqrt(abs(w * s)), w * s) for s, w in zip(scalings, weights)]
    return sum(abs(ci) * a for ci, a in zip(c, As)), sum(ci * b for ci, b in zip(c, Bs))


LINEAR_WRONG = {
    "exact (cat)": concat_merge,
    "weights squared": lambda As, Bs, s, w: (sum(wi * si * a for a, si, wi in zip(As, s, w)),
                                             sum(wi * si * b for b, si, wi in zip(Bs, s, w))),
    "sign on both": lambda As, Bs, s, w: (sum(math.sqrt(abs(wi * si)) * a for a, si, wi in zip(As, s, w)),
                                          sum(math.sqrt(abs(wi * si)) * b for b, si, wi in zip(Bs, s, w))),
    "no scalings": lambda As, Bs, s, w: linear_merge(As, Bs, [1.0] * len(s), w),
    "concatenated": lambda As, Bs, s, w: (torch.cat(As), torch.cat(Bs, dim=1)),
    "one tensor": lambda As, Bs, s, w: linear_merge(As, Bs, s, w)[0],
}


# Exercise 6.4 --------------------------------------------------------------------------------------
def peft_keys(path, is_embedding):
    if is_embedding:
        return f"base_model.model.{path}.lora_embedding_A", f"base_model.model.{path}.lora_embedding_B"
    return f"base_model.model.{path}.lora_A.weight", f"base_model.model.{path}.lora_B.weight"


KEYS_WRONG = {
    "with the adapter name": lambda p, e: tuple(k.replace("lora_A", "lora_A.default")
                                                .replace("lora_B", "lora_B.default")
                                                for k in peft_keys(p, e)),
    "no prefix": lambda p, e: tuple(k.removeprefix("base_model.model.") for k in peft_keys(p, e)),
    "B first": lambda p, e: peft_keys(p, e)[::-1],
    ".weight on embeddings": lambda p, e: (f"base_model.model.{p}.lora_embedding_A.weight",
                                           f"base_model.model.{p}.lora_embedding_B.weight") if e else peft_keys(p, e),
    "embedding names everywhere": lambda p, e: peft_keys(p, True),
    "no .weight": lambda p, e: tuple(k.removesuffix(".weight") for k in peft_keys(p, e)),
    "one string": lambda p, e: peft_keys(p, e)[0],
}

CASES = [
    (ch06.check_stacked_delta, stacked_delta, STACKED_WRONG),
    (ch06.check_concat_merge, concat_merge, CONCAT_WRONG),
    (ch06.check_linear_merge, linear_merge, LINEAR_WRONG),
    (ch06.check_peft_keys, peft_keys, KEYS_WRONG),
]


test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES, hint_required=True)


@pytest.mark.parametrize("wrong,fragment", [
    (STACKED_WRONG["transposed"], "not A.T @ B.T"),
    (STACKED_WRONG["no scaling"], "by its own scaling"),
    (STACKED_WRONG["first scaling only"], "each adapter has its own scaling"),
    (STACKED_WRONG["every adapter"], "sum only the adapters in `names`"),
    (STACKED_WRONG["first name only"], "not just the first"),
    (CONCAT_WRONG["weights twice"], "applied twice"),
    (CONCAT_WRONG["no weights"], "forgot the weights"),
    (CONCAT_WRONG["no scalings"], "forgot each adapter's scaling"),
    (CONCAT_WRONG["cat on the wrong dim"], "stack the A's"),
    (CONCAT_WRONG["peft linear (cross terms)"], "stack the A's"),
    (LINEAR_WRONG["exact (cat)"], "that is 'cat'"),
    (LINEAR_WRONG["weights squared"], "weight each factor by the square root"),
    (LINEAR_WRONG["sign on both"], "a negative weight must stay negative"),
    (LINEAR_WRONG["no scalings"], "you forgot each adapter's scaling"),
    (LINEAR_WRONG["concatenated"], "that is 'cat'"),
    (linear_merge_sign_on_b, "PEFT puts the sign of w_i s_i on the A side"),
    (KEYS_WRONG["with the adapter name"], "PEFT strips it"),
    (KEYS_WRONG["no prefix"], "base_model.model."),
    (KEYS_WRONG["B first"], "A first, then B"),
    (KEYS_WRONG[".weight on embeddings"], "no '.weight' after them"),
    (KEYS_WRONG["embedding names everywhere"], "is a linear layer"),
    (KEYS_WRONG["no .weight"], "end in '.weight'"),
])
def test_hints_are_specific(wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, cases=CASES, check=ch06.check_linear_merge)


def test_the_linear_merge_solution_is_what_the_library_and_peft_compute():
    """The exercise's formula is minilora's add_weighted_adapter "linear" (itself checked against PEFT)."""
    from torch import nn

    import minilora as ml

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    for name, alpha in (("p", 4), ("q", 1)):
        ml.add_adapter(model, name, ml.LoRAConfig(r=3, lora_alpha=alpha, target_modules=["0"]))
        with torch.no_grad():
            model[0].lora_B[name].weight.normal_()
    ml.add_weighted_adapter(model, ["p", "q"], [0.7, -0.4], "lin", combination_type="linear")
    layer = model[0]
    A, B = linear_merge([layer.factors(n)[0] for n in "pq"], [layer.factors(n)[1] for n in "pq"],
                        [layer.scaling[n] for n in "pq"], [0.7, -0.4])
    torch.testing.assert_close(layer.get_delta_weight("lin"), (B @ A).detach(), atol=1e-6, rtol=0)
    assert ch06.check_linear_merge(linear_merge_sign_on_b) is False  # the cross terms change with the sign's side
