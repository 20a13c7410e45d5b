"""Putting LoRA into a real model, in place, and taking it out again.  (Chapter 04)

``inject_lora(model, config)`` walks ``model.named_modules()``, and replaces every layer that
``config.target_modules`` selects by a ``LoRALinear`` (for ``nn.Linear`` / ``Conv1D``) or a
``LoRAEmbedding`` (for ``nn.Embedding``) that wraps it. Then everything is frozen except the
LoRA matrices, the biases that ``config.bias`` names, and ``config.modules_to_save``.

For a model with parameters :math:`\\theta_0` this trains only
:math:`\\sum_{\\text{targets}} r (d_{in} + d_{out})` numbers. The model stays a normal
transformers model: its ``forward``, ``generate`` and ``save_pretrained`` still work.

``merge_and_unload`` folds every active update into its base weight and puts the plain base
layers back, so the result has no trace of LoRA and runs exactly as fast as the original.
"""
from __future__ import annotations

import copy
import re
from contextlib import ExitStack, contextmanager
from typing import Iterator

from torch import nn

from .config import DEFAULT_TARGETS, LoRAConfig
from .layers import Conv1D, LoRAEmbedding, LoRALayer, LoRALinear

HEAD_NAMES = ("lm_head", "classifier", "score", "qa_outputs", "cls")


class ModulesToSave(nn.Module):
    """A fully trainable copy of a module (e.g. a new classifier head), one per adapter, as PEFT.

    The original stays frozen inside as ``original_module``; ``modules_to_save[name]`` is the copy
    that adapter ``name`` trains and saves. With no active copy the original is used."""

    def __init__(self, module: nn.Module, adapter_name: str):
        super().__init__()
        self.original_module = module
        for p in module.parameters():
            p.requires_grad_(False)
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disabled = False
        self.add(adapter_name)

    def add(self, adapter_name: str) -> None:
        """Make a trainable copy for ``adapter_name`` (active only if no other copy is)."""
        if adapter_name not in self.modules_to_save:
            self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module)
        if self.active_adapter is None:
            self.active_adapter = adapter_name
        for p in self.modules_to_save[adapter_name].parameters():
            p.requires_grad_(adapter_name == self.active_adapter)

    def set_adapter(self, names: str | list[str]) -> None:
        names = [names] if isinstance(names, str) else list(names)
        chosen = [n for n in names if n in self.modules_to_save]
        if len(chosen) > 1:
            raise ValueError(f"adapters {chosen} each have their own copy of this module; only one can be "
                             "active at a time, so they cannot be stacked.")
        self.active_adapter = chosen[0] if chosen else None
        for n, m in self.modules_to_save.items():
            for p in m.parameters():
                p.requires_grad_(n == self.active_adapter)

    def forward(self, *args, **kwargs):
        if self.disabled or self.active_adapter is None:
            return self.original_module(*args, **kwargs)
        return self.modules_to_save[self.active_adapter](*args, **kwargs)


def _matches(name: str, spec: list[str] | str) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == key or name.endswith("." + key) for key in spec)


def _head_names(model: nn.Module) -> set[str]:
    """Names of the output head(s): the LM head / classifier, never adapted by 'all-linear'."""
    heads = set()
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if (out is not None and module is out) or last in HEAD_NAMES or name.split(".")[0] in HEAD_NAMES:
            heads.add(name)
    return heads


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Layers LoRA can wrap (or has wrapped), skipping the insides of LoRA and saved modules."""
    out, skip = [], []
    for name, module in model.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        if isinstance(module, (*LoRALayer, ModulesToSave)):
            skip.append(name)
        if (isinstance(module, (nn.Linear, nn.Embedding, *LoRALayer)) or (Conv1D and isinstance(module, Conv1D))
                or getattr(module, "is_quantized", False)):  # an NF4 linear (chapter 08): QLoRA
            out.append((name, module))
    return out


def _short_names(names: list[str]) -> str:
    """``query, key, value, attention.output.dense, ...``: each layer's name after its block
    number, shortened to the fewest trailing parts that still tell it from the others."""
    full: dict[str, None] = {}
    for n in names:
        parts = n.split(".")
        digits = [i for i, p in enumerate(parts) if p.isdigit()]
        full[".".join(parts[digits[-1] + 1:]) if digits else n] = None
    out = []
    for s in full:
        parts = s.split(".")
        for k in range(1, len(parts) + 1):
            tail = ".".join(parts[-k:])
            if not any(o != s and ".".join(o.split(".")[-k:]) == tail for o in full):
                break
        out.append(tail)
    return ", ".join(out)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def resolve_targets(model: nn.Module, config: LoRAConfig) -> list[str]:
    """The names of the modules ``config`` selects in ``model`` (raises if there are none)."""
    spec = config.target_modules
    if spec is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise ValueError(f"target_modules=None has no default for model type {model_type!r}; "
                             "name the layers, e.g. target_modules=['q_proj', 'v_proj'] or 'all-linear'.")
        spec = DEFAULT_TARGETS[model_type]
    cands = _candidates(model)
    heads = _head_names(model)
    if spec == "all-linear":
        chosen = [n for n, m in cands if not isinstance(m, (nn.Embedding, LoRAEmbedding)) and n not in heads]
    else:
        chosen = [n for n, _ in cands if _matches(n, spec)]
    matched = len(chosen)
    if config.exclude_modules is not None:
        chosen = [n for n in chosen if not _matches(n, config.exclude_modules)]
    if not chosen:
        linear = [n for n, m in cands if not isinstance(m, (nn.Embedding, LoRAEmbedding))]
        if matched:
            raise ValueError(f"target_modules={spec!r} matched {matched} layers, but "
                             f"exclude_modules={config.exclude_modules!r} excluded every one of them; "
                             "narrow exclude_modules.")
        hint = (" A string is a regular expression that must match the *whole* module name "
                "(re.fullmatch), e.g. r'.*\\.(query|value)'; or pass a list of names."
                if isinstance(spec, str) and spec != "all-linear" else "")
        raise ValueError(f"target_modules={spec!r} matched nothing; linear layers in this model: "
                         f"{_short_names(linear)}. Embeddings: {_short_names([n for n, m in cands if n not in linear])}."
                         + hint)
    return chosen


def inject_lora(model: nn.Module, config: LoRAConfig, adapter_name: str = "default") -> nn.Module:
    """Wrap the layers ``config`` selects with LoRA, in place; freeze the rest; return ``model``.

    Called again with another ``adapter_name``, it adds a second adapter to the same layers
    (it stays inactive until ``minilora.adapters.set_adapter``)."""
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a minilora.LoRAConfig, got {type(config).__name__}.")
    configs = getattr(model, "lora_configs", None) or {}
    if adapter_name in configs:
        raise ValueError(f"the model already has an adapter named {adapter_name!r}; choose another name "
                         "or delete it first.")
    targets = resolve_targets(model, config)
    kw = dict(r=config.r, alpha=config.alpha, dropout=config.dropout, use_rslora=config.use_rslora, init=config.init)
    for name in targets:
        module = model.get_submodule(name)
        if isinstance(module, LoRALayer):
            module.add_adapter(adapter_name, **kw)
        elif isinstance(module, nn.Embedding):
            _set_module(model, name, LoRAEmbedding(module, adapter_name=adapter_name, **kw))
        else:
            _set_module(model, name, LoRALinear(module, adapter_name=adapter_name, **kw))
    for key in config.modules_to_save or []:
        names = [n for n, _ in model.named_modules() if (n == key or n.endswith("." + key))
                 and ".modules_to_save." not in n and not n.endswith(".original_module")]
        if not names:
            raise ValueError(f"modules_to_save={key!r} matched no module; top-level modules: "
                             f"{[n for n, _ in model.named_children()]}.")
        for n in names:
            module = model.get_submodule(n)
            if isinstance(module, ModulesToSave):
                module.add(adapter_name)
            else:
                _set_module(model, n, ModulesToSave(module, adapter_name))
    configs[adapter_name] = config
    model.lora_configs = configs
    if len(configs) == 1:
        mark_only_lora_trainable(model, config.bias)
    return model


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear | LoRAEmbedding]]:
    """Every ``(name, layer)`` with LoRA in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer):
            yield name, module


