r"""Merging task tensors: task arithmetic, magnitude pruning, TIES and DARE (chapter 11).

Pure functions on tensors, with the names, signatures and results of PEFT's
``peft.utils.merge_utils``. A *task tensor* is what fine-tuning added to a weight,
:math:`\tau = \theta_{ft} - \theta_{pre}` (Ilharco et al. 2023); a LoRA adapter is a low-rank one,
:math:`\tau = sBA`. ``task_tensors`` is a list of same-shaped tensors, one per task, and ``weights`` a
1-D tensor of one weight per task.

* **Task arithmetic:** :math:`\tau = \sum_t w_t \tau_t`. A negative weight *subtracts* a task.
* **Magnitude pruning:** keep the ``density`` fraction of each :math:`\tau_t`'s entries with the
  largest magnitude, zero the rest, then task arithmetic.
* **TIES** (Yadav et al. 2023), three steps: (1) *trim* each :math:`\tau_t` to its top ``density``
  entries by magnitude; (2) *elect* a sign per entry: the sign of :math:`\sum_t \tau_t` ("total")
  or of :math:`\sum_t \mathrm{sign}(\tau_t)` ("frequency"), ties going to +; (3) *disjoint mean*: the
  mean over the tasks whose entry has the elected sign, of :math:`w_t \tau_t`. As in PEFT, the sign is
  elected on the trimmed tensors **before** the weights are applied, so a negative weight flips a
  task's contribution but not its vote.
* **DARE** (Yu et al. 2023): drop each entry with probability :math:`p = 1 - \text{density}` and
  rescale the survivors by :math:`1/(1-p)`, so that the expectation of every entry is unchanged;
  then task arithmetic (``dare_linear``) or TIES' sign election and disjoint mean (``dare_ties``).
  The drop uses PyTorch's global random generator, as PEFT does: seed it for reproducible merges.

``density`` must be in (0, 1]; 1 keeps every entry. ``combine_factors`` applies these to the A and B
factors of LoRA adapters, or to their :math:`\Delta W` followed by an SVD truncation, as PEFT's
``add_weighted_adapter`` does; ``minilora.adapters.add_weighted_adapter`` calls it.
"""
from __future__ import annotations

from typing import Literal

import torch

from .utils import check_number

# PEFT's merge_utils names (the pruning and sign steps too, which chapter 11 takes apart), then the merges.
__all__ = ["reshape_weight_task_tensors", "magnitude_based_pruning", "random_pruning", "prune",
           "calculate_majority_sign_mask", "disjoint_merge", "task_arithmetic", "magnitude_prune", "ties",
           "dare_linear", "dare_ties"]

#: TIES' two ways to elect a sign (``majority_sign_method``).
MAJORITY_SIGN_METHODS = ("total", "frequency")


def check_density(density: float) -> float:
    """``density`` as a float in (0, 1]; else ``TypeError`` (not a number) or ``ValueError`` (out of
    range). Shared with ``task_vectors`` and ``adapters.add_weighted_adapter``."""
    return check_number(density, "density", low=0, high=1, low_open=True,
                        hint="It is the fraction of entries to keep: 1 keeps everything; TIES' paper trims to 0.2, "
                             "DARE drops up to 0.9 (density 0.1).")


def _check_tasks(task_tensors, weights: torch.Tensor) -> None:
    if len(task_tensors) == 0:
        raise ValueError("task_tensors is empty: give one tensor per task.")
    if weights.dim() != 1 or weights.numel() != len(task_tensors):
        raise ValueError(f"weights must be a 1-D tensor with one weight per task tensor: {len(task_tensors)} task "
                         f"tensors, weights of shape {tuple(weights.shape)}.")
    shapes = {tuple(t.shape) for t in task_tensors}
    if len(shapes) > 1:
        raise ValueError(f"task tensors must all have the same shape, got {sorted(shapes)}.")


