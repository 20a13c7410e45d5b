r"""Exact parameter counts for real architectures, without their weights.  (Chapter 04)

A LoRA adapter on a layer with weight :math:`W \in \mathbb{R}^{d_{out} \times d_{in}}` trains
:math:`r (d_{in} + d_{out})` numbers, against :math:`d_{in} d_{out}` for the full matrix. Summed
over the targeted layers that is the whole adapter.

To count exactly for a 7B or 70B model we build it from its transformers config on PyTorch's
``meta`` device: every tensor has a shape but no storage, so a 70B model "loads" in a second and
in no memory. ``inject_lora`` runs on it unchanged, and we count what it created.

The LoRA paper's own formula for GPT-3 175B (attention matrices :math:`d \times d`) is
:math:`|\Theta| = 2 \hat L r d_{model}`, with :math:`\hat L` the number of adapted matrices.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import LoRAConfig
from .inject import inject_lora, trainable_parameters


def meta_model(config, auto_class=None) -> nn.Module:
    """Build the model for a transformers ``config`` on the meta device: shapes, no weights.

    ``auto_class`` defaults to ``AutoModelForCausalLM`` (pass e.g. ``AutoModel`` for encoders)."""
    if auto_class is None:
        from transformers import AutoModelForCausalLM as auto_class
    with torch.device("meta"):
        return auto_class.from_config(config)


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model``, shared (tied) tensors counted once, as ``model.parameters()`` does."""
    return sum(p.numel() for p in model.parameters())


def lora_count(model_or_config, config: LoRAConfig, auto_class=None) -> tuple[int, int]:
    """``(trainable, total)`` after injecting ``config``: exact, for any size, without weights.

    A transformers config is first built on the meta device; a model is left untouched."""
    if isinstance(model_or_config, nn.Module):
        import copy

        model = copy.deepcopy(model_or_config).to("meta")
    else:
        model = meta_model(model_or_config, auto_class)
    inject_lora(model, config)
    return trainable_parameters(model)


def lora_matrix_count(d_in: int, d_out: int, r: int) -> int:
    """LoRA parameters for one ``d_out x d_in`` matrix: ``r * (d_in + d_out)``."""
    if min(d_in, d_out, r) < 1:
        raise ValueError(f"d_in, d_out and r must be positive, got {d_in}, {d_out}, {r}.")
    return r * (d_in + d_out)


def paper_formula(n_matrices: int, d_model: int, r: int) -> int:
    """The LoRA paper's count for square attention matrices: ``2 * n_matrices * d_model * r``."""
    return 2 * n_matrices * d_model * r
