"""Would a serving engine load this adapter folder? vLLM's rules, read from the files.  (Chapter 13)

vLLM reads a PEFT adapter folder (``adapter_config.json`` and ``adapter_model.safetensors``) with its
``PEFTHelper`` (``vllm/lora/peft_helper.py``), which refuses, before any weight is loaded:

* a missing required field: ``r``, ``lora_alpha``, ``target_modules``;
* ``modules_to_save`` other than ``None`` (recent versions also allow ``["classifier"]`` or ``["score"]``
  for classification models): a whole copy of a module is not an update that can be batched per row;
* ``use_dora``; a ``bias`` other than ``"none"``; ``lora_bias``;
* an ``init_lora_weights`` that changes the base weights (PiSSA, OLoRA, LoftQ ...): the served base would
  not be the base the adapter was trained on;
* ``r`` above the server's ``--max-lora-rank`` (16 by default).

``vllm_problems`` applies the same rules to a folder by reading it; no engine is installed or run here, so
the list is what those rules say, not what a particular vLLM version did.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

__all__ = ["vllm_problems", "REQUIRED"]

REQUIRED = ("r", "lora_alpha", "target_modules")
_BASE_CHANGING = ("pissa", "olora", "loftq", "corda", "eva")


def vllm_problems(folder: str | Path, max_lora_rank: int = 16, classification: bool = False) -> list[str]:
    """What vLLM's ``PEFTHelper`` would refuse in the adapter ``folder`` (empty: it would load). With
    ``classification``, ``modules_to_save=["classifier"]`` or ``["score"]`` is allowed, as in recent vLLM."""
    folder = Path(folder)
    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"{folder.name} is not an adapter folder: it needs adapter_config.json and "
                                "adapter_model.safetensors (minilora.save_adapter writes both).")
    config = json.loads(config_path.read_text())
    problems = [f"adapter_config.json lacks {f!r}" for f in REQUIRED if f not in config]
    saved = config.get("modules_to_save") or []
    if saved and not (classification and set(saved) <= {"classifier", "score"}):
        problems.append(f"modules_to_save={saved}: vLLM serves LoRA updates only, not whole module copies")
    if config.get("use_dora"):
        problems.append("use_dora: vLLM does not support DoRA")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append("a bias is trained: vLLM supports bias='none' only")
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(_BASE_CHANGING):
        problems.append(f"init_lora_weights={init!r} changes the base weights; convert the adapter to plain LoRA "
                        "(save_adapter(..., path_initial_model_for_weight_conversion=...))")
    if config.get("r", 0) > max_lora_rank:
        problems.append(f"r={config['r']} > --max-lora-rank {max_lora_rank}: start the server with a larger one")
    with safe_open(weights_path, "pt") as f:
        extra = [k for k in f.keys() if "lora_" not in k]
    if extra and not saved:
        problems.append(f"the weights file holds non-LoRA tensors ({extra[0]}, ...)")
    return problems
