r"""Saving and loading adapters in PEFT's file format.  (Chapter 06)

An adapter is the small part of a fine-tune: for each adapted layer the two factors of
:math:`\Delta W = \frac{\alpha}{r} B A` (``r (d_{in} + d_{out})`` numbers instead of
``d_{in} d_{out}``), plus the modules trained whole (``modules_to_save``, e.g. a new head).
A folder holds exactly what ``peft.PeftModel.save_pretrained`` writes:

* ``adapter_config.json``: ``peft_type: "LORA"``, ``r``, ``lora_alpha``, ``lora_dropout``,
  ``target_modules``, ``exclude_modules``, ``bias``, ``use_rslora``, ``modules_to_save``,
  ``fan_in_fan_out`` (True when GPT-2's Conv1D layers are adapted), ``init_lora_weights``,
  ``inference_mode``, ``use_dora``, empty ``rank_pattern`` / ``alpha_pattern``, and where
  known ``base_model_name_or_path`` and ``task_type``. PEFT fills in its other fields' defaults.
* ``adapter_model.safetensors`` with PEFT's keys (the adapter name is not in the file):
  ``base_model.model.<layer>.lora_A.weight`` (r, in), ``.lora_B.weight`` (out, r), and with DoRA
  ``.lora_magnitude_vector`` (out,) (no ``.weight``: PEFT's key, chapter 09);
  ``base_model.model.<embedding>.lora_embedding_A`` (r, vocab), ``.lora_embedding_B`` (dim, r);
  ``base_model.model.<module>.<param>`` for each saved module; and the biases that
  ``bias="lora_only"`` (``<layer>.base_layer.bias``) or ``bias="all"`` train. The same tensors as
  a dict are ``get_peft_model_state_dict`` / ``set_peft_model_state_dict`` (``minilora.state_dict``).

A PiSSA adapter (chapter 09) changed its base weights; ``save_adapter(...,
path_initial_model_for_weight_conversion=folder)`` writes it as a plain rank-2r LoRA relative to the
original base (``minilora.pissa``), as PEFT's ``save_pretrained`` with that argument does.

Each file is written to a temporary file and then renamed, so an interrupted save never leaves a
half-written file. Loading reads JSON and safetensors only (nothing is ever unpickled) and checks
every name and shape before it changes the model; where the check needs the new adapter's layers,
they are injected and, on refusal, taken out again exactly (``_checkpoint``). Errors: ``TypeError``
for a wrong type, ``ValueError`` for a wrong value or state, ``UnknownAdapterError`` for an adapter
the model does not hold, ``AdapterFileError`` for every problem with a folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .adapters import add_adapter, list_adapters
from .config import DEFAULT_TARGETS, LoRAConfig
from .errors import AdapterFileError
from .files import CONFIG_NAME, WEIGHTS_NAME, check_adapter_folder, read_tensors, write_atomic
from .inject import _checkpoint, lora_layers
from .layers import LoRALinear
from .merge import check_not_merged
from .pissa import is_pissa, pissa_to_lora_config, pissa_to_lora_state_dict
from .prompting import PromptLearningModel
from .prompting_config import check_adapter_name
from .prompting_io import check_save_folder, load_prompt_adapter, prompt_peft_type, save_prompt_adapter
from .state_dict import (
    adapter_config,
    fill_adapter,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)

__all__ = ["save_adapter", "load_adapter", "get_peft_model_state_dict", "set_peft_model_state_dict",
           "peft_config_dict", "read_adapter_config", "AdapterFileError"]

TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForCausalLM": "CAUSAL_LM", "LMHeadModel": "CAUSAL_LM",
              "ForTokenClassification": "TOKEN_CLS", "ForQuestionAnswering": "QUESTION_ANS"}
# PEFT options that change what the weights mean; minilora refuses files that use them.
UNSUPPORTED = {"rank_pattern": ({}, None), "alpha_pattern": ({}, None),
               "layers_to_transform": (None,), "layer_replication": (None,), "target_parameters": (None, []),
               "trainable_token_indices": (None,), "lora_bias": (False, None), "use_qalora": (False, None),
               "alora_invocation_tokens": (None,)}


def peft_config_dict(model: nn.Module, adapter_name: str = "default") -> dict:
    """The ``adapter_config.json`` content PEFT expects for this adapter."""
    cfg = adapter_config(model, adapter_name)
    targets = cfg.target_modules
    if targets is None:
        targets = DEFAULT_TARGETS[model.config.model_type]
    elif targets == "all-linear":  # spelled out: PEFT's notion of "the output head" is not always ours
        targets = [n for n, layer in lora_layers(model) if adapter_name in layer.adapters]
    name_or_path = getattr(getattr(model, "config", None), "name_or_path", "") or None
    cls = type(model).__name__
    task = next((t for suffix, t in TASK_TYPES.items() if cls.endswith(suffix)), None)
    if task in ("SEQ_CLS", "TOKEN_CLS") and not set(cfg.modules_to_save or ()) & {"classifier", "score"}:
        task = None  # PEFT's classification models expect the head in the file; this adapter leaves it frozen
    fan_in_fan_out = any(isinstance(layer, LoRALinear) and layer.fan_in_fan_out and adapter_name in layer.adapters
                         for _, layer in lora_layers(model))
    return {"peft_type": "LORA", "task_type": task, "base_model_name_or_path": name_or_path,
            "r": cfg.r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout, "target_modules": targets,
            "exclude_modules": cfg.exclude_modules, "bias": cfg.bias, "use_rslora": cfg.use_rslora,
            "modules_to_save": cfg.modules_to_save, "fan_in_fan_out": fan_in_fan_out,
            "init_lora_weights": cfg.init_lora_weights, "inference_mode": True,
            "use_dora": cfg.use_dora, "rank_pattern": {}, "alpha_pattern": {}}


def _pissa_to_lora(tensors: dict[str, torch.Tensor], config: dict, initial: Path,
                   directory: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The converted tensors and config of a trained PiSSA adapter, given its initial copy in ``initial``."""
    if not is_pissa(config["init_lora_weights"]):
        raise ValueError(f"path_initial_model_for_weight_conversion converts a PiSSA adapter, whose base weights "
                         f"changed; this one has init_lora_weights={config['init_lora_weights']!r} and left the base "
                         "as it was: save it without path_initial_model_for_weight_conversion.")
    if initial.resolve() == directory.resolve():
        raise ValueError(f"{directory} is also path_initial_model_for_weight_conversion; save the converted adapter "
                         "into another folder, so that the initial copy is not overwritten.")
    if not (initial / CONFIG_NAME).is_file():
        raise AdapterFileError(f"no {CONFIG_NAME} in {initial}; path_initial_model_for_weight_conversion must be a "
                                "folder written by save_adapter right after inject_lora, before training.")
    try:
        init_cfg = json.loads((initial / CONFIG_NAME).read_text())
    except (OSError, ValueError) as e:
        raise AdapterFileError(f"cannot read {initial / CONFIG_NAME} ({e}); save the initial adapter again.") from None
    if not isinstance(init_cfg, dict):
        raise AdapterFileError(f"{initial / CONFIG_NAME} should hold a JSON object, got {type(init_cfg).__name__}.")
    diff = [f"{k}: initial {init_cfg.get(k)!r}, now {config[k]!r}" for k in ("r", "lora_alpha", "use_rslora")
            if init_cfg.get(k, False) != config[k]]
    if diff:
        raise AdapterFileError(f"{initial} holds another adapter ({'; '.join(diff)}); pass the folder saved from this "
                               "adapter right after inject_lora, before training.")
    try:
        tensors = pissa_to_lora_state_dict(tensors, read_tensors(initial))
    except ValueError as e:
        raise AdapterFileError(f"{initial}: {e}") from None
    return tensors, pissa_to_lora_config(config)


