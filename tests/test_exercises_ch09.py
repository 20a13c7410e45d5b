"""Chapter 09 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import numpy as np
import pytest
import torch
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.exercises import ch09
from minilora.course.models import cached_models


# Exercise 9.1 --------------------------------------------------------------------------------------
def _top(A, i):
    return torch.linalg.svd(A).Vh[:i].T  # (in, i): the top-i right-singular vectors


def phi(A1, A2, i, j):
    V1, V2 = _top(A1, i), _top(A2, j)
    return float((V1.T @ V2).pow(2).sum() / min(i, j))


def phi_numpy(A1, A2, i, j):
    V1 = np.linalg.svd(A1.numpy().astype(np.float64))[2][:i].T
    V2 = np.linalg.svd(A2.numpy().astype(np.float64))[2][:j].T
    return float(np.linalg.norm(V1.T @ V2) ** 2 / min(i, j))


def _left(A1, A2, i, j):
    U1, U2 = torch.linalg.svd(A1).U[:, :i], torch.linalg.svd(A2).U[:, :j]
    return float((U1.T @ U2).pow(2).sum() / min(i, j))


PHI_WRONG = {
    "left-singular vectors": _left,
    "norm not squared": lambda A1, A2, i, j: float(torch.linalg.matrix_norm(_top(A1, i).T @ _top(A2, j)) / min(i, j)),
    "divided by max": lambda A1, A2, i, j: float((_top(A1, i).T @ _top(A2, j)).pow(2).sum() / max(i, j)),
    "not divided": lambda A1, A2, i, j: float((_top(A1, i).T @ _top(A2, j)).pow(2).sum()),
    "all r vectors": lambda A1, A2, i, j: float((_top(A1, min(A1.shape)).T @ _top(A2, min(A2.shape))).pow(2).sum()
                                                / min(i, j)),
    "a tensor": lambda A1, A2, i, j: (_top(A1, i).T @ _top(A2, j)).pow(2).sum() / min(i, j),
    "a list": lambda A1, A2, i, j: [phi(A1, A2, i, j)],
    "the bottom vectors": lambda A1, A2, i, j: float(
        (torch.linalg.svd(A1, full_matrices=False).Vh[-i:] @ torch.linalg.svd(A2, full_matrices=False).Vh[-j:].T)
        .pow(2).sum() / min(i, j)),
}


# Exercise 9.2 --------------------------------------------------------------------------------------
def dora_trainable(shapes, r):
    return sum(r * (d_in + d_out) + d_out for d_out, d_in in shapes)


DORA_WRONG = {
    "no magnitude": lambda shapes, r: sum(r * (i + o) for o, i in shapes),
    "magnitude by in": lambda shapes, r: sum(r * (i + o) + i for o, i in shapes),
    "magnitude once": lambda shapes, r: sum(r * (i + o) for o, i in shapes) + shapes[0][0],
    "full matrix": lambda shapes, r: sum(r * i * o + o for o, i in shapes),
    "a float": lambda shapes, r: float(dora_trainable(shapes, r)),
    "a tensor": lambda shapes, r: torch.tensor(dora_trainable(shapes, r)),
    "forgot r": lambda shapes, r: sum(i + o + o for o, i in shapes),
}


# Exercise 9.3 --------------------------------------------------------------------------------------
def budget_rank(budget, shapes):
    per_rank = sum(d_in + d_out for d_out, d_in in shapes)
    if budget % per_rank:
        raise ValueError(f"no integer rank spends {budget:,} parameters: r * {per_rank:,} would have to equal it.")
    return budget // per_rank


def _divide_by(per_rank, *, check=True, exact=False):
    def answer(budget, shapes):
        total = per_rank(shapes)
        if check and budget % total:
            raise ValueError("not a whole rank")
        return budget / total if exact else budget // total
    return answer


def _raises(error):
    def answer(budget, shapes):
        if budget % sum(i + o for o, i in shapes):
            raise error
        return budget_rank(budget, shapes)
    return answer


def _asserts(budget, shapes):
    total = sum(i + o for o, i in shapes)
    assert budget % total == 0, "no integer rank"
    return budget // total


BUDGET_WRONG = {
    "a float": _divide_by(lambda s: sum(i + o for o, i in s), exact=True),
    "no raise": _divide_by(lambda s: sum(i + o for o, i in s), check=False),
    "rounded": lambda budget, shapes: round(budget / sum(i + o for o, i in shapes)),
    "in * out, raises": _divide_by(lambda s: sum(i * o for o, i in s)),
    "in * out, floor": _divide_by(lambda s: sum(i * o for o, i in s), check=False),
    "in * out, float": _divide_by(lambda s: sum(i * o for o, i in s), check=False, exact=True),
    "only in": _divide_by(lambda s: sum(i for _, i in s)),
    "only out": _divide_by(lambda s: sum(o for o, _ in s)),
    "wrong exception": _raises(ArithmeticError("not a whole rank")),
    "an assert": _asserts,
    "no message": _raises(ValueError()),
    "a tensor": lambda budget, shapes: torch.tensor(budget_rank(budget, shapes)),
}

CASES = [
    (ch09.check_phi, phi, PHI_WRONG),
    (ch09.check_dora_count, dora_trainable, DORA_WRONG),
    (ch09.check_budget_rank, budget_rank, BUDGET_WRONG),
]

test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES, hint_required=True)


@pytest.mark.parametrize("check,wrong,fragment", [
    (ch09.check_phi, PHI_WRONG["left-singular vectors"], "the LEFT-singular vectors"),
    (ch09.check_phi, PHI_WRONG["norm not squared"], "square the Frobenius norm"),
    (ch09.check_phi, PHI_WRONG["divided by max"], "divide by min(i, j), not max(i, j)"),
    (ch09.check_phi, PHI_WRONG["not divided"], "divide ||V1^T V2||_F^2 by min(i, j)"),
    (ch09.check_phi, PHI_WRONG["all r vectors"], "you used all r of them"),
    (ch09.check_phi, PHI_WRONG["a tensor"], "the value is right (0.0249), but it is a tensor"),
    (ch09.check_phi, PHI_WRONG["a list"], "return phi as one number (a Python float), got list"),
    (ch09.check_phi, PHI_WRONG["the bottom vectors"], "expected phi = 0.0249, got 0.0187"),
    (ch09.check_dora_count, DORA_WRONG["no magnitude"], "DoRA also trains a magnitude vector m"),
    (ch09.check_dora_count, DORA_WRONG["magnitude by in"], "one entry per OUTPUT feature"),
    (ch09.check_dora_count, DORA_WRONG["magnitude once"], "not once for the model"),
    (ch09.check_dora_count, DORA_WRONG["full matrix"], "r * in * out per layer, a full matrix"),
    (ch09.check_dora_count, DORA_WRONG["a float"], "the value is right (78,336), but return an int"),
    (ch09.check_dora_count, DORA_WRONG["a tensor"], "as a Python int, got Tensor"),
    (ch09.check_dora_count, DORA_WRONG["forgot r"], "expected 78,336, got 13,824"),
    (ch09.check_budget_rank, BUDGET_WRONG["a float"], "you returned the float 8.0"),
    (ch09.check_budget_rank, BUDGET_WRONG["no raise"], "is not an integer, and you returned 0"),
    (ch09.check_budget_rank, BUDGET_WRONG["rounded"], "is not an integer, and you returned 1"),
    (ch09.check_budget_rank, BUDGET_WRONG["in * out, raises"], "not r * in * out"),
    (ch09.check_budget_rank, BUDGET_WRONG["in * out, floor"], "you divided by sum(in * out)"),
    (ch09.check_budget_rank, BUDGET_WRONG["in * out, float"], "you divided by sum(in * out)"),
    (ch09.check_budget_rank, BUDGET_WRONG["only in"], "not by the sum of one of them"),
    (ch09.check_budget_rank, BUDGET_WRONG["only out"], "not by the sum of one of them"),
    (ch09.check_budget_rank, BUDGET_WRONG["wrong exception"], "you raised ArithmeticError"),
    (ch09.check_budget_rank, BUDGET_WRONG["an assert"], "you raised AssertionError"),
    (ch09.check_budget_rank, BUDGET_WRONG["no message"], "but without a message"),
    (ch09.check_budget_rank, BUDGET_WRONG["a tensor"], "as a Python int, got Tensor"),
])
def test_hints_are_specific(check, wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, check=check)


def test_left_vectors_across_ranks_get_the_hint_not_a_crash(capsys):
    """Past the same-rank cases (where U's values are caught), U of ranks 8 and 64 cannot even be multiplied."""
    def left_unless_same_rank(A1, A2, i, j):
        return phi(A1, A2, i, j) if A1.shape == A2.shape else _left(A1, A2, i, j)

    assert ch09.check_phi(left_unless_same_rank) is False
    out = capsys.readouterr().out
    assert "your function raised RuntimeError" in out and "different ranks (8 and 64)" in out


def test_a_float64_numpy_solution_passes():
    assert ch09.check_phi(phi_numpy) is True


def test_phi_cases_cover_the_extremes_and_float32_is_well_within_the_tolerance():
    cases = ch09._phi_cases()
    values = {what: [] for *_, what in cases}
    for A1, A2, i, j, what in cases:
        want = ch09.subspace_similarity(A1, A2, i, j)
        values[what].append(want)
        assert A1.dtype == A2.dtype == torch.float32
        assert abs(phi(A1, A2, i, j) - want) < ch09.TOL / 10  # float32 is well within the tolerance
    assert values["sharing a subspace"] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert values["orthogonal"] == pytest.approx([0.0, 0.0], abs=1e-9)


def test_minilm_qv_dora_count_is_the_real_injected_count():
    shapes, trainable = ch09.minilm_dora_count()
    assert shapes == [(384, 384)] * 12
    assert trainable == 78_336 == 12 * 8 * (384 + 384) + 12 * 384
    assert dora_trainable(shapes, 8) == trainable


def test_the_fallback_architecture_is_minilms():
    if cached_models()["all-MiniLM-L6-v2"] is None:
        pytest.skip("the MiniLM config is not cached: run `make assets`")
    cached = ch09._minilm_config()
    for key, value in ch09._MINILM_CONFIG.items():
        assert getattr(cached, key) == value, key


def test_the_budget_cases_are_the_chapters():
    assert [budget_rank(b, s) if b % sum(i + o for o, i in s) == 0 else None for b, s, _ in ch09.BUDGET_CASES] \
        == [8, 4, 2, 3, None]
    with pytest.raises(ValueError):
        budget_rank(ch09.MINILM_BUDGET, ch09.BUDGET_CASES[-1][1])
