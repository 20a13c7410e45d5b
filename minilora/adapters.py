r"""Several named adapters on one model: add, swap, stack, delete, weighted merge.  (Chapter 06)

Every LoRA layer can hold several adapters ``a, b, ...`` (``lora_A[name]``, ``lora_B[name]``).
The *active* ones are summed, so with active set :math:`S` a layer computes

.. math::  h = W_0 x + \sum_{i \in S} s_i B_i A_i x, \qquad s_i = \alpha_i / r_i.

* **Swap**: ``set_adapter(model, "a")`` makes :math:`S = \{a\}`; nothing is copied, it is a switch.
* **Stack**: ``set_adapter(model, ["a", "b"])`` sums both updates. Saved modules (``modules_to_save``,
  e.g. a classifier head) are whole copies, not updates: they cannot be summed, so at most one of
  the stacked adapters may have a copy of a given module (as in PEFT).
* Active adapters train; the others are frozen.

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
warns when that drops an ``svd_rank``). Each call returns a report with the relative error
:math:`\|\Delta W_{new} - \sum_i w_i \Delta W_i\|_F / \|\sum_i w_i \Delta W_i\|_F`.
"""
from __future__ import annotations

import copy
import warnings
from typing import NamedTuple, Sequence

import torch
from torch import nn

from . import merging
from .config import LoRAConfig
from .embedding import LoRAEmbedding
from .inject import inject_lora, lora_layers, set_module
from .modules_to_save import ModulesToSaveWrapper

__all__ = ["COMBINATION_TYPES", "list_adapters", "active_adapters", "set_adapter", "add_adapter", "delete_adapter",
           "add_weighted_adapter", "WeightedAdapterReport", "check_not_merged"]

COMBINATION_TYPES = ("svd", "linear", "cat", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd",
                     "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd")
SAME_RANK_TYPES = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")  # merge A's and B's directly


def list_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters the model holds, in the order they were added."""
    return list(getattr(model, "peft_config", None) or {})


def _saved_modules(model: nn.Module) -> list[tuple[str, ModulesToSaveWrapper]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]


def active_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters that are active (used in forward) somewhere in the model."""
    active = {n for _, layer in lora_layers(model) for n in layer.active_adapters}
    active |= {m.active_adapter for _, m in _saved_modules(model) if m.active_adapter}
    return [n for n in list_adapters(model) if n in active]


def _check_known(model: nn.Module, names: Sequence[str]) -> None:
    known = list_adapters(model)
    if not known:
        raise ValueError("this model has no adapters; add one with minilora.inject_lora(model, config, name) "
                         "or minilora.load_adapter(model, directory, name).")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"no adapter named {unknown[0]!r}; the model has {known}.")


def check_not_merged(model: nn.Module, what: str) -> None:
    """Raise if some adapter is merged into the base weights (``what`` is the refused action)."""
    merged = sorted({n for _, layer in lora_layers(model) for n in layer.merged_adapters})
    if merged:
        raise RuntimeError(f"adapters {merged} are merged into the base weights; call "
                           f"minilora.unmerge_adapter(model) before {what}.")


def _activate(model: nn.Module, names: list[str]) -> None:
    """Set the active adapters in every layer and saved module (an empty list: none active)."""
    for _, layer in lora_layers(model):
        layer.set_adapter([n for n in names if n in layer.r])
    for _, m in _saved_modules(model):
        m.set_adapter(names)


def set_adapter(model: nn.Module, adapter_name: str | Sequence[str]) -> None:
    """Make ``adapter_name`` the active adapter: one name swaps, a list stacks (their updates add
    up). Active adapters (and their saved modules) become trainable, all others are frozen."""
    names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
    if not names:
        raise ValueError("give at least one adapter name; to compute the base model alone use "
                         "`with minilora.disable_adapter(model):`.")
    if len(set(names)) != len(names):
        raise ValueError(f"an adapter is named twice in {names}; each can be active once.")
    _check_known(model, names)
    check_not_merged(model, "switching adapters")
    for path, m in _saved_modules(model):
        have = [n for n in names if n in m.modules_to_save]
        if len(have) > 1:
            raise ValueError(f"adapters {have} each have their own copy of {path!r} (modules_to_save). A copy is a "
                             "whole module, not an update, so two copies cannot be stacked. Stack adapters that "
                             "share the module, or build one without it: add_weighted_adapter(..., "
                             "modules_to_save_from=None).")
    _activate(model, names)