def save_adapter(model: nn.Module, directory: str | os.PathLike, adapter_name: str = "default",
                 path_initial_model_for_weight_conversion: str | os.PathLike | None = None) -> Path:
    """Write adapter ``adapter_name`` to ``directory`` in PEFT's format; return the folder.

    Only the adapter is written (kilobytes), never the base model. For a PiSSA adapter,
    ``path_initial_model_for_weight_conversion`` (PEFT's argument) is a folder where the same adapter
    was saved right after ``inject_lora``, before training; the adapter is then written as a plain
    rank-2r LoRA relative to the original base weights, which an untouched base model loads, with
    minilora or with PEFT (``minilora.pissa``). The initial folder is only read.

    A prompt- or prefix-tuned model (chapter 10) is written by ``minilora.prompting_io``. Everything is
    checked, and the files computed, before anything is written: ``TypeError`` for a wrong type,
    ``UnknownAdapterError`` for an adapter the model does not hold, ``AdapterFileError`` for a folder
    that cannot be written or a wrong initial folder."""
    if isinstance(model, PromptLearningModel):
        return save_prompt_adapter(model, directory, adapter_name)
    adapter_config(model, adapter_name)
    directory = check_save_folder(directory)
    initial = path_initial_model_for_weight_conversion
    if initial is not None and not isinstance(initial, (str, os.PathLike)):
        raise TypeError(f"path_initial_model_for_weight_conversion is a folder (str or pathlib.Path) or None, got "
                        f"{type(initial).__name__}.")
    tensors, config = get_peft_model_state_dict(model, adapter_name), peft_config_dict(model, adapter_name)
    if initial is not None:
        tensors, config = _pissa_to_lora(tensors, config, Path(initial), directory)
    config = json.dumps(config, indent=2, sort_keys=True) + "\n"
    write_atomic(directory / WEIGHTS_NAME, safetensors_bytes(tensors, metadata={"format": "pt"}))
    write_atomic(directory / CONFIG_NAME, config)
    return directory


