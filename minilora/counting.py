r"""Counting parameters and bytes exactly, for real architectures, without their weights.  (Chapter 04)

A LoRA adapter on a layer with weight :math:`W \in \mathbb{R}^{d_{out} \times d_{in}}` trains
:math:`r (d_{in} + d_{out})` numbers, against :math:`d_{in} d_{out}` for the full matrix. Summed
over the targeted layers that is the whole adapter. DoRA (chapter 09) adds a magnitude per output
feature: :math:`r (d_{in} + d_{out}) + d_{out}`; PEFT's ``get_nb_trainable_parameters`` counts it as
trainable, and so does ours.

To count exactly for a 7B or 70B model we build it from its transformers config on PyTorch's
``meta`` device: every tensor has a shape but no storage, so a 70B model "loads" in a second and
in no memory. ``inject_lora`` runs on it unchanged, and we count what it created. A model that is
already loaded is copied to the meta device the same way, without copying its weights.

The LoRA paper's own formula for GPT-3 175B (attention matrices :math:`d \times d`) is
:math:`|\Theta| = 2 \hat L r d_{model}` (section 7.1), with :math:`\hat L` the number of adapted matrices.

This module is the one home of counting: parameters (``count_parameters``, PEFT's
``get_nb_trainable_parameters`` and ``print_trainable_parameters``, ``lora_count``), parameters per
part of a transformer (``component_counts``, ``block_summary``), and bytes held (``model_nbytes``).
"""
from __future__ import annotations

import copy

import torch
import transformers
from torch import nn

from .config import LoRAConfig
from .inject import inject_lora
from .layers import LoRALayer
from .targets import output_head_names
from .utils import check_bool, check_int

__all__ = ["meta_model", "llama2_config", "LLAMA2", "count_parameters", "get_nb_trainable_parameters",
           "print_trainable_parameters", "lora_count", "lora_matrix_count", "paper_formula", "model_nbytes",
           "COMPONENTS", "component_counts", "block_summary"]

LLAMA2 = {  # published hyper-parameters (Touvron et al. 2023); untied embeddings, vocab 32000
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8),
}


def llama2_config(size: str = "7b"):
    """A ``LlamaConfig`` with Llama-2's published sizes: "7b", "13b" or "70b"."""
    if not isinstance(size, str):
        raise TypeError(f"size must be one of {list(LLAMA2)}, got {size!r} ({type(size).__name__}).")
    if size.lower() not in LLAMA2:
        raise ValueError(f"size must be one of {list(LLAMA2)}, got {size!r}.")
    return transformers.LlamaConfig(vocab_size=32000, tie_word_embeddings=False, **LLAMA2[size.lower()])


def meta_model(config, auto_class=None) -> nn.Module:
    """Build the model of a transformers ``config`` on the meta device: shapes, no weights.

    The class is ``auto_class`` if given (e.g. ``AutoModel`` for a bare encoder), else the one the
    config names in ``architectures`` (e.g. "BertModel"), else ``AutoModelForCausalLM``."""
    arch = (getattr(config, "architectures", None) or [None])[0]
    with torch.device("meta"):
        if auto_class is not None:
            return auto_class.from_config(config)
        cls = getattr(transformers, arch, None) if arch else None
        return cls(config) if cls is not None else transformers.AutoModelForCausalLM.from_config(config)


def as_model(model_or_config) -> nn.Module:
    """A model as it is; a transformers config built on the meta device (``meta_model``). Shared with
    ``minilora.memory``: every counting function takes either."""
    if isinstance(model_or_config, nn.Module):
        return model_or_config
    if isinstance(model_or_config, transformers.PretrainedConfig):
        return meta_model(model_or_config)
    raise TypeError(f"expected an nn.Module or a transformers config, got {type(model_or_config).__name__}.")


def count_parameters(model_or_config) -> int:
    """Parameters of a model (or of a config's model), tied tensors counted once, as
    ``model.parameters()`` gives them; a 4-bit (NF4) weight, stored packed, counts as the
    ``in * out`` numbers it stands for, as PEFT counts 4-bit weights."""
    model = as_model(model_or_config)
    return (sum(p.numel() for p in model.parameters())
            + sum(m.in_features * m.out_features for m in model.modules() if getattr(m, "is_quantized", False)))


def get_nb_trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, as PEFT's method of the same name."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad), count_parameters(model)