def add_adapter(model: nn.Module, adapter_name: str, config: LoRAConfig) -> nn.Module:
    """Add a new adapter to ``model`` (PEFT's argument order), wrapping layers if needed. It stays
    inactive and frozen if another adapter is active (choose it with ``set_adapter``)."""
    before = active_adapters(model)
    check_not_merged(model, "adding an adapter")
    inject_lora(model, config, adapter_name)
    _activate(model, before or [adapter_name])  # (a layer with no active adapter would activate it alone)
    return model


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove ``adapter_name`` everywhere. Layers and saved modules left without any adapter go
    back to the plain base module. The other active adapters stay active."""
    _check_known(model, [adapter_name])
    for name, layer in lora_layers(model):
        if adapter_name in layer.merged_adapters:
            raise RuntimeError(f"adapter {adapter_name!r} is merged into {name}; call "
                               "minilora.unmerge_adapter(model) first.")
    for name, layer in list(lora_layers(model)):
        if adapter_name in layer.r:
            layer.delete_adapter(adapter_name)
            if not layer.r:
                set_module(model, name, layer.base_layer)
    for name, m in _saved_modules(model):
        if adapter_name in m.modules_to_save:
            del m.modules_to_save[adapter_name]
            if m.active_adapter == adapter_name:
                m.active_adapter = None
            if not len(m.modules_to_save):
                set_module(model, name, m.original_module)
    del model.peft_config[adapter_name]
    if not model.peft_config:
        del model.peft_config


class WeightedAdapterReport(NamedTuple):
    """What ``add_weighted_adapter`` built and how far it is from :math:`\\sum_i w_i \\Delta W_i`."""

    adapter_name: str
    combination_type: str
    rank: int
    relative_error: float  # ||ΔW_new - Σ w ΔW||_F / ||Σ w ΔW||_F over all layers together
    layer_errors: dict[str, float]  # the same, per layer


def add_weighted_adapter(model: nn.Module, adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
                         combination_type: str = "svd", svd_rank: int | None = None, density: float | None = None,
                         majority_sign_method: str = "total",
                         modules_to_save_from: str | None = "auto") -> WeightedAdapterReport:
    """Add adapter ``adapter_name`` that combines ``adapters`` with ``weights``, as PEFT's
    ``add_weighted_adapter``: ``combination_type`` "svd" (default), "linear" or "cat" (see the module
    docstring), or a task-merging method of ``minilora.merging`` (chapter 11). "ties", "dare_linear",
    "dare_ties" and "magnitude_prune" apply it to the A's and to the B's (same ranks needed); the same
    names with "_svd" apply it to the ΔW's and truncate by SVD. Those need ``density`` in (0, 1]; the
    TIES ones also take ``majority_sign_method`` ("total" or "frequency"). The new adapter is inactive;
    the report gives its relative error against the exact weighted sum.

    ``modules_to_save_from`` (minilora only): whose saved modules (e.g. a trained head) the new
    adapter copies. "auto" takes them from the only input that has some; None gives it fresh copies
    of the base model's modules, which is what PEFT does; a name picks that adapter's."""
    adapters, weights = list(adapters), [float(w) for w in weights]
    if not adapters or len(adapters) != len(weights):
        raise ValueError(f"give one weight per adapter: {len(adapters)} adapters, {len(weights)} weights.")
    if len(set(adapters)) != len(adapters):
        raise ValueError(f"an adapter is named twice in {adapters}; add its weights together instead.")
    _check_known(model, adapters)
    if adapter_name in list_adapters(model):
        raise ValueError(f"the model already has an adapter named {adapter_name!r}; choose another name.")
    if combination_type not in COMBINATION_TYPES:
        raise ValueError(f"combination_type must be one of {COMBINATION_TYPES}, got {combination_type!r}.")
    is_svd = combination_type == "svd" or combination_type.endswith("_svd")
    if svd_rank is not None and (not isinstance(svd_rank, int) or isinstance(svd_rank, bool) or svd_rank < 1):
        raise ValueError(f"svd_rank must be a positive int (or None: the largest input rank), got {svd_rank!r}.")
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
    check_not_merged(model, "combining adapters")
    configs = [model.peft_config[a] for a in adapters]
    dora = [a for a, c in zip(adapters, configs) if c.use_dora]
    if dora:
        raise ValueError(f"adapters {dora} use DoRA: their update also rescales each row by a magnitude vector, "
                         "which no combination of the B A's expresses (PEFT would drop the magnitudes silently). "
                         "Combine plain LoRA adapters, or merge each DoRA adapter into the weights (merge_adapter).")
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
    saved = _saved_modules(model)
    if modules_to_save_from == "auto":
        owners = [a for a in adapters if any(a in m.modules_to_save for _, m in saved)]
        if len(owners) > 1:
            raise ValueError(f"adapters {owners} each have their own saved modules (e.g. a classifier head); copies "
                             "of whole modules cannot be summed. Pass modules_to_save_from=<one of them>, or None "
                             "to use the base model's modules.")
        modules_to_save_from = owners[0] if owners else None
    elif modules_to_save_from is not None:
        _check_known(model, [modules_to_save_from])

    same = all((c.target_modules, c.exclude_modules) == (configs[0].target_modules, configs[0].exclude_modules)
               for c in configs)
    config = LoRAConfig(r=new_rank, lora_alpha=new_rank, target_modules=configs[0].target_modules if same
                        else [n for n, _ in layers], exclude_modules=configs[0].exclude_modules if same else None,
                        bias=configs[0].bias, modules_to_save=model.peft_config[modules_to_save_from].modules_to_save
                        if modules_to_save_from else None)
    before = active_adapters(model)
    for _, layer in layers:  # every layer that any input adapts gets the new adapter
        layer.update_layer(adapter_name, r=new_rank, lora_alpha=new_rank)
    for _, m in saved:
        if modules_to_save_from in m.modules_to_save:
            m.modules_to_save[adapter_name] = copy.deepcopy(m.modules_to_save[modules_to_save_from])
    model.peft_config[adapter_name] = config
    _activate(model, before)  # the new adapter starts inactive

    errors, err2, norm2 = {}, 0.0, 0.0
    with torch.no_grad():
        for name, layer in layers:  # in float64, then stored in the adapter's dtype
            parts = [(w, *(t.double() for t in layer.factors(a)), layer.scaling[a]) for a, w in zip(adapters, weights)
                     if a in layer.r]
            target = sum(w * s * (B @ A) for w, A, B, s in parts)
            A, B = layer.factors(adapter_name)
            A_new, B_new = merging.combine_factors(combination_type, parts, new_rank, density, majority_sign_method,
                                                   A.dtype, transpose=isinstance(layer, LoRAEmbedding)
                                                   or getattr(layer, "fan_in_fan_out", False))
            A.copy_(A_new.to(A.dtype))
            B.copy_(B_new.to(B.dtype))
            e2 = float(((B.double() @ A.double()) * layer.scaling[adapter_name] - target).pow(2).sum())
            n2 = float(target.pow(2).sum())
            errors[name] = (e2 / n2) ** 0.5 if n2 > 0 else 0.0
            err2, norm2 = err2 + e2, norm2 + n2
    return WeightedAdapterReport(adapter_name, combination_type, new_rank,
                                 (err2 / norm2) ** 0.5 if norm2 > 0 else 0.0, errors)
