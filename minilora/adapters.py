r"""Several named adapters on one model: add, swap, stack, delete.  (Chapter 06)

Every LoRA layer can hold several adapters ``a, b, ...`` (``lora_A[name]``, ``lora_B[name]``).
The *active* ones are summed, so with active set :math:`S` a layer computes

.. math::  h = W_0 x + \sum_{i \in S} s_i B_i A_i x, \qquad s_i = \alpha_i / r_i.

* **Swap**: ``set_adapter(model, "a")`` makes :math:`S = \{a\}`; nothing is copied, it is a switch.
* **Stack**: ``set_adapter(model, ["a", "b"])`` sums both updates. Saved modules (``modules_to_save``,
  e.g. a classifier head) are whole copies, not updates: they cannot be summed, so at most one of
  the stacked adapters may have a copy of a given module (as in PEFT).
* Active adapters train; the others are frozen.

``add_weighted_adapter`` (a new adapter from weighted ones, PEFT's ``combination_type``s) and
``combination_report`` (how far it is from the exact weighted sum) live in ``minilora.weighted`` and
are importable from here too.

Every function here that changes the model checks all of its input first (a name the model does not hold
is an ``UnknownAdapterError``, never skipped; a merged model is refused) and returns the model.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .config import LoRAConfig
from .inject import _check_new_name, inject_lora
from .merge import _known_names, _one_name, _set_module, check_not_merged, lora_layers
from .modules_to_save import ModulesToSaveWrapper
from .weighted import COMBINATION_TYPES, WeightedAdapterReport, add_weighted_adapter, combination_report

__all__ = ["list_adapters", "active_adapters", "set_adapter", "add_adapter", "delete_adapter",
           "add_weighted_adapter", "combination_report", "WeightedAdapterReport", "COMBINATION_TYPES"]


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


def _activate(model: nn.Module, names: list[str]) -> None:
    """Set the active adapters in every layer and saved module (an empty list: none active)."""
    for _, layer in lora_layers(model):
        layer.set_adapter([n for n in names if n in layer.r])
    for _, m in _saved_modules(model):
        m.set_adapter(names)


def set_adapter(model: nn.Module, adapter_name: str | Sequence[str]) -> nn.Module:
    """Make ``adapter_name`` the active adapter: one name swaps, a list stacks (their updates add
    up). Active adapters (and their saved modules) become trainable, all others are frozen."""
    names = _known_names(model, adapter_name, "adapter_name", "give at least one adapter name; to compute the base "
                         "model alone use `with minilora.disable_adapter(model):` or "
                         "minilora.disable_adapter_layers(model).", "each can be active once.", one=True)
    check_not_merged(model, "switching adapters")
    for path, m in _saved_modules(model):
        have = [n for n in names if n in m.modules_to_save]
        if len(have) > 1:
            raise ValueError(f"adapters {have} each have their own copy of {path!r} (modules_to_save). A copy is a "
                             "whole module, not an update, so two copies cannot be stacked. Stack adapters that "
                             "share the module, or build one without it: add_weighted_adapter(..., "
                             "modules_to_save_from=None).")
    _activate(model, names)
    return model


def add_adapter(model: nn.Module, adapter_name: str, config: LoRAConfig) -> nn.Module:
    """Add a new adapter to ``model`` (PEFT's argument order), wrapping layers if needed. It stays
    inactive and frozen if another adapter is active (choose it with ``set_adapter``)."""
    _check_new_name(model, adapter_name)  # first, for the hint on PEFT's order of the arguments
    before = active_adapters(model) if isinstance(model, nn.Module) else []
    inject_lora(model, config, adapter_name)  # checks everything else before it changes anything
    _activate(model, before or [adapter_name])  # (a layer with no active adapter would activate it alone)
    return model


def delete_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Remove ``adapter_name`` everywhere. Layers and saved modules left without any adapter go
    back to the plain base module. The other active adapters stay active."""
    _one_name(model, adapter_name)
    for name, layer in lora_layers(model):
        if adapter_name in layer.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged into {name}; call "
                             "minilora.unmerge_adapter(model) first.")
    for name, layer in list(lora_layers(model)):
        if adapter_name in layer.r:
            layer.delete_adapter(adapter_name)
            if not layer.r:
                _set_module(model, name, layer.base_layer)
    for name, m in _saved_modules(model):
        if adapter_name in m.modules_to_save:
            del m.modules_to_save[adapter_name]
            if m.active_adapter == adapter_name:
                m.active_adapter = None
            if not len(m.modules_to_save):
                _set_module(model, name, m.original_module)
    del model.peft_config[adapter_name]
    if not model.peft_config:
        del model.peft_config
    return model