def print_trainable_parameters(model: nn.Module) -> None:
    """Print the counts in PEFT's exact format."""
    trainable, total = get_nb_trainable_parameters(model)
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are on the meta device; the weights
    are never copied (shared tensors stay shared)."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def lora_count(model_or_config, config: LoRAConfig, auto_class=None) -> tuple[int, int]:
    """``(trainable, total)`` after ``inject_lora(model, config)``: exact, for any size, without weights.

    A transformers config is built on the meta device (``meta_model``); a model is copied there,
    and left untouched. Everything ``inject_lora`` makes trainable counts: the LoRA matrices, the
    biases ``config.bias`` names and the ``modules_to_save``."""
    if isinstance(model_or_config, nn.Module):
        model = _meta_copy(model_or_config)
    else:
        model = meta_model(model_or_config, auto_class)
    if any(isinstance(m, LoRALayer) for m in model.modules()):
        raise ValueError("this model already has LoRA layers; count on the base model, before inject_lora.")
    inject_lora(model, config)
    return get_nb_trainable_parameters(model)


def lora_matrix_count(d_in: int, d_out: int, r: int, use_dora: bool = False) -> int:
    """LoRA parameters for one ``d_out x d_in`` matrix: ``r * (d_in + d_out)``, plus ``d_out`` with DoRA."""
    for name, value in (("d_in", d_in), ("d_out", d_out), ("r", r)):
        check_int(value, name)
    check_bool(use_dora, "use_dora")
    return r * (d_in + d_out) + (d_out if use_dora else 0)


def paper_formula(n_matrices: int, d_model: int, r: int) -> int:
    """The LoRA paper's count for square attention matrices: ``2 * n_matrices * d_model * r``."""
    for name, value in (("n_matrices", n_matrices), ("d_model", d_model), ("r", r)):
        check_int(value, name)
    return 2 * n_matrices * d_model * r


def model_nbytes(model: nn.Module) -> int:
    """Bytes really held by the model's tensors: every parameter and buffer, once each."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


#: The parts of a transformer that ``component_counts`` reports, always in this order.
COMPONENTS = ("embeddings", "attention", "mlp", "norms", "pooler", "head")


def _component(name: str, module: nn.Module, heads: set[str]) -> str:
    """Which part of a transformer the module ``name`` belongs to (by its type, then its name)."""
    parts = name.lower().split(".")
    if "norm" in type(module).__name__.lower():
        return "norms"
    if any(p.startswith("lora_") for p in parts):
        return "lora"
    if isinstance(module, nn.Embedding):
        return "embeddings"
    if "pooler" in parts:  # BERT's pooler: a dense layer + tanh on [CLS], pretrained; not a task head
        return "pooler"
    if any(name == h or name.startswith(h + ".") for h in heads):
        return "head"
    if any("attn" in p or "attention" in p for p in parts):
        return "attention"
    if any(p in ("mlp", "intermediate", "output", "ffn", "feed_forward") for p in parts):
        return "mlp"
    return "other"


def component_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per part of a transformer: ``embeddings``, ``attention`` (q, k, v, o), ``mlp``,
    ``norms``, ``pooler`` (BERT's) and ``head`` (LM head or classifier), plus ``lora`` and ``other``
    when nonzero.

    Tied tensors count once, where they first appear (SmolLM2's LM head shares the embedding, so
    its ``head`` is 0); the values add up to ``count_parameters(model)``. Works on the meta device."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"component_counts expects an nn.Module, got {type(model).__name__}; "
                        "for a transformers config use component_counts(meta_model(config)).")
    heads = output_head_names(model)
    counts = dict.fromkeys(COMPONENTS, 0)
    seen: set[int] = set()
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
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
    return " × ".join(map(str, weight.shape)) if weight is not None else ""


def block_summary(model: nn.Module, index: int = 0) -> str:
    """One transformer block as a compact table: each layer with weights, its type, its
    ``in → out`` shape and its parameter count (LoRA layers count their base and their A, B)."""
    prefix, blocks = _blocks(model)
    check_int(index, "index", minimum=-len(blocks), hint=f"The model has {len(blocks)} blocks.")
    if index >= len(blocks):
        raise ValueError(f"index={index} is out of range: the model has {len(blocks)} blocks.")
    block = blocks[index]
    rows, skip = [], []
    for name, module in block.named_modules():
        if not name or any(name.startswith(s + ".") for s in skip):
            continue
        own = sum(p.numel() for p in module.parameters(recurse=False))
        kind = type(module).__name__
        if isinstance(module, LoRALayer):
            skip.append(name)
            own = sum(p.numel() for p in module.parameters())
            kind += " r=" + "/".join(str(r) for r in module.r.values())
        if own:
            rows.append((name, kind, _shape(module), own))
    total = sum(p.numel() for p in block.parameters())
    w, t, s = (max(len(r[i]) for r in rows) for i in range(3))
    lines = [f"{prefix}.{index % len(blocks)}: one of {len(blocks)} × {type(block).__name__}, "
             f"{total:,} parameters each"]
    lines += [f"  {n:<{w}}  {k:<{t}}  {sh:<{s}}  {c:>11,}" for n, k, sh, c in rows]
    return "\n".join(lines)
