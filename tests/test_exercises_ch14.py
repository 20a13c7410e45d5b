"""Chapter 14 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import statistics

import pytest
import torch
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.exercises import ch14


# Exercise 14.1 --------------------------------------------------------------------------------------
def count_intruders(W, W_merged, top_k, eps):
    U_base = torch.linalg.svd(W, full_matrices=False)[0]
    U_merged = torch.linalg.svd(W_merged, full_matrices=False)[0]
    best = (U_merged.T @ U_base).abs().max(dim=1).values
    return int((best[:top_k] < eps).sum())


def every_direction(W, W_merged, top_k, eps):
    U_base = torch.linalg.svd(W, full_matrices=False)[0]
    U_merged = torch.linalg.svd(W_merged, full_matrices=False)[0]
    return int(((U_merged.T @ U_base).abs().max(dim=1).values < eps).sum())


INTRUDER_WRONG = {
    "all directions": every_direction,
    "right singular vectors": lambda W, Wm, k, e: int(((torch.linalg.svd(Wm, full_matrices=False)[2] @
                                                       torch.linalg.svd(W, full_matrices=False)[2].T)
                                                      .abs().max(dim=1).values[:k] < e).sum()),
    "a float": lambda W, Wm, k, e: float(count_intruders(W, Wm, k, e)),
}


# Exercise 14.2 --------------------------------------------------------------------------------------
def lr_ratio(rows, lora, full):
    def best(configuration):
        by_lr = {}
        for r in rows:
            if r["configuration"] == configuration:
                by_lr.setdefault(r["lr"], []).append(r["validation_accuracy"])
        return max(by_lr, key=lambda lr: statistics.mean(by_lr[lr]))
    return best(lora) / best(full)


def best_run_ratio(rows, lora, full):
    def best(c):
        return max((r for r in rows if r["configuration"] == c), key=lambda r: r["validation_accuracy"])["lr"]
    return best(lora) / best(full)


RATIO_WRONG = {
    "inverted": lambda rows, lora, full: 1 / lr_ratio(rows, lora, full),
    "best single run": best_run_ratio,
    "a string": lambda rows, lora, full: "ten",
}


# Exercise 14.3 --------------------------------------------------------------------------------------
def mlp_rank_for_budget(budget, d_model, d_ff, n_layers):
    return max(1, round(budget / (3 * (d_model + d_ff) * n_layers)))


RANK_WRONG = {
    "two matrices": lambda b, d, ff, n: max(1, round(b / (2 * (d + ff) * n))),
    "rounded down": lambda b, d, ff, n: b // (3 * (d + ff) * n),
    "a float": lambda b, d, ff, n: b / (3 * (d + ff) * n),
}

# Exercise 14.4 --------------------------------------------------------------------------------------
def departure_step(steps, mean, std, full_mean, full_std):
    above = [m - f > s + fs for m, s, f, fs in zip(mean, std, full_mean, full_std)]
    return next((steps[i] for i in range(len(steps)) if all(above[i:])), None)


def first_above(steps, mean, std, full_mean, full_std):
    return next((s for s, m, d, f, fd in zip(steps, mean, std, full_mean, full_std) if m - f > d + fd), None)


DEPARTURE_WRONG = {
    "an index": lambda steps, *rest: (None if departure_step(steps, *rest) is None
                                      else steps.index(departure_step(steps, *rest))),
    "first above": first_above,
    "no spread": lambda steps, mean, std, fm, fs: departure_step(steps, mean, [0] * len(std), fm, [0] * len(fs)),
}

CASES = [
    (ch14.check_count_intruders, count_intruders, INTRUDER_WRONG),
    (ch14.check_lr_ratio, lr_ratio, RATIO_WRONG),
    (ch14.check_mlp_rank_for_budget, mlp_rank_for_budget, RANK_WRONG),
    (ch14.check_departure_step, departure_step, DEPARTURE_WRONG),
]

test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES, hint_required=True)


@pytest.mark.parametrize("check,wrong,fragment", [
    (ch14.check_count_intruders, INTRUDER_WRONG["all directions"], "only at the top_k"),
    (ch14.check_count_intruders, INTRUDER_WRONG["right singular vectors"], "Take U from torch.linalg.svd"),
    (ch14.check_count_intruders, INTRUDER_WRONG["a float"], "whole number"),
    (ch14.check_lr_ratio, RATIO_WRONG["inverted"], "full / LoRA"),
    (ch14.check_lr_ratio, RATIO_WRONG["best single run"], "single best run"),
    (ch14.check_lr_ratio, RATIO_WRONG["a string"], "return a number"),
    (ch14.check_mlp_rank_for_budget, RANK_WRONG["two matrices"], "two matrices per layer"),
    (ch14.check_mlp_rank_for_budget, RANK_WRONG["rounded down"], "rounded down"),
    (ch14.check_mlp_rank_for_budget, RANK_WRONG["a float"], "whole rank"),
    (ch14.check_departure_step, DEPARTURE_WRONG["an index"], "return the step itself"),
    (ch14.check_departure_step, DEPARTURE_WRONG["first above"], "comes back later"),
    (ch14.check_departure_step, DEPARTURE_WRONG["no spread"], "two standard deviations"),
])
def test_hints_are_specific(check, wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, check=check)
