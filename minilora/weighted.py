r"""Weighted combinations of adapters: ``add_weighted_adapter`` and ``combination_report``.  (Chapters 06 and 11)

``add_weighted_adapter`` builds a new adapter from the weighted adapters, with PEFT's
``combination_type``s. The target is :math:`\Delta W = \sum_i w_i \Delta W_i`; the new adapter has
``lora_alpha = r``, so its scaling is 1:

* ``"cat"`` is exact. It concatenates along the rank: :math:`A = [w_1 s_1 A_1; w_2 s_2 A_2; \dots]`,
  :math:`B = [B_1, B_2, \dots]`, so :math:`BA = \sum_i w_i s_i B_i A_i`; the rank is :math:`\sum_i r_i`.
* ``"svd"`` keeps the best rank-``svd_rank`` approximation of that exact sum (Eckart-Young): with
  :math:`\Delta W = U \Sigma V^T`, :math:`B = U_k \Sigma_k`, :math:`A = V_k^T` (``svd_rank`` defaults
  to the largest rank of the inputs).
* ``"linear"`` averages the factors separately: :math:`A = \sum_i \sqrt{w_i s_i} A_i`,
  :math:`B = \sum_i \sqrt{w_i s_i} B_i` (the sign of :math:`w_i s_i` on A only). Then
  :math:`BA = \sum_i w_i s_i B_i A_i + \sum_{i \ne j} \sqrt{w_i s_i w_j s_j} B_i A_j`: the cross terms
  make it inexact for two or more adapters. All ranks must be equal. It is cheap, and exact for one.

The task-merging types of chapter 11 (``minilora.merging``: TIES, DARE, magnitude pruning) are
PEFT's too: ``"ties"``, ``"dare_linear"``, ``"dare_ties"`` and ``"magnitude_prune"`` merge the A's and
the B's as ``"linear"`` does, with the method in place of the weighted sum; the same names ending in
``"_svd"`` merge the :math:`\Delta W_i` with it and truncate as ``"svd"`` does.

As in PEFT, a single adapter is always combined with ``"linear"`` (exact for one adapter; minilora
warns when that drops an ``svd_rank``). ``combination_report`` then measures, without changing anything,
how far an adapter is from the weighted sum: the relative error
:math:`\|\Delta W_{new} - \sum_i w_i \Delta W_i\|_F / \|\sum_i w_i \Delta W_i\|_F`, overall and per layer.

Both check all of their input first (adapter names the model does not hold are an
``UnknownAdapterError``, never skipped); ``add_weighted_adapter`` returns the model, and should the
computation still fail half-way, it takes the new adapter out again before raising.
"""
from __future__ import annotations

import copy
import math
import numbers
import warnings
from typing import NamedTuple, Sequence

import torch
from torch import nn

from . import merging
from .config import LoRAConfig
from .embedding import LoRAEmbedding
from .inject import _check_new_name, _checkpoint
from .merge import _known_names, _one_name, _saved, check_not_merged, lora_layers
from .utils import check_int

__all__ = ["COMBINATION_TYPES", "add_weighted_adapter", "combination_report", "WeightedAdapterReport"]

COMBINATION_TYPES = ("svd", "linear", "cat", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd",
                     "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd")
SAME_RANK_TYPES = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")  # merge A's and B's directly


def _check_weights(model: nn.Module, adapters, weights) -> tuple[list[str], list[float]]:
    """``adapters`` (known names, each once) and ``weights`` (one finite number each), checked."""
    adapters = _known_names(model, adapters, "adapters", "give at least one adapter to combine.",
                            "add its weights together instead.")
    if isinstance(weights, (str, bytes, dict, set)) or not hasattr(weights, "__iter__"):
        raise TypeError(f"weights must be a list of numbers, one per adapter, got {weights!r}.")
    weights = list(weights)
    bad = [w for w in weights if isinstance(w, bool) or not isinstance(w, numbers.Real)]
    if bad:
        raise TypeError(f"weights must be numbers, got {bad[0]!r} ({type(bad[0]).__name__}).")
    if len(adapters) != len(weights):
        raise ValueError(f"give one weight per adapter: {len(adapters)} adapters, {len(weights)} weights.")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite numbers, got {weights}.")
    return adapters, [float(w) for w in weights]


class WeightedAdapterReport(NamedTuple):
    """How far an adapter is from :math:`\\sum_i w_i \\Delta W_i` (``combination_report``)."""

    adapter_name: str
    rank: int
    relative_error: float  # ||ΔW_new - Σ w ΔW||_F / ||Σ w ΔW||_F over all layers together
    layer_errors: dict[str, float]  # the same, per layer