def read_adapter_config(directory: str | os.PathLike) -> dict:
    """The folder's ``adapter_config.json``, checked to be a LoRA adapter minilora can load."""
    path = check_adapter_folder(directory) / CONFIG_NAME
    if not path.is_file():
        hint = " It holds adapter_model.bin, a pickle, which minilora never loads." \
            if (Path(directory) / "adapter_model.bin").exists() else ""
        raise AdapterFileError(f"no {CONFIG_NAME} in {directory}; is it an adapter folder written by "
                                f"save_adapter or PEFT's save_pretrained?{hint}")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"{path} is not valid JSON ({e}); the file is damaged, save the adapter again."
                               ) from None
    if not isinstance(cfg, dict):
        raise AdapterFileError(f"{path} should hold a JSON object, got {type(cfg).__name__}.")
    if cfg.get("peft_type") != "LORA":
        raise AdapterFileError(f"{path} has peft_type={cfg.get('peft_type')!r}; minilora loads LoRA adapters only "
                               "(peft_type 'LORA'). Load this one with PEFT.")
    for key, fine in UNSUPPORTED.items():
        if cfg.get(key, fine[0]) not in fine:
            raise AdapterFileError(f"{path} sets {key}={cfg[key]!r}, which minilora does not implement; "
                                   "load this adapter with PEFT.")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(("pissa", "olora", "corda", "loftq", "lora_ga")):
        hint = (" Or save it from the trained model with save_adapter(model, folder, path_initial_model_for_weight_"
                "conversion=<the folder saved at initialisation>): a plain LoRA file that loads here."
                if is_pissa(init.lower()) else "")
        raise AdapterFileError(f"{path} has init_lora_weights={init!r}: that method changes the base weights too, "
                               "so the adapter alone does not reproduce the model. Load it with PEFT." + hint)
    return cfg


