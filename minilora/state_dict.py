r"""An adapter as a dict of tensors under PEFT's keys: ``get_peft_model_state_dict`` and
``set_peft_model_state_dict``, PEFT's two functions of those names.  (Chapter 06)

The keys are those of PEFT's adapter file (the adapter's name is not in them), for each adapted layer
the two factors of :math:`\Delta W = \frac{\alpha}{r} B A`:

* ``base_model.model.<layer>.lora_A.weight`` (r, in) and ``.lora_B.weight`` (out, r); with DoRA
  ``.lora_magnitude_vector`` (out,);
* ``base_model.model.<embedding>.lora_embedding_A`` (r, vocab) and ``.lora_embedding_B`` (dim, r);
* ``base_model.model.<module>.<param>`` for each saved module (``modules_to_save``), and the biases
  that ``bias="lora_only"`` or ``"all"`` train;
* for a prompt-learning model (chapter 10), ``prompt_embeddings``.

PEFT may also write the embedding table of an adapted embedding and, with ``bias="all"``, the saved
modules' inner copies: those keys are accepted. Loading is all or nothing: every key and shape is
checked first and every problem named (``minilora.io.load_adapter`` reads a folder through the same
check).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Callable

import torch
from torch import nn

from .adapters import _saved_modules
from .config import LoRAConfig
from .embedding import LoRAEmbedding
from .errors import UnknownAdapterError
from .inject import lora_layers
from .merge import check_not_merged
from .prompting import PromptLearningModel
from .prompting_io import prompt_state_dict, set_prompt_state_dict

__all__ = ["get_peft_model_state_dict", "set_peft_model_state_dict"]

PREFIX = "base_model.model."


def adapter_config(model: nn.Module, adapter_name: str) -> LoRAConfig:
    """The config of the model's adapter ``adapter_name``: ``TypeError`` for a model or name of the wrong type,
    ``UnknownAdapterError`` for a name the model does not hold."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}.")
    if not isinstance(adapter_name, str):
        raise TypeError(f"an adapter name is a string, got {adapter_name!r} ({type(adapter_name).__name__}).")
    configs = getattr(model, "peft_config", None) or {}
    if adapter_name not in configs:
        raise UnknownAdapterError(adapter_name, configs)
    return configs[adapter_name]


def _adapter_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """PEFT key -> the live tensor in ``model``, for everything the adapter's file holds."""
    cfg, out = adapter_config(model, adapter_name), {}
    saved = _saved_modules(model)
    for name, layer in lora_layers(model):
        if adapter_name not in layer.adapters:
            continue
        if any(name.startswith(p + ".") for p, _ in saved):
            raise ValueError(f"{name} is a LoRA layer inside a module_to_save; PEFT's format cannot express that.")
        A, B = layer.factors(adapter_name)
        if isinstance(layer, LoRAEmbedding):
            out[f"{PREFIX}{name}.lora_embedding_A"], out[f"{PREFIX}{name}.lora_embedding_B"] = A, B
        else:
            out[f"{PREFIX}{name}.lora_A.weight"], out[f"{PREFIX}{name}.lora_B.weight"] = A, B
            if adapter_name in getattr(layer, "lora_magnitude_vector", ()):  # DoRA's m (out,), under PEFT's key
                out[f"{PREFIX}{name}.lora_magnitude_vector"] = layer.lora_magnitude_vector[adapter_name].weight
        if cfg.bias == "lora_only" and getattr(layer.base_layer, "bias", None) is not None:
            out[f"{PREFIX}{name}.base_layer.bias"] = layer.base_layer.bias
    for name, m in saved:
        if adapter_name in m.modules_to_save:
            for key, t in m.modules_to_save[adapter_name].state_dict(keep_vars=True).items():
                out[f"{PREFIX}{name}.{key}"] = t
    if cfg.bias == "all":  # every bias, under its name in the model (the same as in PEFT's)
        for pname, p in model.named_parameters():
            if pname.endswith("bias") and not any(pname.startswith(s + ".") for s, _ in saved):
                out[PREFIX + pname] = p
    return out


