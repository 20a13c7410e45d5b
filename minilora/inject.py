r"""Putting LoRA into a real model, in place, and taking it out again.  (Chapter 04)

``inject_lora(model, config)`` walks ``model.named_modules()`` and replaces every layer that
``config.target_modules`` selects by a ``LoRALinear`` (for ``nn.Linear`` / ``Conv1D`` / NF4) or a
``LoRAEmbedding`` (for ``nn.Embedding``) that wraps it as ``base_layer``. Everything is then frozen
except the LoRA matrices, the biases that ``config.bias`` names, and ``config.modules_to_save``.

For a model with parameters :math:`\theta_0` this trains only
:math:`\sum_{\text{targets}} r (d_{in} + d_{out})` numbers. Unlike PEFT's ``get_peft_model``, which
wraps the model in a ``PeftModel``, ``inject_lora`` changes the model in place: it stays a normal
transformers model, whose ``forward``, ``generate`` and ``save_pretrained`` still work, and the
configs sit in ``model.peft_config`` (a dict by adapter name, as in PEFT).

``merge_and_unload`` folds every active update into its base weight and puts the plain base
layers back, so the result has no trace of LoRA and runs exactly as fast as the original.
"""
from __future__ import annotations

import warnings
from contextlib import ExitStack, contextmanager
from typing import Iterator, Sequence

from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import DEFAULT_TARGETS, LoRAConfig, name_matches
from .dora import refuse_dora
from .embedding import LoRAEmbedding
from .layers import LoRALayer, LoRALinear
from .modules_to_save import ModulesToSaveWrapper
from .pissa import check_pissa, is_pissa

__all__ = ["HEAD_NAMES", "output_head_names", "resolve_targets", "inject_lora",
           "lora_layers", "mark_only_lora_as_trainable", "merge_adapter", "unmerge_adapter", "merge_and_unload",
           "unload", "disable_adapter", "set_module", "short_names"]

#: Names of output heads: "all-linear" leaves them out, as PEFT does.
HEAD_NAMES = ("lm_head", "classifier", "score", "qa_outputs", "cls")


def output_head_names(model: nn.Module) -> set[str]:
    """Names of the output head(s): the LM head (``get_output_embeddings``) and modules named as in
    ``HEAD_NAMES``, with everything inside them."""
    heads = set()
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    for name, module in model.named_modules():
        if (out is not None and module is out) or name.rsplit(".", 1)[-1] in HEAD_NAMES \
                or name.split(".")[0] in HEAD_NAMES:
            heads.add(name)
    return heads


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Layers LoRA can wrap (or has wrapped), skipping the insides of LoRA layers and saved modules."""
    out, skip = [], []
    for name, module in model.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        if isinstance(module, (LoRALayer, ModulesToSaveWrapper)):
            skip.append(name)
        if isinstance(module, (nn.Linear, nn.Embedding, Conv1D, LoRALayer)) or getattr(module, "is_quantized", False):
            out.append((name, module))  # is_quantized: an NF4 linear (chapter 08), for QLoRA
    return out


def short_names(names: list[str]) -> str:
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


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _is_embedding(module: nn.Module) -> bool:
    return isinstance(module, (nn.Embedding, LoRAEmbedding))


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
    if spec == "all-linear":
        heads = output_head_names(model)
        chosen = [n for n, m in cands if not _is_embedding(m) and n not in heads]
    else:
        chosen = [n for n, _ in cands if name_matches(n, spec)]
    matched = len(chosen)
    if config.exclude_modules is not None:
        chosen = [n for n in chosen if not name_matches(n, config.exclude_modules)]
    if chosen:
        return chosen
    if matched:
        raise ValueError(f"target_modules={spec!r} matched {matched} layers, but exclude_modules="
                         f"{config.exclude_modules!r} excluded every one of them; narrow exclude_modules.")
    linear = [n for n, m in cands if not _is_embedding(m)]
    hint = (" A string is a regular expression that must match the *whole* module name (re.fullmatch), "
            "e.g. r'.*\\.(query|value)'; or pass a list of names." if isinstance(spec, str) else "")
    raise ValueError(f"target_modules={spec!r} matched nothing; linear layers in this model: {short_names(linear)}. "
                     f"Embeddings: {short_names([n for n, m in cands if _is_embedding(m)])}." + hint)


def inject_lora(model: nn.Module, config: LoRAConfig, adapter_name: str = "default") -> nn.Module:
    """Wrap the layers ``config`` selects with LoRA, in place; freeze the rest; return ``model``.

    Called again with another ``adapter_name``, it adds a second adapter to the same layers
    (it stays inactive until ``minilora.set_adapter``)."""
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a minilora.LoRAConfig, got {type(config).__name__}.")
    configs = getattr(model, "peft_config", None) or {}
    if adapter_name in configs:
        raise ValueError(f"the model already has an adapter named {adapter_name!r}; choose another name "
                         "or delete it first.")
    targets = resolve_targets(model, config)
    for name in targets:  # DoRA and PiSSA (chapter 09) are refused before the model changes
        base = model.get_submodule(name)
        base = base.base_layer if isinstance(base, LoRALayer) else base
        if config.use_dora:
            refuse_dora(base, name)
        if is_pissa(config.init_lora_weights):
            dims = (base.in_features, base.out_features) if hasattr(base, "in_features") else tuple(base.weight.shape)
            check_pissa(base, config.r, dims, name)  # Conv1D's weight is (in, out)
    if is_pissa(config.init_lora_weights) and configs:
        warnings.warn(f"PiSSA changes the base weights, so the model's other adapters {list(configs)} no longer "
                      "compute what they were trained to; use PiSSA alone, or save it converted to a plain LoRA "
                      "(save_adapter(..., path_initial_model_for_weight_conversion=...)).", stacklevel=2)
    kw = dict(r=config.r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
              init_lora_weights=config.init_lora_weights, use_rslora=config.use_rslora)
    linear_kw = dict(kw, use_dora=config.use_dora)
    for name in targets:
        module = model.get_submodule(name)
        if isinstance(module, LoRALayer):
            module.update_layer(adapter_name, **(kw if isinstance(module, LoRAEmbedding) else linear_kw))
        elif isinstance(module, nn.Embedding):
            set_module(model, name, LoRAEmbedding(module, adapter_name=adapter_name, **kw))
        else:
            set_module(model, name, LoRALinear(module, adapter_name=adapter_name, **linear_kw))
    for key in config.modules_to_save or []:
        names = [n for n, _ in model.named_modules() if name_matches(n, [key])
                 and ".modules_to_save." not in n and not n.endswith(".original_module")]
        if not names:
            raise ValueError(f"modules_to_save={key!r} matched no module; top-level modules: "
                             f"{[n for n, _ in model.named_children()]}.")
        for n in names:
            module = model.get_submodule(n)
            if isinstance(module, ModulesToSaveWrapper):
                module.update(adapter_name)
            else:
                set_module(model, n, ModulesToSaveWrapper(module, adapter_name))
    configs[adapter_name] = config
    model.peft_config = configs
    if len(configs) == 1:
        mark_only_lora_as_trainable(model, config.bias)
    return model


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALayer]]:
    """Every ``(name, layer)`` with LoRA in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer):
            yield name, module


