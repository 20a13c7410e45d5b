r"""A model's LoRA after injection: merged into the weights or not, switched on or off, taken out.  (Chapter 04)

With active adapters :math:`S` a LoRA layer computes :math:`h = W_0 x + \sum_{i \in S} s_i B_i A_i x`.

* ``merge_adapter`` folds the updates into the weight, :math:`W \leftarrow W_0 + \sum_{i \in S} s_i B_i A_i`,
  so inference costs what the base layer costs; ``unmerge_adapter`` subtracts them again (exact up to
  rounding). ``merge_and_unload`` merges and puts the plain base layers back: the result has no trace
  of LoRA and runs exactly as fast as the original; ``unload`` takes LoRA out without merging.
* ``disable_adapter_layers`` switches every LoRA path and saved copy off until ``enable_adapter_layers``:
  the model computes :math:`W_0 x` (PEFT's methods of the same names). As in PEFT, switching off
  freezes the adapter weights and switching on makes the active ones trainable again. A merged update
  is in the weight itself, so switching a merged model off is refused (call ``unmerge_adapter`` first;
  PEFT would unmerge silently at the next forward), and so is merging while the layers are off.
  ``with disable_adapter(model):`` switches off for one block, unmerging and re-merging if needed.

Every function that changes the model checks all of its input first (an unknown adapter name is an
``UnknownAdapterError``, never skipped) and returns the model: ``model = merge_and_unload(model)``,
PEFT's idiom. Task-vector merging of whole fine-tunes (TIES, DARE: chapter 11) is ``minilora.merging``.
"""
from __future__ import annotations

import warnings
from contextlib import ExitStack, contextmanager
from typing import Iterator, Sequence

from torch import nn

from .errors import UnknownAdapterError
from .layers import LoRALayer
from .modules_to_save import ModulesToSaveWrapper

__all__ = ["lora_layers", "merge_adapter", "unmerge_adapter", "merge_and_unload", "unload", "disable_adapter_layers",
           "enable_adapter_layers", "disable_adapter"]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _known_names(model: nn.Module, value, what: str, empty: str, twice: str, one: bool = False) -> list[str]:
    """``value``, a list of adapter names (with ``one``, a single name too), or TypeError (another type),
    ValueError (``empty``, or a name ``twice``) and UnknownAdapterError: unknown names are never skipped."""
    names = [value] if one and isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if names is None or not all(isinstance(n, str) for n in names):
        bad = value if names is None else next(n for n in names if not isinstance(n, str))
        raise TypeError(f"{what} must be {'an adapter name or ' if one else ''}a list of adapter names (strings), "
                        f"got {bad!r} ({type(bad).__name__}); e.g. {what}=['default'].")
    if not names:
        raise ValueError(empty)
    if len(set(names)) != len(names):
        raise ValueError(f"an adapter is named twice in {names}; {twice}")
    known = list(getattr(model, "peft_config", None) or {})
    for n in names:
        if n not in known:
            raise UnknownAdapterError(n, known)
    return names


def _one_name(model: nn.Module, adapter_name, what: str = "adapter_name") -> str:
    """``adapter_name`` if it is a string naming an adapter of ``model``."""
    if not isinstance(adapter_name, str):
        raise TypeError(f"{what} must be an adapter name (a string), got {adapter_name!r} "
                        f"({type(adapter_name).__name__}).")
    return _known_names(model, [adapter_name], what, "", "")[0]


def check_not_merged(model: nn.Module, what: str) -> None:
    """Raise ValueError if some adapter is merged into the base weights (``what`` is the refused action)."""
    merged = sorted({n for _, layer in lora_layers(model) for n in layer.merged_adapters})
    if merged:
        raise ValueError(f"adapters {merged} are merged into the base weights; call "
                         f"minilora.unmerge_adapter(model) before {what}.")