def reshape_weight_task_tensors(task_tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``weights`` (T,) viewed as (T, 1, ..., 1), to broadcast against stacked ``task_tensors`` (T, ...)."""
    return weights.view(weights.shape + (1,) * (task_tensors.dim() - weights.dim()))


def magnitude_based_pruning(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density * numel)`` entries of largest magnitude, zero the others."""
    mask = torch.zeros_like(tensor).reshape(-1)
    k = int(density * tensor.numel())
    mask[torch.topk(tensor.abs().reshape(-1), k=k, largest=True).indices] = 1
    return tensor * mask.reshape(tensor.shape)


def random_pruning(tensor: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """Keep each entry with probability ``density`` (a Bernoulli mask); with ``rescale``, divide the
    survivors by ``density`` so that the expectation is unchanged (DARE)."""
    mask = torch.bernoulli(torch.full_like(input=tensor, fill_value=density))
    pruned = tensor * mask
    return pruned / density if rescale else pruned


def prune(tensor: torch.Tensor, density: float, method: Literal["magnitude", "random"],
          rescale: bool = False) -> torch.Tensor:
    """Prune ``tensor`` to ``density`` by ``method``: "magnitude" (top-k, TIES' trim) or "random" (DARE)."""
    density = check_density(density)
    if method not in ("magnitude", "random"):
        raise ValueError(f"method must be 'magnitude' or 'random', got {method!r}.")
    if density == 1:
        return tensor
    if method == "magnitude":
        return magnitude_based_pruning(tensor, density)
    return random_pruning(tensor, density, rescale=rescale)


def calculate_majority_sign_mask(tensor: torch.Tensor,
                                 method: Literal["total", "frequency"] = "total") -> torch.Tensor:
    """For task tensors stacked on dim 0, True where an entry has the elected sign: the sign of the sum
    of the entries ("total": mass decides) or of the sum of their signs ("frequency": a vote); 0 counts as +."""
    if method not in MAJORITY_SIGN_METHODS:
        raise ValueError(f"majority_sign_method must be one of {MAJORITY_SIGN_METHODS}, got {method!r}.")
    sign = tensor.sign()
    votes = tensor.sum(dim=0) if method == "total" else sign.sum(dim=0)
    return sign == torch.where(votes >= 0, 1, -1)


def disjoint_merge(task_tensors: torch.Tensor, majority_sign_mask: torch.Tensor) -> torch.Tensor:
    """Mean, entry by entry, over the tasks that agree with the elected sign (0 where none does)."""
    summed = (task_tensors * majority_sign_mask).sum(dim=0)
    return summed / torch.clamp(majority_sign_mask.sum(dim=0), min=1.0)


def _weighted_sum(task_tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (task_tensors * reshape_weight_task_tensors(task_tensors, weights)).sum(dim=0)


def task_arithmetic(task_tensors: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """:math:`\\sum_t w_t \\tau_t`."""
    _check_tasks(task_tensors, weights)
    return _weighted_sum(torch.stack(task_tensors, dim=0), weights)


def magnitude_prune(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float) -> torch.Tensor:
    """Each task tensor trimmed to its top ``density`` by magnitude, then :math:`\\sum_t w_t \\tau_t`."""
    _check_tasks(task_tensors, weights)
    trimmed = torch.stack([prune(t, density, method="magnitude") for t in task_tensors], dim=0)
    return _weighted_sum(trimmed, weights)


def ties(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float,
         majority_sign_method: Literal["total", "frequency"] = "total") -> torch.Tensor:
    """TIES: trim (top ``density`` by magnitude), elect the sign (on the unweighted trimmed tensors),
    disjoint mean of the weighted tensors that agree with it."""
    _check_tasks(task_tensors, weights)
    trimmed = torch.stack([prune(t, density, method="magnitude") for t in task_tensors], dim=0)
    elected = calculate_majority_sign_mask(trimmed, method=majority_sign_method)
    return disjoint_merge(trimmed * reshape_weight_task_tensors(trimmed, weights), elected)


def dare_linear(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float) -> torch.Tensor:
    """DARE: drop with probability 1 - ``density``, rescale by 1 / ``density``, then :math:`\\sum_t w_t \\tau_t`."""
    _check_tasks(task_tensors, weights)
    dropped = torch.stack([prune(t, density, method="random", rescale=True) for t in task_tensors], dim=0)
    return _weighted_sum(dropped, weights)


def dare_ties(task_tensors: list[torch.Tensor], weights: torch.Tensor, density: float,
              majority_sign_method: Literal["total", "frequency"] = "total") -> torch.Tensor:
    """DARE's random drop and rescale, then TIES' sign election and disjoint mean."""
    _check_tasks(task_tensors, weights)
    dropped = torch.stack([prune(t, density, method="random", rescale=True) for t in task_tensors], dim=0)
    elected = calculate_majority_sign_mask(dropped, method=majority_sign_method)
    return disjoint_merge(dropped * reshape_weight_task_tensors(dropped, weights), elected)


_MERGES = {"ties": ties, "dare_linear": dare_linear, "dare_ties": dare_ties, "magnitude_prune": magnitude_prune}


def _merge(kind: str, tensors: list, weights: list, density: float, sign_method: str, dtype) -> torch.Tensor:
    """``<kind>`` of ``tensors``. The exact types run in float64; the pruning ones in the adapters'
    own ``dtype``, as PEFT does, so that DARE's random drop draws what PEFT draws for the same seed."""
    if kind in ("linear", "svd"):
        return task_arithmetic(tensors, torch.tensor(weights, dtype=tensors[0].dtype))
    tensors = [t.to(dtype) for t in tensors]
    args = (tensors, torch.tensor(weights, dtype=dtype), density)
    out = _MERGES[kind](*args, sign_method) if kind in ("ties", "dare_ties") else _MERGES[kind](*args)
    return out.double()


def combine_factors(combination_type: str, parts: list, rank: int, density: float | None = None,
                    sign_method: str = "total", dtype=torch.float32,
                    transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The factors A (rank, in) and B (out, rank) of an adapter combining ``parts`` = [(w, A, B, s), ...]
    (weight, factors and scaling of each input adapter, in float64), by ``add_weighted_adapter``'s
    ``combination_type`` (minilora.adapters); returned in float64. The "..._svd" types merge the
    :math:`\Delta W` in the layout of the layer's weight, as PEFT does: ``transpose`` says it is
    :math:`(BA)^T` (an embedding table, a Conv1D layer)."""
    if combination_type == "cat":
        A = torch.cat([w * s * A for w, A, B, s in parts])
        B = torch.cat([B for w, A, B, s in parts], dim=1)
        pad = rank - A.shape[0]  # in a layer that some input adapter does not adapt
        return torch.cat([A, A.new_zeros(pad, A.shape[1])]), torch.cat([B, B.new_zeros(B.shape[0], pad)], dim=1)
    if combination_type == "svd" or combination_type.endswith("_svd"):  # merge the ΔW's, then truncate
        kind = combination_type.removesuffix("_svd")
        deltas = [s * (B @ A) for _, A, B, s in parts]
        deltas = [d.T for d in deltas] if transpose else deltas
        delta = _merge(kind, deltas, [w for w, *_ in parts], density, sign_method, dtype)
        delta = delta.T if transpose else delta
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
        return Vh[:rank], U[:, :rank] * S[:rank]
    # merge the A's and the B's separately, each with sqrt(|w s|) (the sign of w s on A only)
    root = [abs(w * s) ** 0.5 for w, _, _, s in parts]
    signed = [r if w * s >= 0 else -r for r, (w, _, _, s) in zip(root, parts)]
    return (_merge(combination_type, [A for _, A, _, _ in parts], signed, density, sign_method, dtype),
            _merge(combination_type, [B for _, _, B, _ in parts], root, density, sign_method, dtype))
