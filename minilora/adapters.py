r"""Several named adapters on one model: add, swap, stack, delete, weighted merge.  (Chapter 06)

Every LoRA layer can hold several adapters ``a, b, ...`` (``lora_A[name]``, ``lora_B[name]``).
The *active* ones are summed, so with active set :math:`S` a layer computes

.. math::  h = W_0 x + \sum_{i \in S} s_i B_i A_i x, \qquad s_i = \alpha_i / r_i.

* **Swap**: ``set_adapter(model, "a")`` makes :math:`S = \{a\}`; nothing is copied, it is a switch.
* **Stack**: ``set_adapter(model, ["a", "b"])`` sums both updates. Saved modules (``modules_to_save``,
  e.g. a classifier head) are whole copies, not updates: they cannot be summed, so at most one of
  the stacked adapters may have a copy of a given module (as in PEFT).
* Active adapters train; the others are frozen.

``add_weighted_adapter`` builds a new adapter from :math:`\Delta W = \sum_i w_i \Delta W_i`:

* ``"linear"`` is exact. It concatenates along the rank:
  :math:`A = [w_1 s_1 A_1; w_2 s_2 A_2; \dots]`, :math:`B = [B_1, B_2, \dots]` with scaling 1,
  so :math:`BA = \sum_i w_i s_i B_i A_i` and the rank is :math:`\sum_i r_i`. (PEFT calls this
  ``"cat"``. PEFT's ``"linear"`` sums :math:`\sqrt{w_i s_i} A_i` and :math:`\sqrt{w_i s_i} B_i`
  separately, which adds cross terms :math:`B_i A_j` and is exact only for a single adapter.)
* ``"svd"`` keeps the best rank-``k`` approximation of :math:`\Delta W` (Eckart-Young): with
  :math:`\Delta W = U \Sigma V^T`, :math:`B = U_k \Sigma_k`, :math:`A = V_k^T`. It reports the
  relative Frobenius error :math:`\|\Delta W - BA\|_F / \|\Delta W\|_F`.
"""
from __future__ import annotations

import copy
from typing import NamedTuple, Sequence

import torch
from torch import nn

from .config import LoRAConfig
from .inject import ModulesToSave, _set_module, inject_lora, lora_layers

COMBINATIONS = ("linear", "svd")


def list_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters the model holds, in the order they were added."""
    return list(getattr(model, "lora_configs", None) or {})


def _saved_modules(model: nn.Module) -> list[tuple[str, ModulesToSave]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ModulesToSave)]


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


def _check_not_merged(model: nn.Module, what: str) -> None:
    merged = sorted({n for _, layer in lora_layers(model) for n in layer.merged_adapters})
    if merged:
        raise RuntimeError(f"adapters {merged} are merged into the base weights; call minilora.unmerge(model) "
                           f"before {what}.")


def set_adapter(model: nn.Module, names: str | Sequence[str]) -> None:
    """Make ``names`` the active adapters: one name swaps, a list stacks (their updates add up).

    Active adapters (and their saved modules) become trainable, all others are frozen."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("give at least one adapter name; to compute the base model alone use "
                         "`with minilora.disable_lora(model):`.")
    if len(set(names)) != len(names):
        raise ValueError(f"an adapter is named twice in {names}; each can be active once.")
    _check_known(model, names)
    _check_not_merged(model, "switching adapters")
    for path, m in _saved_modules(model):
        have = [n for n in names if n in m.modules_to_save]
        if len(have) > 1:
            raise ValueError(f"adapters {have} each have their own copy of {path!r} (modules_to_save). A copy is a "
                             "whole module, not an update, so two copies cannot be stacked. Stack adapters that "
                             "share the module, or build one without it: add_weighted_adapter(..., "
                             "modules_to_save_from=None).")
    _activate(model, names)


def _activate(model: nn.Module, names: list[str]) -> None:
    """Set the active adapters in every layer and saved module (an empty list: none active)."""
    for _, layer in lora_layers(model):
        layer.set_adapter([n for n in names if n in layer.adapters])
    for _, m in _saved_modules(model):
        m.set_adapter(names)