def _to_lora_config(cfg: dict, model: nn.Module) -> LoRAConfig:
    saved = cfg.get("modules_to_save") or None
    if saved:  # PEFT adds "classifier" and "score" for every classifier; keep the ones this model has
        names = [n for n, _ in model.named_modules()]
        saved = [k for k in saved if any(n == k or n.endswith("." + k) for n in names)] or None
    init = cfg.get("init_lora_weights", True)  # other initialisations ("orthogonal", ...) do not change what the
    init = init if init is True or init is False or init == "gaussian" else True  # trained A, B in the file mean
    return LoRAConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg.get("lora_dropout", 0.0),
                      target_modules=cfg.get("target_modules"), exclude_modules=cfg.get("exclude_modules"),
                      bias=cfg.get("bias", "none"), modules_to_save=saved, use_rslora=cfg.get("use_rslora", False),
                      init_lora_weights=init, use_dora=cfg.get("use_dora") or False)


def load_adapter(model: nn.Module, directory: str | os.PathLike, adapter_name: str = "default") -> nn.Module:
    """Load the adapter in ``directory`` (written by ``save_adapter`` or PEFT) as ``adapter_name``; return
    the model.

    Injects the LoRA layers if the model does not have this adapter yet (it then stays inactive
    if another adapter is active: choose it with ``set_adapter``), or fills the existing
    adapter of that name. A prompt- or prefix-tuning adapter (chapter 10) returns the base model
    wrapped with it (``minilora.prompting_io``).

    Everything is checked before the model changes, and a refused call leaves it exactly as it was:
    ``TypeError`` for a wrong type, ``ValueError`` for a wrong name or a merged model, and
    ``AdapterFileError`` for every problem with the folder (missing, a pickle only, damaged, not LoRA,
    or written for another model: every missing or unexpected key and wrong shape is named). The keys
    and shapes of a new adapter are checked once its layers are injected; if they do not fit, the
    injection is undone."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}.")
    check_adapter_name(adapter_name)
    directory = check_adapter_folder(directory)
    if prompt_peft_type(directory):
        return load_prompt_adapter(model, directory, adapter_name)
    if isinstance(model, PromptLearningModel):
        raise ValueError("this model is prompt- or prefix-tuned; minilora does not combine that with LoRA. "
                         "Load the LoRA adapter into the base model (model.base_model) instead.")
    cfg = read_adapter_config(directory)
    found = read_tensors(directory)
    check_not_merged(model, "loading an adapter")
    base = cfg.get("base_model_name_or_path")
    here = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
    try:
        config = _to_lora_config(cfg, model)
    except (KeyError, TypeError, ValueError) as e:
        raise AdapterFileError(f"{directory / CONFIG_NAME} is not a valid LoRA config: {e}") from None

    def refuse(lines: list[str]) -> AdapterFileError:
        return AdapterFileError(
            f"cannot load the adapter in {directory} into this model ({here}):\n" + "\n".join(lines) +
            (f"\nThe adapter was saved from base model {base!r}." if base else "\nThe file does not name its base "
             "model.") + " Wrong shapes or names usually mean a different base model (or a different head size): "
            "load it into the model it was trained on.")

    if adapter_name in list_adapters(model):
        have = model.peft_config[adapter_name]
        diff = [f"{f}: model {getattr(have, f)!r}, file {getattr(config, f)!r}"
                for f in ("r", "lora_alpha", "use_rslora", "use_dora")
                if getattr(have, f) != getattr(config, f)]
        if diff:
            raise AdapterFileError(f"the model's adapter {adapter_name!r} differs from the file ({'; '.join(diff)}). "
                                   "Load the file under another name, or delete_adapter first.")
        fill_adapter(model, found, adapter_name, refuse)
        return model
    restore = _checkpoint(model)
    try:
        add_adapter(model, adapter_name, config)
    except ValueError as e:
        restore()
        raise AdapterFileError(f"the adapter in {directory} (saved from base {base or 'not named'}) does not fit "
                               f"this model ({here}): {e}") from None
    except BaseException:
        restore()
        raise
    try:
        fill_adapter(model, found, adapter_name, refuse)
    except BaseException:
        restore()
        raise
    return model