def add_weighted_adapter(model: nn.Module, adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
                         combination_type: str = "svd", svd_rank: int | None = None, density: float | None = None,
                         majority_sign_method: str = "total",
                         modules_to_save_from: str | None = "auto") -> nn.Module:
    """Add adapter ``adapter_name`` that combines ``adapters`` with ``weights``, as PEFT's
    ``add_weighted_adapter``: ``combination_type`` "svd" (default), "linear" or "cat" (see the module
    docstring), or a task-merging method of ``minilora.merging`` (chapter 11). "ties", "dare_linear",
    "dare_ties" and "magnitude_prune" apply it to the A's and to the B's (same ranks needed); the same
    names with "_svd" apply it to the ΔW's and truncate by SVD. Those need ``density`` in (0, 1]; the
    TIES ones also take ``majority_sign_method`` ("total" or "frequency"). The new adapter is inactive.
    Returns ``model``; ``combination_report(model, adapter_name, adapters, weights)`` measures the result.

    ``modules_to_save_from`` (minilora only): whose saved modules (e.g. a trained head) the new
    adapter copies. "auto" takes them from the only input that has some; None gives it fresh copies
    of the base model's modules, which is what PEFT does; a name picks that adapter's."""
    adapters, weights = _check_weights(model, adapters, weights)
    _check_new_name(model, adapter_name)
    for value, what in ((combination_type, "combination_type"), (majority_sign_method, "majority_sign_method")):
        if not isinstance(value, str):
            raise TypeError(f"{what} must be a string, got {value!r} ({type(value).__name__}).")
    if combination_type not in COMBINATION_TYPES:
        raise ValueError(f"combination_type must be one of {COMBINATION_TYPES}, got {combination_type!r}.")
    is_svd = combination_type == "svd" or combination_type.endswith("_svd")
    check_int(svd_rank, "svd_rank", optional=True, hint="None takes the largest rank of the inputs.")
    if svd_rank is not None and not is_svd:
        raise ValueError(f"svd_rank is for the '...svd' combination types only; {combination_type!r} has the rank "
                         + ("sum of its inputs' ranks." if combination_type == "cat" else "of its inputs."))
    prunes = combination_type.removesuffix("_svd") not in ("svd", "linear", "cat")
    if prunes:
        if density is None:
            raise ValueError(f"combination_type={combination_type!r} needs density, the fraction of entries to "
                             "keep, in (0, 1].")
        density = merging.check_density(density)
    elif density is not None:
        raise ValueError(f"density is for the pruning combination types (ties, dare_..., magnitude_prune...); "
                         f"{combination_type!r} keeps every entry.")
    if majority_sign_method not in merging.MAJORITY_SIGN_METHODS:
        raise ValueError(f"majority_sign_method must be one of {merging.MAJORITY_SIGN_METHODS}, "
                         f"got {majority_sign_method!r}.")
    if majority_sign_method != "total" and "ties" not in combination_type:
        raise ValueError(f"majority_sign_method is for the TIES types (ties, ties_svd, dare_ties, dare_ties_svd); "
                         f"{combination_type!r} elects no sign.")
    if modules_to_save_from not in ("auto", None):
        _one_name(model, modules_to_save_from, "modules_to_save_from")
    check_not_merged(model, "combining adapters")
    configs = [model.peft_config[a] for a in adapters]
    _refuse_dora(adapters, configs)
    ranks = [c.r for c in configs]
    if len(adapters) == 1 and combination_type != "linear":
        dropped = [f"svd_rank={svd_rank}"] * (svd_rank not in (None, ranks[0])) + [f"density={density}"] * prunes
        if dropped:
            warnings.warn(f"with a single adapter, add_weighted_adapter uses combination_type='linear' (exact), as "
                          f"PEFT does, so {' and '.join(dropped)} is not applied. To compress or prune one adapter, "
                          "combine it with itself: adapters=[a, a], weights=[w / 2, w / 2].", stacklevel=2)
        combination_type, svd_rank, is_svd = "linear", None, False
    if combination_type in SAME_RANK_TYPES and len(set(ranks)) > 1:
        raise ValueError(f"combination_type={combination_type!r} merges the A's and the B's entry by entry, so it "
                         f"needs adapters of the same rank, got {dict(zip(adapters, ranks))}; use 'cat' (exact), "
                         f"or {'svd' if combination_type == 'linear' else combination_type + '_svd'!r}, which "
                         "merges the ΔW's instead.")
    if len({c.bias for c in configs}) > 1:
        raise ValueError(f"the adapters differ in bias ({[c.bias for c in configs]}); combine adapters trained "
                         "with the same bias setting.")
    new_rank = sum(ranks) if combination_type == "cat" else (svd_rank or max(ranks)) if is_svd else ranks[0]
    layers = [(n, layer) for n, layer in lora_layers(model) if any(a in layer.r for a in adapters)]
    if is_svd:
        for n, layer in layers:
            size = min(layer.get_delta_weight(next(a for a in adapters if a in layer.r)).shape)
            if size < new_rank:
                raise ValueError(f"svd_rank={new_rank} exceeds the size of layer {n} (smallest dimension {size}); "
                                 f"choose svd_rank <= {size}.")
    saved = _saved(model)
    if modules_to_save_from == "auto":
        owners = [a for a in adapters if any(a in m.modules_to_save for m in saved)]
        if len(owners) > 1:
            raise ValueError(f"adapters {owners} each have their own saved modules (e.g. a classifier head); copies "
                             "of whole modules cannot be summed. Pass modules_to_save_from=<one of them>, or None "
                             "to use the base model's modules.")
        modules_to_save_from = owners[0] if owners else None

    same = all((c.target_modules, c.exclude_modules) == (configs[0].target_modules, configs[0].exclude_modules)
               for c in configs)
    config = LoRAConfig(r=new_rank, lora_alpha=new_rank, target_modules=configs[0].target_modules if same
                        else [n for n, _ in layers], exclude_modules=configs[0].exclude_modules if same else None,
                        bias=configs[0].bias, modules_to_save=model.peft_config[modules_to_save_from].modules_to_save
                        if modules_to_save_from else None)
    restore = _checkpoint(model)
    try:  # everything is checked: a failure from here on is a bug, and the model is put back as it was
        for _, layer in layers:  # every layer that any input adapts gets the new adapter, inactive and frozen
            active = list(layer.active_adapters)
            layer.update_layer(adapter_name, r=new_rank, lora_alpha=new_rank)
            layer.set_adapter(active)
        for m in saved:
            if modules_to_save_from in m.modules_to_save:
                m.modules_to_save[adapter_name] = copy.deepcopy(m.modules_to_save[modules_to_save_from])
                m.modules_to_save[adapter_name].requires_grad_(False)
        model.peft_config[adapter_name] = config
        with torch.no_grad():
            for _, layer in layers:  # in float64, then stored in the adapter's dtype
                parts = [(w, *(t.double() for t in layer.factors(a)), layer.scaling[a])
                         for a, w in zip(adapters, weights) if a in layer.r]
                A, B = layer.factors(adapter_name)
                A_new, B_new = merging.combine_factors(combination_type, parts, new_rank, density,
                                                       majority_sign_method, A.dtype,
                                                       transpose=isinstance(layer, LoRAEmbedding)
                                                       or getattr(layer, "fan_in_fan_out", False))
                A.copy_(A_new.to(A.dtype))
                B.copy_(B_new.to(B.dtype))
    except BaseException:
        restore()
        raise
    return model


