"""Checkers for chapter 14: does LoRA match full fine-tuning?

* 14.1 ``count_intruders(W, W_merged, top_k, threshold_epsilon)``: how many of ``W_merged``'s top-k left singular
  vectors have a largest |cosine| below the threshold with every left singular vector of ``W``.
* 14.2 ``lr_ratio(rows, lora, full)``: from a sweep table (rows with ``configuration``, ``lr``, ``seed``,
  ``validation_accuracy``), each configuration's learning rate with the best *mean* validation accuracy, and
  the ratio of LoRA's to full fine-tuning's.
* 14.3 ``mlp_rank_for_budget(budget, d_model, d_ff, n_layers)``: the rank of LoRA on the MLP alone (gate, up,
  down) whose trainable count is closest to ``budget``.
* 14.4 ``departure_step(steps, mean, std, full_mean, full_std)``: the first step from which a loss curve stays
  above full fine-tuning's, by more than the two standard deviations together, to the end (None if it never does).
"""
from __future__ import annotations

import statistics

import torch

from ...intruders import intruder_dimensions
from ._core import Hint, checker

__all__ = ["check_count_intruders", "check_lr_ratio", "check_mlp_rank_for_budget", "check_departure_step"]


def _pair(seed: int, out: int, inp: int, planted: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(out, out, generator=g))
    V, _ = torch.linalg.qr(torch.randn(inp, inp, generator=g))
    k = min(out, inp) - planted
    W = U[:, :k] @ torch.diag(torch.linspace(2, 1, k)) @ V[:, :k].T
    delta = sum(6 * torch.outer(U[:, out - 1 - j], V[:, j]) for j in range(planted))
    return W, W + 0.05 * torch.randn(out, inp, generator=g) + delta


@checker("Exercise 14.1: count intruders")
def check_count_intruders(fn) -> None:
    """``fn(W, W_merged, top_k, threshold_epsilon)`` must count what ``intruders.intruder_dimensions`` finds."""
    for seed, (out, inp, planted) in enumerate(((12, 10, 1), (16, 16, 2), (20, 12, 0), (10, 14, 3))):
        W, W_merged = _pair(seed, out, inp, planted)
        for top_k, eps in ((3, 0.5), (8, 0.5), (8, 0.9)):
            got = fn(W, W_merged, top_k, eps)
            want = len(intruder_dimensions(W, W_merged, top_k, eps)[0])
            if isinstance(got, bool) or not isinstance(got, int):
                raise Hint(f"return a whole number (a count), got {got!r}.")
            if got == want:
                continue
            case = f"for a {out} x {inp} pair with top_k={top_k} and threshold {eps}"
            everywhere = int((intruder_dimensions(W, W_merged, top_k, eps)[1] < eps).sum())
            if got > top_k or got == everywhere:
                raise Hint(f"{case} you counted {got}: look only at the top_k singular vectors of W_merged (the "
                           "strongest directions), not at all of them.")
            raise Hint(f"{case} the answer is {want}, you counted {got}. Take U from torch.linalg.svd of each matrix "
                       "(full_matrices=False), then for each of W_merged's first top_k columns the largest "
                       "|cosine| with any of W's columns: (U_merged.T @ U_base).abs().max(dim=1).")


def _best(rows: list[dict], configuration: str) -> float:
    by_lr: dict[float, list[float]] = {}
    for r in rows:
        if r["configuration"] == configuration:
            by_lr.setdefault(float(r["lr"]), []).append(float(r["validation_accuracy"]))
    return max(by_lr, key=lambda lr: statistics.mean(by_lr[lr]))


def _tables() -> list[list[dict]]:
    def table(lora: dict[float, list[float]], full: dict[float, list[float]]) -> list[dict]:
        return [{"configuration": c, "lr": lr, "seed": s, "validation_accuracy": acc}
                for c, grid in (("LoRA", lora), ("full", full)) for lr, accs in grid.items()
                for s, acc in enumerate(accs)]
    return [
        table({1e-3: [0.7, 0.7, 0.7], 5e-3: [0.8, 0.8, 0.8], 1e-2: [0.6, 0.6, 0.6]},
              {1e-4: [0.7, 0.7, 0.7], 2e-4: [0.9, 0.9, 0.9], 5e-4: [0.8, 0.8, 0.8]}),
        # the best single run is not the best mean: a seed's luck must not choose the rate
        table({1e-3: [0.95, 0.60, 0.60], 2e-3: [0.80, 0.80, 0.80]}, {1e-4: [0.85, 0.85, 0.85], 5e-4: [0.90, 0.5, 0.5]}),
    ]


