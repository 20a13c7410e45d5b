r"""Prompt- and prefix-tuning adapters in PEFT's file format.  (Chapter 10)

``minilora.io.save_adapter`` and ``load_adapter`` hand prompt learning over to this module (which
imports only ``errors``, ``files``, ``prompting`` and ``prompting_config``, so there is no cycle), so the
same two calls save and load LoRA, prompt tuning and prefix tuning; ``minilora.state_dict``'s
``get_peft_model_state_dict`` and ``set_peft_model_state_dict`` take ``prompt_embeddings`` through it.
A folder holds exactly what ``peft.PeftModel.save_pretrained`` writes:

* ``adapter_config.json``: the config's PEFT fields (``peft_type`` ``"PROMPT_TUNING"`` or
  ``"PREFIX_TUNING"``, ``task_type: "CAUSAL_LM"``, ``num_virtual_tokens``, ``num_layers``,
  ``token_dim``, ``num_attention_heads``, ``num_transformer_submodules: 1``, ...), with
  ``inference_mode: true``;
* ``adapter_model.safetensors`` with one tensor, ``prompt_embeddings``: the soft prompt
  (n, hidden), or the prefix of every layer (n, layers · 2 · token_dim). With ``prefix_projection``
  the file holds the MLP's output, so a loaded adapter is that projected prefix (as in PEFT).

Loading reads JSON and safetensors only, checks that the file's sizes are this model's, and
changes nothing in the model when it refuses: ``TypeError`` for a wrong type, ``ValueError`` for a model
that has a prompt already or a bad adapter name, ``UnknownAdapterError`` for a name the model does not
hold, ``AdapterFileError`` for every problem with the folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .errors import AdapterFileError
from .files import CONFIG_NAME, WEIGHTS_NAME, check_adapter_folder, read_tensors, write_atomic
from .prompting import PromptLearningModel
from .prompting_config import PrefixTuningConfig, PromptTuningConfig, check_adapter_name, fill_from_model

__all__ = ["save_prompt_adapter", "load_prompt_adapter"]

_PROMPT_KEY = "prompt_embeddings"
_CONFIGS = {"PROMPT_TUNING": PromptTuningConfig, "PREFIX_TUNING": PrefixTuningConfig}
_SIZES = ("num_layers", "token_dim", "num_attention_heads")


def check_save_folder(directory) -> Path:
    """``directory`` as a ``Path`` to save into: ``TypeError`` if it is not a path, ``AdapterFileError`` if it
    names an existing file."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"an adapter folder is a path (str or pathlib.Path), got {type(directory).__name__}.")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise AdapterFileError(f"{str(directory)!r} is a file; save the adapter into a folder (it is created if "
                               "needed).")
    return directory


def prompt_peft_type(directory: str | os.PathLike) -> str | None:
    """``"PROMPT_TUNING"`` or ``"PREFIX_TUNING"`` if ``directory`` holds such an adapter, else None."""
    try:
        cfg = json.loads((Path(directory) / CONFIG_NAME).read_text())
    except (OSError, ValueError):  # no folder, no file, not JSON: minilora.io reports those
        return None
    kind = cfg.get("peft_type") if isinstance(cfg, dict) else None
    return kind if kind in _CONFIGS else None