def _require_lora(model: nn.Module) -> list[LoRALayer]:
    layers = [m for _, m in lora_layers(model)]
    if not layers:
        raise ValueError("this model has no LoRA layers; call minilora.inject_lora(model, config) first.")
    return layers


def mark_only_lora_as_trainable(model: nn.Module, bias: str = "none") -> None:
    """Freeze every parameter except the active LoRA matrices, the chosen biases and saved modules
    (loralib's and litgpt's name for it)."""
    if bias not in ("none", "all", "lora_only"):
        raise ValueError(f"bias must be 'none', 'all' or 'lora_only', got {bias!r}.")
    layers = _require_lora(model)
    model.requires_grad_(False)
    for layer in layers:
        layer.set_adapter(layer.active_adapters)  # the active adapters' A and B train
        if bias == "lora_only" and getattr(layer.base_layer, "bias", None) is not None:
            layer.base_layer.bias.requires_grad_(True)
    saved = [n for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    if bias == "all":  # every bias, except inside saved modules: their copies train whole, the original never
        for name, p in model.named_parameters():
            if name.endswith("bias") and not any(name.startswith(s + ".") for s in saved):
                p.requires_grad_(True)
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            module.set_adapter([module.active_adapter] if module.active_adapter else [])


def merge_adapter(model: nn.Module, adapter_names: Sequence[str] | None = None) -> nn.Module:
    """Fold the active adapters (or ``adapter_names``) into the base weights (exact, reversible)."""
    for layer in _require_lora(model):
        names = [n for n in (layer.active_adapters if adapter_names is None else adapter_names) if n in layer.r]
        if any(n not in layer.merged_adapters for n in names):
            layer.merge(adapter_names=names)
    return model


def unmerge_adapter(model: nn.Module) -> nn.Module:
    """Undo ``merge_adapter``: subtract the merged updates again."""
    for layer in _require_lora(model):
        if layer.merged:
            layer.unmerge()
    return model


def _unload(model: nn.Module, merge: bool, adapter_names: Sequence[str] | None) -> nn.Module:
    layers = dict(lora_layers(model))
    if not layers:
        raise ValueError("this model has no LoRA layers; call minilora.inject_lora(model, config) first.")
    for name, layer in layers.items():
        if merge:
            names = [n for n in (layer._live_adapters() if adapter_names is None else adapter_names) if n in layer.r]
            if any(n not in layer.merged_adapters for n in names):
                layer.merge(adapter_names=names)
        elif layer.merged:
            layer.unmerge()
        set_module(model, name, layer.base_layer)
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            keep = module.active_adapter if merge else None
            set_module(model, name, module.modules_to_save[keep] if keep else module.original_module)
    model.requires_grad_(False)
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def merge_and_unload(model: nn.Module, adapter_names: Sequence[str] | None = None) -> nn.Module:
    """Merge the active adapters (or ``adapter_names``) and put the plain base layers back: a LoRA-free
    model, with the active adapter's copy of each saved module (e.g. its trained head)."""
    return _unload(model, merge=True, adapter_names=adapter_names)


def unload(model: nn.Module) -> nn.Module:
    """Take LoRA out without merging: the base model as it was before ``inject_lora``."""
    return _unload(model, merge=False, adapter_names=None)


@contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes as its base: LoRA paths and saved copies are off
    (PEFT: ``with model.disable_adapter():``). Merged updates are taken out and put back."""
    layers = _require_lora(model)
    saved = [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)]
    with ExitStack() as stack:
        for layer in layers:
            was_merged, was_enabled = list(layer.merged_adapters), not layer.disable_adapters
            if was_merged:
                layer.unmerge()
                stack.callback(layer.merge, adapter_names=was_merged)
            layer.enable_adapters(False)
            stack.callback(layer.enable_adapters, was_enabled)
        for m in saved:
            stack.callback(setattr, m, "disabled", m.disabled)
            m.disabled = True
        yield model
