r"""Putting LoRA into a real model, in place.  (Chapter 04)

``inject_lora(model, config)`` replaces every layer that ``config.target_modules`` selects
(``minilora.targets``) by a ``LoRALinear`` (for ``nn.Linear`` / ``Conv1D`` / NF4) or a
``LoRAEmbedding`` (for ``nn.Embedding``) that wraps it as ``base_layer``. Everything is then frozen
except the LoRA matrices, the biases that ``config.bias`` names, and ``config.modules_to_save``.

For a model with parameters :math:`\theta_0` this trains only
:math:`\sum_{\text{targets}} r (d_{in} + d_{out})` numbers. Unlike PEFT's ``get_peft_model``, which
wraps the model in a ``PeftModel``, ``inject_lora`` changes the model in place: it stays a normal
transformers model, whose ``forward``, ``generate`` and ``save_pretrained`` still work, and the
configs sit in ``model.peft_config`` (a dict by adapter name, as in PEFT).

``inject_lora`` checks everything first: the config, the adapter name (a string, new, no dots, not
a method name of ``nn.ModuleDict``), that no adapter is merged, the targets and ``modules_to_save``
(each must select something, and never the same module), what each layer would refuse (DoRA,
PiSSA). A refused call leaves the model exactly as it was. It is also transactional: should a layer
still fail half-way, every module, weight, ``requires_grad`` flag and ``peft_config`` is put back
before the error is raised. It returns the model, as every function that changes one does.

Merging, switching off and taking LoRA out again are ``minilora.merge``'s; they are importable from
here too, where chapter 04 first uses them."""
from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn

from .config import BIASES, LoRAConfig
from .dora import refuse_dora
from .embedding import LoRAEmbedding
from .layers import LoRALayer, LoRALinear
from .merge import (
    _require_lora,
    _saved,
    _set_module,
    _set_trainable,
    check_not_merged,
    disable_adapter,
    disable_adapter_layers,
    enable_adapter_layers,
    lora_layers,
    merge_adapter,
    merge_and_unload,
    unload,
    unmerge_adapter,
)
from .modules_to_save import ModulesToSaveWrapper
from .pissa import check_pissa, is_pissa
from .targets import resolve_modules_to_save, resolve_targets

__all__ = ["resolve_targets", "inject_lora", "lora_layers", "mark_only_lora_as_trainable", "merge_adapter",
           "unmerge_adapter", "merge_and_unload", "unload", "disable_adapter", "enable_adapter_layers",
           "disable_adapter_layers"]


def _check_new_name(model: nn.Module, name) -> None:
    """The rules every layer applies to a new adapter name (``LoRALayer._check_new``), checked up front."""
    if not isinstance(name, str):
        raise TypeError(f"adapter_name must be a string, got {name!r} ({type(name).__name__}); e.g. 'default'. "
                        "(PEFT's order: add_adapter(model, adapter_name, config).)")
    if not name or "." in name:
        raise ValueError(f"an adapter name must be a non-empty string without dots, got {name!r}.")
    if hasattr(nn.ModuleDict(), name) or hasattr(nn.ParameterDict(), name):  # keys that would shadow a method
        raise ValueError(f"{name!r} is the name of an nn.Module attribute; choose another adapter name.")
    if name in (getattr(model, "peft_config", None) or {}):
        raise ValueError(f"the model already has an adapter named {name!r}; choose another name, or delete it "
                         "first (minilora.delete_adapter).")


def _check_target(module: nn.Module, path: str, adapter_name: str, config: LoRAConfig, args: dict) -> None:
    """What ``update_layer`` would refuse for this layer (DoRA, PiSSA, ...), checked before any layer changes:
    a LoRA layer's own checks; for a layer not wrapped yet, the same refusals of DoRA and PiSSA."""
    if isinstance(module, LoRALayer):
        with warnings.catch_warnings():  # its warnings (r >= the layer's size, ...) come once, when it is added
            warnings.simplefilter("ignore")
            module._check_new(adapter_name, **args)
        return
    if config.use_dora:
        refuse_dora(module, path)
    if is_pissa(config.init_lora_weights):
        dims = (module.in_features, module.out_features) if hasattr(module, "in_features") \
            else tuple(module.weight.shape)  # Conv1D's weight is (in, out)
        check_pissa(module, config.r, dims, path)


_CONTAINERS = (dict, OrderedDict, list, set)