def _require_lora(model: nn.Module) -> list:
    layers = [m for _, m in lora_layers(model)]
    if not layers:
        raise ValueError("this model has no LoRA layers; call minilora.inject_lora(model, config) first.")
    return layers


def mark_only_lora_trainable(model: nn.Module, bias: str = "none") -> None:
    """Freeze every parameter except the active LoRA matrices, the chosen biases and saved modules."""
    if bias not in ("none", "all", "lora_only"):
        raise ValueError(f"bias must be 'none', 'all' or 'lora_only', got {bias!r}.")
    layers = _require_lora(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in layers:
        layer.set_adapter(layer.active_adapters)  # the active adapters' A and B train
        if bias == "lora_only" and getattr(layer.base, "bias", None) is not None:
            layer.base.bias.requires_grad_(True)
    if bias == "all":
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.requires_grad_(True)
    for module in model.modules():
        if isinstance(module, ModulesToSave):
            module.set_adapter([module.active_adapter] if module.active_adapter else [])


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; a quantized (NF4) weight, stored packed as a
    buffer, counts as the ``in * out`` numbers it stands for, as PEFT counts 4-bit weights."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    total += sum(m.in_features * m.out_features for m in model.modules() if getattr(m, "is_quantized", False))
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> None:
    """Print the counts in PEFT's exact format."""
    trainable, total = trainable_parameters(model)
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")


def merge(model: nn.Module) -> nn.Module:
    """Fold the active adapters into the base weights of every LoRA layer (exact, reversible)."""
    for layer in _require_lora(model):
        if layer._live_adapters():
            layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo ``merge``: subtract the merged updates again."""
    for layer in _require_lora(model):
        if layer.merged:
            layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapters and put the plain base layers back: a LoRA-free model."""
    layers = dict(lora_layers(model))
    if not layers:
        raise ValueError("this model has no LoRA layers; call minilora.inject_lora(model, config) first.")
    for name, layer in layers.items():
        if layer._live_adapters():
            layer.merge()
        _set_module(model, name, layer.base)
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSave):
            active = module.active_adapter
            _set_module(model, name, module.modules_to_save[active] if active else module.original_module)
    for p in model.parameters():
        p.requires_grad_(False)
    if hasattr(model, "lora_configs"):
        del model.lora_configs
    return model


@contextmanager
def disable_lora(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes as its base: LoRA paths and saved copies are off."""
    layers = _require_lora(model)
    saved = [m for m in model.modules() if isinstance(m, ModulesToSave)]
    with ExitStack() as stack:
        for layer in layers:
            stack.enter_context(layer.disable())
        old = [m.disabled for m in saved]
        for m in saved:
            m.disabled = True
        try:
            yield model
        finally:
            for m, o in zip(saved, old):
                m.disabled = o


__all__ = ["LoRAConfig", "ModulesToSave", "inject_lora", "resolve_targets", "lora_layers",
           "mark_only_lora_trainable", "trainable_parameters", "print_trainable_parameters",
           "merge", "unmerge", "merge_and_unload", "disable_lora"]