def _refuse_dora(adapters: list[str], configs: list[LoRAConfig]) -> None:
    dora = [a for a, c in zip(adapters, configs) if c.use_dora]
    if dora:
        raise ValueError(f"adapters {dora} use DoRA: their update also rescales each row by a magnitude vector, "
                         "which no combination of the B A's expresses (PEFT would drop the magnitudes silently). "
                         "Combine plain LoRA adapters, or merge each DoRA adapter into the weights (merge_adapter).")


def combination_report(model: nn.Module, adapter_name: str, adapters: Sequence[str],
                       weights: Sequence[float]) -> WeightedAdapterReport:
    """How far adapter ``adapter_name`` is from the weighted sum of ``adapters``: the relative error
    :math:`\\|\\Delta W - \\sum_i w_i \\Delta W_i\\|_F / \\|\\sum_i w_i \\Delta W_i\\|_F` over all layers together
    and per layer (computed in float64; 0 where both are zero), and its rank. Reads, never changes,
    the model. After ``add_weighted_adapter(model, adapters, weights, name, ...)`` pass the same
    ``adapters`` and ``weights``: "cat" gives 0 (exact), "svd" the Eckart-Young truncation error."""
    adapter_name = _one_name(model, adapter_name)
    adapters, weights = _check_weights(model, adapters, weights)
    _refuse_dora([adapter_name] + adapters, [model.peft_config[a] for a in [adapter_name] + adapters])
    errors, err2, norm2 = {}, 0.0, 0.0
    with torch.no_grad():
        for name, layer in lora_layers(model):
            if not {adapter_name, *adapters} & set(layer.r):
                continue
            target = sum(w * _delta(layer, a) for a, w in zip(adapters, weights) if a in layer.r)
            new = _delta(layer, adapter_name) if adapter_name in layer.r else 0.0
            e2, n2 = float((new - target).pow(2).sum()), float(torch.as_tensor(target).pow(2).sum())
            errors[name] = _ratio(e2, n2)
            err2, norm2 = err2 + e2, norm2 + n2
    return WeightedAdapterReport(adapter_name, model.peft_config[adapter_name].r, _ratio(err2, norm2), errors)


def _delta(layer, adapter: str) -> torch.Tensor:
    """:math:`s BA` of ``adapter`` in float64, in the factors' layout."""
    A, B = layer.factors(adapter)
    return layer.scaling[adapter] * (B.double() @ A.double())


def _ratio(e2: float, n2: float) -> float:
    return (e2 / n2) ** 0.5 if n2 > 0 else (math.inf if e2 > 0 else 0.0)