def save_prompt_adapter(model: PromptLearningModel, directory: str | os.PathLike,
                        adapter_name: str = "default") -> Path:
    """Write the prompt or prefix ``adapter_name`` of ``model`` to ``directory`` in PEFT's format."""
    if not isinstance(model, PromptLearningModel):
        raise TypeError(f"save_prompt_adapter saves a prompt-learning model, got {type(model).__name__}; "
                        "save LoRA adapters with minilora.save_adapter.")
    directory = check_save_folder(directory)
    tensors = prompt_state_dict(model, adapter_name)
    config = dataclasses.replace(model.peft_config[adapter_name], inference_mode=True).to_dict()
    write_atomic(directory / WEIGHTS_NAME, safetensors_bytes(tensors, metadata={"format": "pt"}))
    write_atomic(directory / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def prompt_state_dict(model: PromptLearningModel, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """``{"prompt_embeddings": tensor}``, what PEFT's ``get_peft_model_state_dict`` returns for a prompt."""
    if not isinstance(adapter_name, str):
        raise TypeError(f"an adapter name is a string, got {adapter_name!r} ({type(adapter_name).__name__}).")
    return {_PROMPT_KEY: model.get_prompt_embedding_to_save(adapter_name).contiguous()}


def set_prompt_state_dict(model: PromptLearningModel, state_dict: dict[str, torch.Tensor],
                          adapter_name: str = "default") -> PromptLearningModel:
    """Copy ``state_dict["prompt_embeddings"]`` into the prompt or prefix ``adapter_name``, checked first."""
    if not isinstance(adapter_name, str):
        raise TypeError(f"an adapter name is a string, got {adapter_name!r} ({type(adapter_name).__name__}).")
    name = model._known(adapter_name)
    encoder = model.prompt_encoder[name]
    if getattr(encoder, "prefix_projection", False):
        raise ValueError(f"adapter {name!r} computes its prefix through prefix_projection's MLP, which a state "
                         "dict (the MLP's output) does not hold; load the saved folder with load_adapter instead.")
    weight = encoder.embedding.weight
    if set(state_dict) != {_PROMPT_KEY}:
        raise ValueError(f"a prompt adapter's state dict holds one tensor, {_PROMPT_KEY!r} of shape "
                         f"{tuple(weight.shape)}; this one holds {sorted(state_dict)}.")
    t = state_dict[_PROMPT_KEY]
    if tuple(t.shape) != tuple(weight.shape) or not t.is_floating_point():
        raise ValueError(f"{_PROMPT_KEY} has shape {tuple(t.shape)} ({t.dtype}); adapter {name!r} needs "
                         f"{tuple(weight.shape)} (floating point): it was saved from another model or config.")
    with torch.no_grad():
        weight.copy_(t.to(weight.dtype))
    return model


def _config(directory: Path) -> PromptTuningConfig | PrefixTuningConfig:
    path = directory / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AdapterFileError(f"cannot read {path} ({e}); save the adapter again.") from None
    kind = raw.get("peft_type") if isinstance(raw, dict) else None
    if kind not in _CONFIGS:
        raise AdapterFileError(f"{path} has peft_type={kind!r}; this loader reads 'PROMPT_TUNING' and "
                               "'PREFIX_TUNING' adapters (LoRA ones go through minilora.load_adapter).")
    names = {f.name for f in dataclasses.fields(_CONFIGS[kind])} - {"inference_mode"}
    try:
        return _CONFIGS[kind](**{k: v for k, v in raw.items() if k in names}, inference_mode=True)
    except (TypeError, ValueError) as e:
        raise AdapterFileError(f"{path} is not a valid {kind} config: {e}") from None


def load_prompt_adapter(model: nn.Module, directory: str | os.PathLike,
                        adapter_name: str = "default") -> PromptLearningModel:
    """The base ``model`` wrapped with the prompt or prefix saved in ``directory`` (by minilora or PEFT).

    Refuses, saying what to do, a file saved from a model of other sizes, a file with other tensors or
    shapes, and a model that has a prompt already; the model is then left as it was. Every problem with the
    folder is an ``AdapterFileError``."""
    if isinstance(model, PromptLearningModel):
        raise ValueError("this model has a prompt already; load the adapter into the base model "
                         "(model.base_model).")
    if not isinstance(model, nn.Module) or not callable(getattr(model, "get_input_embeddings", None)) \
            or getattr(model, "config", None) is None:
        raise TypeError(f"a prompt adapter loads into a transformers causal LM, got {type(model).__name__}.")
    check_adapter_name(adapter_name)
    directory = check_adapter_folder(directory)
    config = _config(directory)
    base = config.base_model_name_or_path
    here = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
    saved_from = f"saved from base model {base!r}" if base else "saved from a base model it does not name"
    try:
        ours = fill_from_model(dataclasses.replace(config, **dict.fromkeys(_SIZES)), model)
    except (AttributeError, ValueError) as e:
        raise AdapterFileError(f"cannot fit the adapter in {directory} to this model ({here}): {e}") from None
    differ = [f"{k}: file {getattr(config, k)}, model {getattr(ours, k)}" for k in _SIZES
              if getattr(config, k) is not None and getattr(config, k) != getattr(ours, k)]
    if differ:
        raise AdapterFileError(f"the adapter in {directory} ({saved_from}) does not fit this model ({here}): "
                               f"{'; '.join(differ)}. Load it into the model it was trained on.")
    found = read_tensors(directory)
    n = config.num_virtual_tokens
    shape = (n, ours.token_dim) if config.peft_type == "PROMPT_TUNING" else (n, ours.num_layers * 2 * ours.token_dim)
    if set(found) != {_PROMPT_KEY}:
        raise AdapterFileError(f"{directory / WEIGHTS_NAME} should hold one tensor, {_PROMPT_KEY!r} of shape {shape}; "
                               f"it holds {sorted(found)}. Is it a {config.peft_type} adapter? Save it again.")
    got = found[_PROMPT_KEY]
    if tuple(got.shape) != shape or not got.is_floating_point():
        raise AdapterFileError(f"{_PROMPT_KEY} in {directory / WEIGHTS_NAME} has shape {tuple(got.shape)}; this model "
                               f"and num_virtual_tokens={n} need {shape} ({saved_from}), in floating point (it is "
                               f"{got.dtype}). Load it into the model it was trained on, with the config it was "
                               "saved with.")
    wrapper = PromptLearningModel(model, ours, adapter_name)
    weight = wrapper.prompt_encoder[adapter_name].embedding.weight
    with torch.no_grad():
        weight.copy_(found[_PROMPT_KEY].to(weight.dtype))
    return wrapper