def _checkpoint(model: nn.Module, weights: Sequence[torch.Tensor] = ()) -> Callable[[], None]:
    """A function that puts ``model`` back as it is now, after new adapters were added to it: its module tree
    (every module's children, parameters and buffers), every module's attributes (an adapter's ``r``,
    ``scaling``, active and merged adapters, a saved module's active copy, train mode, ``peft_config``) and
    every ``requires_grad``. Parameter values are not recorded, as adding an adapter leaves them alone, except
    those of ``weights`` (the base weights PiSSA rewrites)."""
    saved = []
    for m in model.modules():
        attrs = dict(vars(m))
        contents = {k: v.copy() for k, v in attrs.items() if type(v) in _CONTAINERS}
        saved.append((m, attrs, contents))
    grads = [(p, p.requires_grad) for p in model.parameters()]
    values = [(w, w.detach().clone()) for w in weights]

    def restore() -> None:
        for m, attrs, contents in saved:
            d = vars(m)
            for k in [k for k in d if k not in attrs]:
                del d[k]
            d.update(attrs)
            for k, old in contents.items():  # the same container object, with its old contents in its old order
                v = attrs[k]
                if isinstance(v, list):
                    v[:] = old
                else:
                    v.clear()
                    v.update(old)
        for p, g in grads:
            p.requires_grad_(g)
        with torch.no_grad():
            for w, value in values:
                w.copy_(value)
    return restore


def inject_lora(model: nn.Module, config: LoRAConfig, adapter_name: str = "default") -> nn.Module:
    """Wrap the layers ``config`` selects with LoRA, in place; freeze the rest; return ``model``.

    Called again with another ``adapter_name``, it adds a second adapter to the same layers
    (it stays inactive until ``minilora.set_adapter``). Everything is checked first: the config,
    the name, that no adapter is merged, the targets and ``modules_to_save`` (``minilora.targets``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}.")
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a minilora.LoRAConfig, got {type(config).__name__}.")
    dataclasses.replace(config)  # LoRAConfig's checks again, in case a field was changed after construction
    _check_new_name(model, adapter_name)
    check_not_merged(model, "adding an adapter")
    targets = resolve_targets(model, config)
    saved = resolve_modules_to_save(model, config, targets)
    args = dict(r=config.r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                init_lora_weights=config.init_lora_weights, use_rslora=config.use_rslora, use_dora=config.use_dora)
    for name in targets:
        _check_target(model.get_submodule(name), name, adapter_name, config, args)
    for name in saved:
        module = model.get_submodule(name)
        if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            raise ValueError(f"{name} already holds a copy for {adapter_name!r}, which model.peft_config does not "
                             "list; choose another name.")
    configs = getattr(model, "peft_config", None) or {}
    if is_pissa(config.init_lora_weights) and configs:
        warnings.warn(f"PiSSA changes the base weights, so the model's other adapters {list(configs)} no longer "
                      "compute what they were trained to; use PiSSA alone, or save it converted to a plain LoRA "
                      "(save_adapter(..., path_initial_model_for_weight_conversion=...)).", stacklevel=2)
    bases = [m.base_layer if isinstance(m, LoRALayer) else m for m in map(model.get_submodule, targets)]
    restore = _checkpoint(model, [b.weight for b in bases] if is_pissa(config.init_lora_weights) else [])
    try:
        for name in targets:
            module = model.get_submodule(name)
            if isinstance(module, LoRALayer):
                module.update_layer(adapter_name, **args)
            elif isinstance(module, nn.Embedding):
                _set_module(model, name, LoRAEmbedding(module, adapter_name=adapter_name, **args))
            else:
                _set_module(model, name, LoRALinear(module, adapter_name=adapter_name, **args))
        for name in saved:
            module = model.get_submodule(name)
            if isinstance(module, ModulesToSaveWrapper):
                module.update(adapter_name)
            else:
                _set_module(model, name, ModulesToSaveWrapper(module, adapter_name))
        configs[adapter_name] = config
        model.peft_config = configs
        if len(configs) == 1:
            mark_only_lora_as_trainable(model, config.bias)
    except BaseException:
        restore()
        raise
    return model


def mark_only_lora_as_trainable(model: nn.Module, bias: str = "none") -> nn.Module:
    """Freeze every parameter except the active LoRA matrices, the chosen biases and saved modules
    (loralib's and litgpt's name for it); switched-off adapters stay frozen. Returns ``model``."""
    if not isinstance(bias, str):
        raise TypeError(f"bias must be one of {BIASES}, got {bias!r} ({type(bias).__name__}).")
    if bias not in BIASES:
        raise ValueError(f"bias must be 'none', 'all' or 'lora_only', got {bias!r}.")
    layers = _require_lora(model)
    model.requires_grad_(False)
    for layer in layers:
        _set_trainable(layer, [] if layer.disable_adapters else layer.active_adapters)
        if bias == "lora_only" and getattr(layer.base_layer, "bias", None) is not None:
            layer.base_layer.bias.requires_grad_(True)
    saved = [n for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    if bias == "all":  # every bias, except inside saved modules: their copies train whole, the original never
        for name, p in model.named_parameters():
            if name.endswith("bias") and not any(name.startswith(s + ".") for s in saved):
                p.requires_grad_(True)
    for m in _saved(model):
        m.enable_adapters(not m.disabled)  # the active copy trains, unless switched off
    return model


