"""A model's whole observable state, to prove that a refused call changed nothing ("validate, then change").

``take(model)`` records every module's name and type, every parameter and buffer (values, dtype,
``requires_grad``), ``peft_config``, and each LoRA layer's and saved module's adapter state (which
adapters exist, are active, merged, disabled). ``assert_same(before, model)`` compares a model with
such a record, bit for bit, and names the first difference.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _adapter_state(module: nn.Module) -> dict:
    state = {}
    for attr in ("r", "lora_alpha", "scaling", "use_rslora", "active_adapters", "merged_adapters",
                 "_disable_adapters", "active_adapter", "disabled"):
        if attr in vars(module) or attr in getattr(type(module), "__dict__", {}):
            value = getattr(module, attr, None)
            if not callable(value):
                state[attr] = copy.deepcopy(value)
    for attr in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector",
                 "lora_dropout", "modules_to_save"):
        container = getattr(module, attr, None)
        if isinstance(container, (nn.ModuleDict, nn.ParameterDict)):
            state[attr] = sorted(container.keys())
    return state


def take(model: nn.Module) -> dict:
    """Everything ``assert_same`` compares."""
    return {
        "modules": [(n, type(m).__name__) for n, m in model.named_modules()],
        "params": {n: (p.detach().clone(), p.dtype, p.requires_grad) for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "adapters": {n: _adapter_state(m) for n, m in model.named_modules()},
        "peft_config": repr(getattr(model, "peft_config", None)),
        "training": [m.training for m in model.modules()],
    }


def assert_same(before: dict, model: nn.Module) -> None:
    """Raise ``AssertionError`` naming the first thing in ``model`` that differs from ``before``."""
    after = take(model)
    assert after["modules"] == before["modules"], "the module tree changed: " + str(
        sorted(set(after["modules"]) ^ set(before["modules"]))[:5])
    assert after["params"].keys() == before["params"].keys(), "parameters were added or removed: " + str(
        sorted(set(after["params"]) ^ set(before["params"]))[:5])
    for name, (value, dtype, grad) in before["params"].items():
        now, now_dtype, now_grad = after["params"][name]
        assert now_dtype == dtype, f"{name}: dtype {dtype} -> {now_dtype}"
        assert now_grad == grad, f"{name}: requires_grad {grad} -> {now_grad}"
        assert torch.equal(now, value), f"{name}: values changed"
    assert after["buffers"].keys() == before["buffers"].keys(), "buffers were added or removed"
    for name, value in before["buffers"].items():
        assert torch.equal(after["buffers"][name], value), f"buffer {name} changed"
    for name, state in before["adapters"].items():
        assert after["adapters"][name] == state, f"{name}: adapter state {state} -> {after['adapters'][name]}"
    assert after["peft_config"] == before["peft_config"], "peft_config changed"
    assert after["training"] == before["training"], "train/eval mode changed"
