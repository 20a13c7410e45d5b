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
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (d_in, d_out, r)) or min(d_in, d_out, r) < 1:
        raise ValueError(f"d_in, d_out and r must be positive integers, got {d_in!r}, {d_out!r}, {r!r}.")
    return r * (d_in + d_out)


def paper_formula(n_matrices: int, d_model: int, r: int) -> int:
    """The LoRA paper's count for square attention matrices: ``2 * n_matrices * d_model * r``."""
    return 2 * n_matrices * d_model * r


#: The parts of a transformer that ``component_counts`` reports, always in this order.
COMPONENTS = ("embeddings", "attention", "mlp", "norms", "head")


def _component(name: str, module: nn.Module, heads: set[str]) -> str:
    """Which part of a transformer the module ``name`` belongs to (by its type, then its name)."""
    parts = name.lower().split(".")
    if "norm" in type(module).__name__.lower():
        return "norms"
    if any(p.startswith("lora_") for p in parts):
        return "lora"
    if isinstance(module, nn.Embedding):
        return "embeddings"
    if any(name == h or name.startswith(h + ".") for h in heads) or "pooler" in parts:
        return "head"
    if any("attn" in p or "attention" in p for p in parts):
        return "attention"
    if any(p in ("mlp", "intermediate", "output", "ffn", "feed_forward") for p in parts):
        return "mlp"
    return "other"


def component_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per part of a transformer: ``embeddings``, ``attention`` (q, k, v, o), ``mlp``,
    ``norms`` and ``head`` (LM head, classifier or pooler), plus ``lora`` and ``other`` when nonzero.

    Tied tensors count once, where they first appear (SmolLM2's LM head shares the embedding, so
    its ``head`` is 0); the values add up to ``count_parameters(model)``. Works on the meta device."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"component_counts expects an nn.Module, got {type(model).__name__}; "
                        "for a transformers config use component_counts(meta_model(config)).")
    from .inject import _head_names

    heads = _head_names(model)
    counts = dict.fromkeys(COMPONENTS, 0)
    seen: set[int] = set()
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            part = _component(name, module, heads)
            counts[part] = counts.get(part, 0) + p.numel()
    return counts


def _blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The repeated transformer blocks: the first ModuleList of modules that hold parameters."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(
                any(True for _ in m.parameters()) for m in module):
            return name, module
    raise ValueError(f"found no list of transformer blocks (an nn.ModuleList) in {type(model).__name__}.")


def _shape(module: nn.Module) -> str:
    """``in → out`` for a linear map (Linear, Conv1D, LoRA-wrapped), else the weight's shape."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return f"{module.in_features} → {module.out_features}"
    weight = getattr(module, "weight", None)
    if weight is not None and type(module).__name__ == "Conv1D":  # stored (in, out)
        return f"{weight.shape[0]} → {weight.shape[1]}"
    if weight is not None:
        return " × ".join(map(str, weight.shape))
    return ""


def block_summary(model: nn.Module, index: int = 0) -> str:
    """One transformer block as a compact table: each layer with weights, its type, its
    ``in → out`` shape and its parameter count (LoRA layers count their base and their A, B)."""
    prefix, blocks = _blocks(model)
    if not -len(blocks) <= index < len(blocks):
        raise ValueError(f"index={index} is out of range: the model has {len(blocks)} blocks.")
    block = blocks[index]
    from .layers import LoRALayer

    rows, skip = [], []
    for name, module in block.named_modules():
        if not name or any(name.startswith(s + ".") for s in skip):
            continue
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, LoRALayer):
            skip.append(name)
            own = sum(p.numel() for p in module.parameters())
        if own:
            kind = type(module).__name__
            if isinstance(module, LoRALayer):
                kind += " r=" + "/".join(str(r) for r in module.r.values())
            rows.append((name, kind, _shape(module), own))
    total = sum(p.numel() for p in block.parameters())
    w = max(len(r[0]) for r in rows)
    t = max(len(r[1]) for r in rows)
    s = max(len(r[2]) for r in rows)
    lines = [f"{prefix}.{index % len(blocks)}: one of {len(blocks)} × {type(block).__name__}, "
             f"{total:,} parameters each"]
    lines += [f"  {n:<{w}}  {k:<{t}}  {sh:<{s}}  {c:>11,}" for n, k, sh, c in rows]
    return "\n".join(lines)