@checker("Exercise 14.2: the learning-rate ratio")
def check_lr_ratio(fn) -> None:
    """``fn(rows, lora, full)`` must return the ratio of the two configurations' best-mean learning rates."""
    for rows in _tables():
        got = fn(rows, "LoRA", "full")
        want = _best(rows, "LoRA") / _best(rows, "full")
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise Hint(f"return a number, got {type(got).__name__}.")
        if abs(got - want) < 1e-9 * want:
            continue
        if abs(got * want - 1) < 1e-9:
            raise Hint("you returned full / LoRA: the ratio is LoRA's best rate over full fine-tuning's.")
        best_run = {c: float(max((r for r in rows if r["configuration"] == c),
                                 key=lambda r: r["validation_accuracy"])["lr"]) for c in ("LoRA", "full")}
        if abs(got - best_run["LoRA"] / best_run["full"]) < 1e-12:
            raise Hint("you chose the rate of the single best run. Average each rate's validation accuracy over the "
                       "seeds first, then take the rate with the best mean.")
        raise Hint(f"the ratio for this table is {want:g}; you returned {got:g}.")


@checker("Exercise 14.3: the MLP's rank at an equal budget")
def check_mlp_rank_for_budget(fn) -> None:
    """``fn(budget, d_model, d_ff, n_layers)`` = the r minimising |3 r (d_model + d_ff) n_layers - budget|."""
    cases = ((2_442_240, 576, 1536, 30), (4_194_304, 4096, 11008, 32), (100_000, 64, 256, 4), (5_000, 64, 256, 4))
    for budget, d, ff, layers in cases:
        per_rank = 3 * (d + ff) * layers
        want = max(1, round(budget / per_rank))
        got = fn(budget, d, ff, layers)
        if isinstance(got, bool) or not isinstance(got, int):
            raise Hint(f"return a whole rank, got {got!r}.")
        if got == want:
            continue
        case = f"for a budget of {budget:,} with d_model={d}, d_ff={ff}, {layers} layers"
        if got == max(1, round(budget / (2 * (d + ff) * layers))):
            raise Hint(f"{case} you counted two matrices per layer; SmolLM2's and Llama's MLP has three: gate_proj and "
                       "up_proj (d_model -> d_ff) and down_proj (d_ff -> d_model).")
        if got == budget // per_rank and got != want:
            raise Hint(f"{case} you rounded down; take the rank whose count is closest to the budget.")
        raise Hint(f"{case} each rank costs 3 (d_model + d_ff) numbers per layer; the answer is r={want}, not {got}.")


def _departure(steps, mean, std, full_mean, full_std):
    above = [m - f > s + fs for m, s, f, fs in zip(mean, std, full_mean, full_std)]
    for i in range(len(steps)):
        if all(above[i:]):
            return steps[i]
    return None


_CURVES = [  # (steps, mean, std, full_mean, full_std): each catches one mistake
    ([1, 2, 4, 8, 16], [0.9, 0.7, 0.5, 0.40, 0.35], [0.01] * 5, [0.9, 0.7, 0.5, 0.30, 0.20], [0.01] * 5),  # leaves at 8
    ([1, 2, 4, 8, 16], [0.9, 0.8, 0.5, 0.40, 0.35], [0.01] * 5, [0.9, 0.7, 0.5, 0.30, 0.20], [0.01] * 5),  # 2, then 8
    ([1, 2, 4, 8, 16], [0.9, 0.7, 0.52, 0.31, 0.22], [0.02] * 5, [0.9, 0.7, 0.5, 0.30, 0.20], [0.02] * 5),  # never
    ([1, 2, 4, 8], [0.8, 0.6, 0.45, 0.42], [0.05, 0.04, 0.03, 0.01], [0.8, 0.6, 0.40, 0.30], [0.05, 0.04, 0.03, 0.01]),
    ([1, 2, 4, 8], [0.8, 0.5, 0.3, 0.2], [0.01] * 4, [0.8, 0.6, 0.4, 0.3], [0.01] * 4),  # below: never leaves above
]


@checker("Exercise 14.4: where a curve leaves full fine-tuning's")
def check_departure_step(fn) -> None:
    """``fn(steps, mean, std, full_mean, full_std)`` = the first step from which mean - full_mean > std + full_std
    holds at every later point, or None."""
    for steps, mean, std, full_mean, full_std in _CURVES:
        want = _departure(steps, mean, std, full_mean, full_std)
        got = fn(list(steps), list(mean), list(std), list(full_mean), list(full_std))
        if got == want and (got is None) == (want is None):
            continue
        case = f"for the curve {mean} against full fine-tuning's {full_mean} at steps {steps}"
        first_above = next((s for s, m, d, f, fd in zip(steps, mean, std, full_mean, full_std) if m - f > d + fd), None)
        if want is not None and got == steps.index(want):
            raise Hint(f"{case} you returned the position {got}; return the step itself, {want}.")
        if got == first_above and got != want:
            raise Hint(f"{case} you returned the first step above ({got}), but the curve comes back later: the step "
                       "must start a run that stays above to the end.")
        no_std = _departure(steps, mean, [0] * len(std), full_mean, [0] * len(full_std))
        if got == no_std:
            raise Hint(f"{case} a gap smaller than the two standard deviations together is within the seeds' "
                       "spread: count a point as above only when mean - full_mean > std + full_std.")
        raise Hint(f"{case} the answer is {want}, you returned {got!r}.")
