r"""Where the memory of fine-tuning goes: weights, gradients, optimizer state, activations.  (Chapter 08)

Per parameter, in bytes (1 GB = 10^9 bytes here; a "80 GB" GPU holds 80 GiB = 85.9 GB):

* **Full fine-tune, mixed-precision Adam** (ZeRO, Rajbhandari et al. 2020): 2 (bf16/fp16 weight)
  + 2 (16-bit gradient) + 4 (fp32 master copy of the weight) + 4 + 4 (Adam's two fp32 moments)
  = **16 bytes**. In plain fp32 it is 4 + 4 + 8 = 16 bytes too, without a master copy.
* **A frozen base** costs its weights only: no gradients, no optimizer state. bf16: **2 bytes**.
* **NF4** (chapter 08, ``minilora.quant``): 4 bits of code + one fp32 absmax per 64 weights
  (32/64 = 0.5 bits) = **4.5 bits**; with double quantization the constants are int8 per 64 plus
  fp32 per 256 blocks: 8/64 + 32/(64*256) = 0.127 bits, so **4.127 bits**. Only the linear layers
  of the blocks are quantized (as bitsandbytes); embeddings, norms and the LM head stay 16-bit.
* **LoRA trainables** are kept in fp32: weight 4 + gradient 4 + Adam moments 8 = **16 bytes**
  each, and they are few: :math:`r(d_{in}+d_{out})` per adapted layer.

The parameter counts come from the model itself, or from a transformers config built on the
*meta* device (shapes, no data), so Llama-2-70B can be counted exactly on a laptop.

Activations depend on batch and sequence length, not on the parameter count;
``activation_memory_estimate`` gives an *estimate* (see its docstring), and
``minilora.course.measure.measure_peak_rss`` measures what a block of code really used on this machine.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Sequence, Union

import torch

from .config import LoRAConfig
from .counting import as_model, count_parameters, lora_count
from .inject import lora_layers
from .qlora import nf4_plan
from .quant import check_blocksize, nf4_nbytes
from .utils import check_bool, check_int

__all__ = ["GB", "OPTIMIZER_STATE_BYTES", "weight_bytes", "MemoryBreakdown", "memory_table",
           "training_memory", "ActivationEstimate", "activation_memory_estimate"]

GB = 1e9
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adam": 8, "sgd-momentum": 4, "sgd": 0}
"""fp32 optimizer state per trainable parameter: Adam keeps two moments, momentum SGD one."""
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
_QUANT = ("nf4", "nf4-dq")


def _parse_dtype(dtype) -> tuple[Optional[int], Optional[str]]:
    """(bytes per number, None) for a float dtype; (None, "nf4" or "nf4-dq") for NF4."""
    what = f"a float torch.dtype, one of {list(_DTYPES)}, or one of {list(_QUANT)}"
    if not isinstance(dtype, (str, torch.dtype)):
        raise TypeError(f"dtype must be {what}; got {dtype!r} ({type(dtype).__name__}).")
    if isinstance(dtype, str) and dtype.lower() in _QUANT:
        return None, dtype.lower()
    dtype = _DTYPES.get(dtype.lower(), dtype) if isinstance(dtype, str) else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be {what}; got {dtype!r}.")
    return dtype.itemsize, None


def _adapter_params(model) -> set[int]:
    """ids of the LoRA matrices: the adapter, not the base."""
    return {id(p) for _, layer in lora_layers(model) for c in layer.adapter_layer_names
            for p in getattr(layer, c).parameters()}


def weight_bytes(model_or_config, weight_dtype=torch.bfloat16, other_dtype=torch.bfloat16,
                 skip: Sequence[str] | None = None, blocksize: int = 64) -> int:
    """Bytes to store the base weights (LoRA matrices excluded) in ``weight_dtype``: a float dtype,
    "nf4" or "nf4-dq". With NF4, the linear layers that ``qlora.nf4_plan(model, skip)`` selects are
    quantized exactly as ``quantize_model_nf4`` does (their biases kept fp32), and every other
    parameter is stored in ``other_dtype``; already-quantized layers count as NF4."""
    size, quant = _parse_dtype(weight_dtype)
    other, _ = _parse_dtype(other_dtype if quant else weight_dtype)
    check_blocksize(blocksize)
    model = as_model(model_or_config)
    planned = set(nf4_plan(model, skip)[0]) if quant else set()
    seen, total = _adapter_params(model), 0
    for mname, mod in model.named_modules():
        nf4 = bool(quant) and (mname in planned or getattr(mod, "is_quantized", False))
        if getattr(mod, "is_quantized", False):  # its weight is packed in buffers
            n = mod.in_features * mod.out_features
            total += nf4_nbytes(n, blocksize, quant == "nf4-dq") if nf4 else n * other
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                if nf4:
                    total += nf4_nbytes(p.numel(), blocksize, quant == "nf4-dq") if pname == "weight" else 4 * p.numel()
                else:
                    total += p.numel() * other
    return total


@dataclass
class MemoryBreakdown:
    """Bytes of each part of training memory; ``total`` is their sum. Print it for a table in GB."""

    label: str
    n_params: int
    n_trainable: int
    weights: int
    gradients: int
    optimizer: int
    master: int
    activations: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.master + self.activations

    def rows(self, activations: Optional[bool] = None) -> list[tuple[str, int]]:
        """(name, bytes) of each part and the total; the activations row only if non-zero
        (or if ``activations`` says so)."""
        show = bool(self.activations) if activations is None else activations
        return [(f.name.replace("optimizer", "optimizer state").replace("master", "master weights"),
                 getattr(self, f.name)) for f in fields(self)[3:] if show or f.name != "activations"
                ] + [("total", self.total)]

    def __str__(self) -> str:
        head = (f"{self.label or 'training memory'}: {self.n_trainable:,} trainable of {self.n_params:,} "
                f"parameters ({100 * self.n_trainable / self.n_params:.3g}%)")
        body = [f"  {name:<16}{b / GB:>9.2f} GB" for name, b in self.rows()]
        note = "(1 GB = 10^9 bytes" + ("; activations not included)" if not self.activations else ")")
        return "\n".join([head] + body + [note])


def memory_table(breakdowns: Sequence[MemoryBreakdown]) -> str:
    """Several breakdowns side by side, one column each, in GB (10^9 bytes)."""
    width = max([12] + [len(b.label) + 2 for b in breakdowns])
    show = any(b.activations for b in breakdowns)
    lines = [" " * 16 + "".join(f"{b.label:>{width}}" for b in breakdowns)]
    for i, (name, _) in enumerate(breakdowns[0].rows(show)):
        lines.append(f"{name:<16}" + "".join(f"{b.rows(show)[i][1] / GB:>{width - 3}.2f} GB" for b in breakdowns))
    return "\n".join(lines) + ("" if show else "\n(1 GB = 10^9 bytes; activations not included)")


def training_memory(model_or_config, trainable: Union[str, int, LoRAConfig] = "all",
                    weight_dtype=torch.bfloat16, optimizer: str = "adamw",
                    master_weights: Optional[bool] = None, adapter_dtype=torch.float32,
                    activations: Union[int, "ActivationEstimate", None] = None, label: str = "",
                    other_dtype=torch.bfloat16, skip: Sequence[str] | None = None,
                    blocksize: int = 64) -> MemoryBreakdown:
    """Training memory of a model (or config), broken down as in the module docstring.

    ``trainable="all"``: a full fine-tune of every base parameter, stored in ``weight_dtype``,
    with gradients in that dtype, fp32 optimizer state and, by default when ``weight_dtype`` is
    16-bit, an fp32 master copy. ``trainable=LoRAConfig(...)``: a frozen base in ``weight_dtype``
    (a float dtype, "nf4" or "nf4-dq") plus what ``inject_lora`` would make trainable (LoRA
    matrices, biases, modules_to_save; ``counting.lora_count``) in ``adapter_dtype``, with
    gradients and optimizer state (16 bytes each in fp32). ``trainable=n``: the same for ``n``
    adapter parameters. ``activations``: bytes, or an ``activation_memory_estimate``, to add a row.
    ``other_dtype``, ``skip``, ``blocksize``: how an NF4 base is stored, as in ``weight_bytes``.
    A model that already has LoRA layers counts as its base; its adapters are not in the base."""
    if not isinstance(optimizer, str):
        raise TypeError(f"optimizer must be one of {list(OPTIMIZER_STATE_BYTES)}, got {optimizer!r} "
                        f"({type(optimizer).__name__}).")
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZER_STATE_BYTES)}, got {optimizer!r}.")
    if master_weights is not None:
        check_bool(master_weights, "master_weights")
    what = "'all', a LoRAConfig or a number of adapter parameters (an integer >= 0)"
    if isinstance(trainable, bool) or not isinstance(trainable, (str, int, LoRAConfig)):
        raise TypeError(f"trainable must be {what}, got {trainable!r} ({type(trainable).__name__}).")
    if isinstance(trainable, str) and trainable != "all" or isinstance(trainable, int) and trainable < 0:
        raise ValueError(f"trainable must be {what}, got {trainable!r}.")
    size, quant = _parse_dtype(weight_dtype)
    if trainable == "all" and quant:
        raise ValueError("a quantized base cannot be fine-tuned in full; train an adapter instead: "
                         "trainable=LoRAConfig(r=..., target_modules=[...]).")
    adapter_size, adapter_quant = _parse_dtype(adapter_dtype)
    if adapter_quant:
        raise ValueError(f"adapter_dtype={adapter_dtype!r}: the trained adapter is kept in a float dtype "
                         "(torch.float32 by default, as PEFT), not in NF4.")
    model = as_model(model_or_config)
    if isinstance(trainable, LoRAConfig):
        trainable = lora_count(model, trainable)[0]
    adapter = _adapter_params(model)
    n_params = count_parameters(model) - sum(p.numel() for p in model.parameters() if id(p) in adapter)
    state = OPTIMIZER_STATE_BYTES[optimizer]
    weights = weight_bytes(model, weight_dtype, other_dtype, skip, blocksize)
    if trainable == "all":
        n, grad_size = n_params, size
    else:
        n, grad_size = trainable, adapter_size
        weights += n * grad_size
    if master_weights is None:
        master_weights = grad_size < 4
    act = getattr(activations, "total", activations) or 0
    return MemoryBreakdown(label, n_params, n, weights, n * grad_size, n * state,
                           4 * n if master_weights else 0, act)


@dataclass
class ActivationEstimate:
    """An *estimate* of activation memory; see ``activation_memory_estimate``."""

    per_layer: int
    layers: int
    stored: int
    logits: int
    checkpointing: bool
    flash_attention: bool = False

    @property
    def total(self) -> int:
        return self.stored + self.logits

    def __str__(self) -> str:
        how = "with activation checkpointing" if self.checkpointing else "without recomputation"
        how += ", flash attention" if self.flash_attention else ""
        return (f"activations ~ {self.total / GB:.2f} GB ({how}; an estimate from Korthikanti et al. 2022, "
                f"not a measurement): {self.layers} layers, logits {self.logits / GB:.2f} GB")


def activation_memory_estimate(config, batch: int, seq_len: int, dtype=torch.bfloat16,
                               checkpointing: bool = False, flash_attention: bool = False) -> ActivationEstimate:
    r"""An ESTIMATE of the activations kept for the backward pass of one batch.

    Per transformer layer, 16-bit, no recomputation (Korthikanti et al. 2022, eq. 2, a GPT layer
    with a 4h MLP and dropout masks): :math:`sbh(34 + 5as/h)` bytes for sequence length s, batch
    b, hidden size h and a heads. The :math:`5as^2b` term is the attention matrix, which fused
    ("flash") attention never stores: ``flash_attention=True`` drops it. Llama's gated MLP, grouped
    KV heads and missing dropout shift this by tens of percent: read it as an order of magnitude.
    With full checkpointing each layer keeps only its 16-bit input, :math:`2sbh`, and one layer's
    activations are rebuilt at a time. Other dtypes scale by itemsize/2. Plus the fp32 logits the
    loss reads: :math:`4 b s V`."""
    cfg = getattr(config, "config", config)
    try:
        h, a, L, V = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, cfg.vocab_size
    except AttributeError as e:
        raise ValueError(f"need a transformers config (or model) with hidden_size, num_attention_heads, "
                         f"num_hidden_layers, vocab_size: {e}") from None
    check_int(batch, "batch")
    check_int(seq_len, "seq_len")
    check_bool(checkpointing, "checkpointing")
    check_bool(flash_attention, "flash_attention")
    size, quant = _parse_dtype(dtype)
    if quant:
        raise ValueError("activations are computed in a float dtype (bf16, fp16, fp32), not in NF4.")
    s, b = seq_len, batch
    per_layer = (34 * s * b * h + (0 if flash_attention else 5 * a * s * s * b)) * size // 2
    stored = L * 2 * s * b * h * size // 2 + per_layer if checkpointing else L * per_layer
    return ActivationEstimate(per_layer, L, stored, 4 * b * s * V, checkpointing, flash_attention)
