r"""Prompt- and prefix-tuning adapters in PEFT's file format.  (Chapter 10)

``minilora.io.save_adapter`` and ``load_adapter`` hand prompt learning over to this module (which
imports only ``files`` and ``prompting``, so there is no cycle), so the
same two calls save and load LoRA, prompt tuning and prefix tuning. A folder holds exactly what
``peft.PeftModel.save_pretrained`` writes:

* ``adapter_config.json``: the config's PEFT fields (``peft_type`` ``"PROMPT_TUNING"`` or
  ``"PREFIX_TUNING"``, ``task_type: "CAUSAL_LM"``, ``num_virtual_tokens``, ``num_layers``,
  ``token_dim``, ``num_attention_heads``, ``num_transformer_submodules: 1``, ...), with
  ``inference_mode: true``;
* ``adapter_model.safetensors`` with one tensor, ``prompt_embeddings``: the soft prompt
  (n, hidden), or the prefix of every layer (n, layers · 2 · token_dim). With ``prefix_projection``
  the file holds the MLP's output, so a loaded adapter is that projected prefix (as in PEFT).

Loading reads JSON and safetensors only, checks that the file's sizes are this model's, and
changes nothing in the model when it refuses.
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
from .files import CONFIG_NAME, WEIGHTS_NAME, read_tensors, write_atomic
from .prompting import PrefixTuningConfig, PromptLearningModel, PromptTuningConfig, fill_from_model

__all__ = ["prompt_peft_type", "save_prompt_adapter", "load_prompt_adapter", "PROMPT_KEY"]

PROMPT_KEY = "prompt_embeddings"
CONFIGS = {"PROMPT_TUNING": PromptTuningConfig, "PREFIX_TUNING": PrefixTuningConfig}
SIZES = ("num_layers", "token_dim", "num_attention_heads")


def prompt_peft_type(directory: str | os.PathLike) -> str | None:
    """``"PROMPT_TUNING"`` or ``"PREFIX_TUNING"`` if ``directory`` holds such an adapter, else None."""
    try:
        cfg = json.loads((Path(directory) / CONFIG_NAME).read_text())
    except (OSError, ValueError):  # no folder, no file, not JSON: minilora.io reports those
        return None
    kind = cfg.get("peft_type") if isinstance(cfg, dict) else None
    return kind if kind in CONFIGS else None


def save_prompt_adapter(model: PromptLearningModel, directory: str | os.PathLike,
                        adapter_name: str = "default") -> Path:
    """Write the prompt or prefix ``adapter_name`` of ``model`` to ``directory`` in PEFT's format."""
    if adapter_name not in model.peft_config:
        raise ValueError(f"the model has no adapter named {adapter_name!r}; it has {list(model.peft_config)}.")
    directory = Path(directory)
    config = dataclasses.replace(model.peft_config[adapter_name], inference_mode=True).to_dict()
    tensors = {PROMPT_KEY: model.get_prompt_embedding_to_save(adapter_name).contiguous()}
    write_atomic(directory / WEIGHTS_NAME, safetensors_bytes(tensors, metadata={"format": "pt"}))
    write_atomic(directory / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def _config(directory: Path) -> PromptTuningConfig | PrefixTuningConfig:
    path = directory / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AdapterFileError(f"cannot read {path} ({e}); save the adapter again.") from None
    kind = raw.get("peft_type") if isinstance(raw, dict) else None
    if kind not in CONFIGS:
        raise AdapterFileError(f"{path} has peft_type={kind!r}; this loader reads 'PROMPT_TUNING' and "
                               "'PREFIX_TUNING' adapters (LoRA ones go through minilora.load_adapter).")
    names = {f.name for f in dataclasses.fields(CONFIGS[kind])} - {"inference_mode"}
    try:
        return CONFIGS[kind](**{k: v for k, v in raw.items() if k in names}, inference_mode=True)
    except (TypeError, ValueError) as e:
        raise AdapterFileError(f"{path} is not a valid {kind} config: {e}") from None


def load_prompt_adapter(model: nn.Module, directory: str | os.PathLike,
                        adapter_name: str = "default") -> PromptLearningModel:
    """The base ``model`` wrapped with the prompt or prefix saved in ``directory`` (by minilora or PEFT).

    Refuses, saying what to do, a file saved from a model of other sizes, a file with other tensors or
    shapes, and a model that has a prompt already; the model is then left as it was."""
    directory = Path(directory)
    if isinstance(model, PromptLearningModel):
        raise AdapterFileError("this model has a prompt already; load the adapter into the base model "
                               "(model.base_model).")
    config = _config(directory)
    base = config.base_model_name_or_path
    here = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
    saved_from = f"saved from base model {base!r}" if base else "saved from a base model it does not name"
    try:
        ours = fill_from_model(dataclasses.replace(config, **dict.fromkeys(SIZES)), model)
    except (AttributeError, ValueError) as e:
        raise AdapterFileError(f"cannot fit the adapter in {directory} to this model ({here}): {e}") from None
    differ = [f"{k}: file {getattr(config, k)}, model {getattr(ours, k)}" for k in SIZES
              if getattr(config, k) is not None and getattr(config, k) != getattr(ours, k)]
    if differ:
        raise AdapterFileError(f"the adapter in {directory} ({saved_from}) does not fit this model ({here}): "
                               f"{'; '.join(differ)}. Load it into the model it was trained on.")
    found = read_tensors(directory)
    n = config.num_virtual_tokens
    shape = (n, ours.token_dim) if config.peft_type == "PROMPT_TUNING" else (n, ours.num_layers * 2 * ours.token_dim)
    if set(found) != {PROMPT_KEY}:
        raise AdapterFileError(f"{directory / WEIGHTS_NAME} should hold one tensor, {PROMPT_KEY!r} of shape {shape}; "
                               f"it holds {sorted(found)}. Is it a {config.peft_type} adapter? Save it again.")
    if tuple(found[PROMPT_KEY].shape) != shape:
        raise AdapterFileError(f"{PROMPT_KEY} in {directory / WEIGHTS_NAME} has shape {tuple(found[PROMPT_KEY].shape)}"
                               f"; this model and num_virtual_tokens={n} need {shape} ({saved_from}). Load it into "
                               "the model it was trained on, with the config it was saved with.")
    wrapper = PromptLearningModel(model, ours, adapter_name)
    weight = wrapper.prompt_encoder[adapter_name].embedding.weight
    with torch.no_grad():
        weight.copy_(found[PROMPT_KEY].to(weight.dtype))
    return wrapper