def _check_switched_on(model: nn.Module, what: str) -> None:
    off = [n for n, m in model.named_modules() if isinstance(m, LoRALayer) and m.disable_adapters
           or isinstance(m, ModulesToSaveWrapper) and m.disabled]
    if off:
        raise ValueError(f"the adapter layers are switched off ({off[0]}, ...: minilora.disable_adapter_layers, or "
                         f"inside `with minilora.disable_adapter(model):`); switch them on "
                         f"(minilora.enable_adapter_layers(model)) before {what}.")


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALayer]]:
    """Every ``(name, layer)`` with LoRA in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer):
            yield name, module


def _require_lora(model: nn.Module) -> list[LoRALayer]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}.")
    layers = [m for _, m in lora_layers(model)]
    if not layers:
        raise ValueError("this model has no LoRA layers; call minilora.inject_lora(model, config) first.")
    return layers


def _saved(model: nn.Module) -> list[ModulesToSaveWrapper]:
    return [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)]


def _set_trainable(layer: LoRALayer, names: Sequence[str]) -> None:
    """Adapters ``names`` of ``layer`` train, its other adapters are frozen."""
    for container in layer.adapter_layer_names:
        for n, weights in getattr(layer, container).items():
            weights.requires_grad_(n in names)


def _names_to_merge(model: nn.Module, adapter_names) -> list[str] | None:
    if adapter_names is None:
        return None
    return _known_names(model, adapter_names, "adapter_names", "adapter_names is empty; name the adapters to merge, "
                        "or pass None for the active ones.", "name each once.")


def _merge_plan(layers: list[LoRALayer], names: list[str] | None) -> list[tuple[LoRALayer, list[str]]]:
    """Per layer, the adapters to fold in: ``names`` (default: the active ones) that it holds and has not
    merged yet (a name known to the model may be absent from some layers). Checked before any merge."""
    plan = []
    for layer in layers:
        todo = [n for n in (layer.active_adapters if names is None else names)
                if n in layer.r and n not in layer.merged_adapters]
        if todo:
            layer._base_weight()  # a quantized (NF4) base refuses here, before any layer has changed
            plan.append((layer, todo))
    return plan


def merge_adapter(model: nn.Module, adapter_names: Sequence[str] | None = None) -> nn.Module:
    """Fold the active adapters (or the list ``adapter_names``) into the base weights (exact, reversible)."""
    layers = _require_lora(model)
    names = _names_to_merge(model, adapter_names)
    _check_switched_on(model, "merging")
    for layer, todo in _merge_plan(layers, names):
        layer.merge(adapter_names=todo)
    return model


def unmerge_adapter(model: nn.Module) -> nn.Module:
    """Undo ``merge_adapter``: subtract the merged updates again."""
    for layer in _require_lora(model):
        if layer.merged:
            layer.unmerge()
    return model


def _unload(model: nn.Module, merge: bool, adapter_names) -> nn.Module:
    _require_lora(model)
    layers = dict(lora_layers(model))
    plan = []
    if merge:
        names = _names_to_merge(model, adapter_names)
        _check_switched_on(model, "merging")
        plan = _merge_plan(list(layers.values()), names)
    for layer, todo in plan:
        layer.merge(adapter_names=todo)
    for name, layer in layers.items():
        if not merge and layer.merged:
            layer.unmerge()
        _set_module(model, name, layer.base_layer)
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]:
        keep = module.active_adapter if merge else None
        _set_module(model, name, module.modules_to_save[keep] if keep else module.original_module)
    model.requires_grad_(False)
    model.__dict__.pop("peft_config", None)
    return model


def merge_and_unload(model: nn.Module, adapter_names: Sequence[str] | None = None) -> nn.Module:
    """Merge the active adapters (or the list ``adapter_names``) and put the plain base layers back: a
    LoRA-free model, with the active adapter's copy of each saved module (e.g. its trained head)."""
    return _unload(model, merge=True, adapter_names=adapter_names)


def unload(model: nn.Module) -> nn.Module:
    """Take LoRA out without merging: the base model as it was before ``inject_lora``."""
    return _unload(model, merge=False, adapter_names=None)


def disable_adapter_layers(model: nn.Module) -> nn.Module:
    """Switch every LoRA path and saved copy off, until ``enable_adapter_layers``: the model computes
    its base. The adapter weights are frozen meanwhile (as PEFT). Refused while an adapter is merged."""
    layers = _require_lora(model)
    check_not_merged(model, "switching the adapter layers off")
    biased = {n: c.bias for n, c in (getattr(model, "peft_config", None) or {}).items() if c.bias != "none"}
    if biased:
        warnings.warn(f"adapters {biased} trained biases of the base model itself, so with the adapter layers off the "
                      "model still differs from the base model (as in PEFT).", stacklevel=2)
    for layer in layers:
        layer.enable_adapters(False)
        _set_trainable(layer, [])
    for m in _saved(model):
        m.enable_adapters(False)
    return model


def enable_adapter_layers(model: nn.Module) -> nn.Module:
    """Switch the LoRA paths and saved copies on again; the active adapters train again (as PEFT)."""
    layers = _require_lora(model)
    for layer in layers:
        layer.enable_adapters(True)
        _set_trainable(layer, layer.active_adapters)
    for m in _saved(model):
        m.enable_adapters(True)
    return model


@contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes as its base: LoRA paths and saved copies are off
    (PEFT: ``with model.disable_adapter():``). Merged updates are taken out and put back."""
    layers = _require_lora(model)
    with ExitStack() as stack:
        for layer in layers:
            was_merged, was_enabled = list(layer.merged_adapters), not layer.disable_adapters
            if was_merged:
                layer.unmerge()
                stack.callback(layer.merge, adapter_names=was_merged)
            layer.enable_adapters(False)
            stack.callback(layer.enable_adapters, was_enabled)
        for m in _saved(model):
            stack.callback(setattr, m, "disabled", m.disabled)
            m.disabled = True
        yield model