def get_peft_model_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The tensors ``save_adapter`` writes, under PEFT's names (detached copies), as PEFT's function
    of the same name returns them; for a prompt-learning model ``{"prompt_embeddings": ...}``."""
    if isinstance(model, PromptLearningModel):
        return prompt_state_dict(model, adapter_name)
    return {k: v.detach().cpu().contiguous().clone() for k, v in _adapter_tensors(model, adapter_name).items()}


def set_peft_model_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                              adapter_name: str = "default") -> nn.Module:
    """Copy ``state_dict`` (tensors under PEFT's keys, as ``get_peft_model_state_dict`` returns them, from
    minilora or PEFT) into the model's existing adapter ``adapter_name``; return ``model``.

    Everything is checked before anything is copied: an unknown adapter is an ``UnknownAdapterError``;
    missing keys, unexpected keys and wrong shapes are one ``ValueError`` that names every one of them.
    PEFT's ``peft.utils.set_peft_model_state_dict`` of the same name loads what fits, ignores missing keys
    and returns a ``load_result``; minilora loads all or nothing and returns the model, as every function
    that changes a model does. A prompt-learning model takes ``{"prompt_embeddings": ...}``."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict of tensors (get_peft_model_state_dict's output), got "
                        f"{type(state_dict).__name__}.")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"state_dict maps names to tensors; these entries are not str -> torch.Tensor: {bad[:5]}.")
    if isinstance(model, PromptLearningModel):
        return set_prompt_state_dict(model, dict(state_dict), adapter_name)
    adapter_config(model, adapter_name)
    check_not_merged(model, "loading weights into an adapter")
    fill_adapter(model, dict(state_dict), adapter_name, lambda lines: ValueError(
        f"the state dict does not fit the model's adapter {adapter_name!r}:\n" + "\n".join(lines) +
        "\nPass the state dict of an adapter with the same config on the same base model."), "state dict")
    return model


def _optional_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """Keys PEFT may write beyond ours: the embedding table of an adapted embedding
    (``save_embedding_layers``), and with ``bias="all"`` the saved modules' inner copies."""
    out = {}
    for name, layer in lora_layers(model):
        if isinstance(layer, LoRAEmbedding) and adapter_name in layer.adapters:
            out[f"{PREFIX}{name}.base_layer.weight"] = layer.base_layer.weight
    for name, m in _saved_modules(model):
        if adapter_name in m.modules_to_save:
            for key, t in m.original_module.state_dict(keep_vars=True).items():
                out[f"{PREFIX}{name}.original_module.{key}"] = t
            for key, t in m.modules_to_save[adapter_name].state_dict(keep_vars=True).items():
                out[f"{PREFIX}{name}.modules_to_save.{key}"] = t
    return out


def _problems(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
              optional: dict[str, torch.Tensor], source: str = "file") -> list[str]:
    """One line per key that does not fit: missing, unexpected, of the wrong shape, or not floating point."""
    lines = []
    places = {**optional, **expected}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in places]
    wrong = [k for k in found if k in places and tuple(found[k].shape) != tuple(places[k].shape)]
    not_float = [k for k in found if k in places and not found[k].is_floating_point()]
    if missing:
        lines.append(f"missing from the {source} ({len(missing)}):")
        lines += [f"  {k}  (the model expects shape {tuple(expected[k].shape)})" for k in missing]
    if unexpected:
        lines.append(f"unexpected in the {source}, no such place in the model ({len(unexpected)}):")
        lines += [f"  {k}  (shape {tuple(found[k].shape)})" for k in unexpected]
    if wrong:
        lines.append(f"shape mismatch ({len(wrong)}):")
        lines += [f"  {k}  {source} {tuple(found[k].shape)}, model {tuple(places[k].shape)}"
                  for k in wrong]
    if not_float:
        lines.append(f"not floating point ({len(not_float)}):")
        lines += [f"  {k}  ({found[k].dtype})" for k in not_float]
    return lines


def fill_adapter(model: nn.Module, found: dict[str, torch.Tensor], adapter_name: str,
                 refuse: Callable[[list[str]], Exception], source: str = "file") -> None:
    """Copy ``found`` into adapter ``adapter_name`` if every key and shape fits, else raise ``refuse(lines)``.
    If a copy still fails, the tensors already copied get their old values back."""
    expected, optional = _adapter_tensors(model, adapter_name), _optional_tensors(model, adapter_name)
    lines = _problems(found, expected, optional, source)
    if lines:
        raise refuse(lines)
    pairs = [(key, expected.get(key, optional.get(key)), t) for key, t in found.items()]
    for key, dest, t in pairs:
        if key.endswith(".base_layer.weight") and not torch.equal(dest, t.to(dest.device, dest.dtype)):
            warnings.warn(f"{key}: the file carries its own embedding table, which differs from this "
                          "model's; it is loaded into the base model (as PEFT does).", stacklevel=3)
    backup = [dest.detach().clone() for _, dest, _ in pairs]
    with torch.no_grad():
        try:
            for _, dest, t in pairs:
                dest.copy_(t.to(dest.dtype))
        except BaseException:
            for (_, dest, _), old in zip(pairs, backup):
                dest.copy_(old)
            raise