def add_adapter(model: nn.Module, config: LoRAConfig, adapter_name: str) -> nn.Module:
    """Add a new adapter to ``model`` (wrapping layers if needed). It stays inactive and frozen
    if another adapter is active (choose it with ``set_adapter``); otherwise it becomes active."""
    before = active_adapters(model)
    _check_not_merged(model, "adding an adapter")
    inject_lora(model, config, adapter_name)
    _activate(model, before or [adapter_name])  # (a layer with no active adapter would activate it alone)
    return model


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove ``adapter_name`` everywhere. Layers and saved modules left without any adapter go
    back to the plain base module. The other active adapters stay active."""
    _check_known(model, [adapter_name])
    for name, layer in lora_layers(model):
        if adapter_name in layer.merged_adapters:
            raise RuntimeError(f"adapter {adapter_name!r} is merged into {name}; call minilora.unmerge(model) first.")
    for name, layer in list(lora_layers(model)):
        if adapter_name in layer.adapters:
            layer.delete_adapter(adapter_name)
            if not layer.adapters:
                _set_module(model, name, layer.base)
    for name, m in _saved_modules(model):
        if adapter_name in m.modules_to_save:
            del m.modules_to_save[adapter_name]
            if m.active_adapter == adapter_name:
                m.active_adapter = None
            if not len(m.modules_to_save):
                _set_module(model, name, m.original_module)
    del model.lora_configs[adapter_name]
    if not model.lora_configs:
        del model.lora_configs


class WeightedAdapterReport(NamedTuple):
    """What ``add_weighted_adapter`` built and how far it is from :math:`\\sum_i w_i \\Delta W_i`."""

    adapter_name: str
    combination: str
    rank: int
    relative_error: float  # ||ΔW_new - Σ w ΔW||_F / ||Σ w ΔW||_F over all layers together
    layer_errors: dict[str, float]  # the same, per layer


def _common(configs: list[LoRAConfig], field: str, what: str):
    values = [getattr(c, field) for c in configs]
    if any(v != values[0] for v in values):
        raise ValueError(f"the adapters differ in {field} ({values}); {what}")
    return values[0]


def add_weighted_adapter(model: nn.Module, adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
                         combination: str = "linear", rank: int | None = None,
                         modules_to_save_from: str | None = "auto") -> WeightedAdapterReport:
    """Add adapter ``adapter_name`` whose update is :math:`\\sum_i w_i \\Delta W_i` ("linear", exact,
    rank = sum of the ranks) or its best rank-``rank`` approximation ("svd"). The new adapter is
    inactive; the report gives the relative Frobenius error (about 1e-7 for "linear").

    ``modules_to_save_from``: whose saved modules (e.g. a classifier head) the new adapter copies.
    "auto" takes them from the only source that has some; None gives it none (the base model's
    modules are used); a name picks that adapter's."""
    adapters, weights = list(adapters), [float(w) for w in weights]
    if not adapters or len(adapters) != len(weights):
        raise ValueError(f"give one weight per adapter: {len(adapters)} adapters, {len(weights)} weights.")
    if len(set(adapters)) != len(adapters):
        raise ValueError(f"an adapter is named twice in {adapters}; add its weights together instead.")
    _check_known(model, adapters)
    if adapter_name in list_adapters(model):
        raise ValueError(f"the model already has an adapter named {adapter_name!r}; choose another name.")
    if combination not in COMBINATIONS:
        raise ValueError(f"combination must be one of {COMBINATIONS}, got {combination!r}.")
    if combination == "linear" and rank is not None:
        raise ValueError("rank is only for combination='svd'; 'linear' is exact, its rank is the sum of the ranks.")
    if combination == "svd" and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise ValueError(f"combination='svd' needs rank=<positive int>, got {rank!r}.")
    _check_not_merged(model, "combining adapters")
    configs = [model.lora_configs[a] for a in adapters]
    bias = _common(configs, "bias", "combine adapters trained with the same bias setting.")
    layers = [(n, layer) for n, layer in lora_layers(model) if any(a in layer.adapters for a in adapters)]

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
    new_rank = sum(c.r for c in configs) if combination == "linear" else rank
    if combination == "svd":
        sizes = {n: min(B.shape[0], A.shape[1]) for n, layer in layers for A, B in [layer.get_lora_AB(layer.adapters[0])]}
        too_small = [n for n, d in sizes.items() if d < rank]
        if too_small:
            raise ValueError(f"rank={rank} exceeds the size of layer {too_small[0]} (min dimension "
                             f"{sizes[too_small[0]]}); choose rank <= {min(sizes.values())}.")

    targets = [n for n, _ in layers]
    same = all(c.target_modules == configs[0].target_modules and c.exclude_modules == configs[0].exclude_modules
               for c in configs)
    config = LoRAConfig(r=new_rank, alpha=new_rank, target_modules=configs[0].target_modules if same else targets,
                        exclude_modules=configs[0].exclude_modules if same else None, bias=bias,
                        modules_to_save=model.lora_configs[modules_to_save_from].modules_to_save
                        if modules_to_save_from else None)
    before = active_adapters(model)
    for name, layer in layers:  # every layer that any source adapts gets the new adapter
        layer.add_adapter(adapter_name, r=new_rank, alpha=new_rank)
    for _, m in saved:
        if modules_to_save_from in m.modules_to_save:
            m.modules_to_save[adapter_name] = copy.deepcopy(m.modules_to_save[modules_to_save_from])
    model.lora_configs[adapter_name] = config
    _activate(model, before)  # the new adapter starts inactive

    errors, err2, norm2 = {}, 0.0, 0.0
    with torch.no_grad():
        for name, layer in layers:
            parts = [(w, *layer.get_lora_AB(a), layer.scaling[a]) for a, w in zip(adapters, weights)
                     if a in layer.adapters and a != adapter_name]
            target = sum(w * s * (B.double() @ A.double()) for w, A, B, s in parts)
            if combination == "linear":
                A_new = torch.cat([w * s * A.double() for w, A, B, s in parts])
                B_new = torch.cat([B.double() for w, A, B, s in parts], dim=1)
                pad = new_rank - A_new.shape[0]  # layers that some source does not adapt
                A_new = torch.cat([A_new, A_new.new_zeros(pad, A_new.shape[1])])
                B_new = torch.cat([B_new, B_new.new_zeros(B_new.shape[0], pad)], dim=1)
            else:
                U, S, Vh = torch.linalg.svd(target, full_matrices=False)
                B_new, A_new = U[:, :rank] * S[:rank], Vh[:rank]
            A, B = layer.get_lora_AB(adapter_name)
            A.copy_(A_new.to(A.dtype))
            B.copy_(B_new.to(B.dtype))
            e2 = float(((B.double() @ A.double()) * layer.scaling[adapter_name] - target).pow(2).sum())
            n2 = float(target.pow(2).sum())
            errors[name] = (e2 / n2) ** 0.5 if n2 > 0 else 0.0
            err2, norm2 = err2 + e2, norm2 + n2
    return WeightedAdapterReport(adapter_name, combination, new_rank, (err2 / norm2) ** 0.5 if norm2 > 0 else 0.0,
                                 errors)


__all__ = ["list_adapters", "active_adapters", "set_adapter", "add_adapter", "delete_adapter",
           "add_weighted_adapter", "WeightedAdapterReport"]
