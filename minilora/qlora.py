r"""QLoRA: LoRA on a frozen base whose linear layers are stored in NF4.  (Chapter 08)

QLoRA (Dettmers et al. 2023, section 3) keeps the pretrained weights in 4-bit NormalFloat
(``minilora.quant``) and trains LoRA adapters in full precision on top:

.. math::   h = \mathrm{dequant}(W^{NF4})\, x + b + \frac{\alpha}{r} B A x .

``LinearNF4`` is a frozen linear layer stored this way: it dequantizes its weight in ``forward``,
and again in backward, so the full-precision weight is never kept for the backward pass; the
gradient flows through it to the input and to the adapters, and the base itself never changes.
``LoRALinear`` wraps it like any linear layer. ``quantize_model_nf4`` replaces the linear layers of
a whole model, in QLoRA's order: quantize the pretrained base first, then ``inject_lora``.
``nf4_plan`` says which layers it replaces and why it leaves the others (``minilora.memory``
counts bytes with the same plan, so computed and measured bytes agree exactly).

**Merging.** ``merge_adapter`` refuses an NF4 base: :math:`\mathrm{NF4}(\mathrm{dequant}(W^{NF4}) + sBA)` would
round away an update far smaller than NF4's steps (chapter 08 measures it). ``dequantize_model_nf4`` puts plain
linear layers back (transformers' ``model.dequantize()``), into which ``merge_and_unload`` merges exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import name_matches
from .counting import model_nbytes
from .layers import LoRALayer, LoRALinear
from .merge import _set_module, check_not_merged
from .quant import NF4Tensor, check_blocksize, dequantize_nf4, quantize_nf4
from .targets import output_head_names, short_names
from .utils import check_bool, check_int

__all__ = ["LinearNF4", "QuantizeReport", "nf4_plan", "quantize_model_nf4", "dequantize_model_nf4"]


class _NF4Matmul(torch.autograd.Function):
    """``x @ W^T`` that dequantizes W in forward and again in backward, saving no full weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "LinearNF4") -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize_weight(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.layer.dequantize_weight(grad.dtype), None


class LinearNF4(nn.Module):
    """A frozen linear layer whose weight is stored in NF4; the bias stays in fp32.

    ``forward`` computes in ``compute_dtype`` (default: the original weight's dtype) and returns
    the input's dtype. Build one with ``LinearNF4.from_linear(linear)``. ``LoRALinear`` wraps it
    (QLoRA) but refuses to merge into it. Do not cast it with ``.to(dtype)``: that would cast the
    fp32 block constants too; set ``compute_dtype`` instead."""

    is_quantized = True

    def __init__(self, weight: NF4Tensor, bias: Optional[torch.Tensor] = None,
                 compute_dtype: Optional[torch.dtype] = None):
        super().__init__()
        if not isinstance(weight, NF4Tensor) or len(weight.shape) != 2:
            raise ValueError("LinearNF4 needs a 2-D NF4Tensor weight (out_features, in_features).")
        self.out_features, self.in_features = weight.shape
        # The bias is registered first: LoRALinear takes its adapters' dtype from the first parameter.
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        for name in ("codes", "absmax", "absmax_scale", "absmax_mean"):
            self.register_buffer(f"weight_{name}", getattr(weight, name))
        self._meta = (weight.shape, weight.dtype, weight.blocksize, weight.dq_blocksize)
        self.compute_dtype = compute_dtype or weight.dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, blocksize: int = 64, double_quant: bool = True,
                    compute_dtype: Optional[torch.dtype] = None) -> "LinearNF4":
        """Quantize ``linear.weight`` to NF4 (double-quantized by default, as QLoRA)."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"from_linear takes an nn.Linear, got {type(linear).__name__}.")
        q = quantize_nf4(linear.weight, blocksize, double_quant)
        return cls(q, linear.bias, compute_dtype)

    @property
    def weight_nf4(self) -> NF4Tensor:
        """The stored weight as an NF4Tensor (views of this module's buffers)."""
        shape, dtype, bs, dq_bs = self._meta
        return NF4Tensor(self.weight_codes, self.weight_absmax, shape, dtype, bs,
                         self.weight_absmax_scale, self.weight_absmax_mean, dq_bs)

    def dequantize_weight(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The full weight (out, in), rebuilt from NF4, in ``dtype`` (default ``compute_dtype``)."""
        return dequantize_nf4(self.weight_nf4, dtype or self.compute_dtype)

    def to_linear(self, dtype: Optional[torch.dtype] = None) -> nn.Linear:
        """A plain ``nn.Linear`` holding the dequantized weight (and the bias) in ``dtype`` (default: the
        original weight's dtype), e.g. to merge LoRA into it."""
        dtype = dtype or self._meta[1]
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight_codes.device, dtype=dtype)
        with torch.no_grad():
            out.weight.copy_(self.dequantize_weight(dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"LinearNF4 needs a floating-point input, got {x.dtype}.")
        out = _NF4Matmul.apply(x.to(self.compute_dtype), self)
        if self.bias is not None:
            out = out + self.bias.to(self.compute_dtype)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        q = self.weight_nf4
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"blocksize={q.blocksize}, double_quant={q.double_quant}, compute_dtype={self.compute_dtype}")


@dataclass
class QuantizeReport:
    """What ``quantize_model_nf4`` did: layers replaced, layers left alone (and why), bytes."""

    replaced: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0

    def __str__(self) -> str:
        lines = [f"NF4: replaced {len(self.replaced)} linear layers; model {self.bytes_before / 1e6:,.2f} MB "
                 f"-> {self.bytes_after / 1e6:,.2f} MB ({self.bytes_before / max(self.bytes_after, 1):.2f}x smaller)"]
        lines += [f"  left in full precision: {n} ({why})" for n, why in self.skipped.items()]
        return "\n".join(lines)


def nf4_plan(model: nn.Module, skip: Sequence[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """``(replaced, skipped)``: the names of the linear layers ``quantize_model_nf4`` replaces, and
    ``{name: why}`` for those it leaves in full precision.

    Left alone: the output head(s) when ``skip`` is None, else the layers that ``skip`` names (each
    entry matches a full name or its last dotted parts, as in ``target_modules``; an entry that
    matches no linear layer is an error); weights tied to another parameter (SmolLM2's LM head
    shares the embedding); subclasses of nn.Linear; GPT-2's Conv1D; and, in a model with LoRA,
    linears that are still trainable (e.g. ``modules_to_save``). In a LoRA model the
    ``base_layer`` of each ``LoRALinear`` is replaced; the adapters' own ``lora_A``/``lora_B``
    are not base layers and are never considered."""
    if isinstance(skip, str):
        raise TypeError(f"skip must be a list of names, e.g. [{skip!r}], not a string.")
    if skip is not None and (not isinstance(skip, (list, tuple, set, frozenset))
                             or not all(isinstance(k, str) for k in skip)):
        raise TypeError(f"skip must be a list of layer names (strings) or None, got {skip!r}.")
    adapters = {f"{n}.{c}" for n, m in model.named_modules() if isinstance(m, LoRALayer) for c in m.adapter_layer_names}
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))
               and not any(n.startswith(a + ".") for a in adapters)]
    for key in skip or ():
        if not any(name_matches(n, [key]) for n, _ in linears):
            raise ValueError(f"skip entry {key!r} matched no linear layer; linear layers in this model: "
                             f"{short_names([n for n, _ in linears])}. An entry matches a full name or its last "
                             "dotted parts, as in target_modules.")
    heads = output_head_names(model) if skip is None else set()
    has_lora = bool(adapters)
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    replaced, skipped = [], {}
    for name, mod in linears:
        why = ("Conv1D is not quantized here" if isinstance(mod, Conv1D) else
               "an output head" if name in heads else
               "named in skip" if skip is not None and name_matches(name, list(skip)) else
               "a subclass of nn.Linear" if type(mod) is not nn.Linear else
               "weight tied to another parameter" if uses[id(mod.weight)] > 1 else
               "trainable in a LoRA model" if has_lora and mod.weight.requires_grad else None)
        if why:
            skipped[name] = why
        else:
            replaced.append(name)
    return replaced, skipped


def quantize_model_nf4(model: nn.Module, skip: Sequence[str] | None = None, blocksize: int = 64,
                       double_quant: bool = True, compute_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` of ``model`` that ``nf4_plan`` selects by a frozen
    ``LinearNF4`` (double-quantized by default, as QLoRA); return the model.

    What it did is kept on the model as ``model.nf4_report`` (a ``QuantizeReport``: the layers
    replaced, those left in full precision and why, the bytes before and after), as transformers
    keeps ``model.quantization_config`` on a model it quantized.

    All or nothing: the arguments and the model are checked first (``TypeError`` for a wrong type,
    ``ValueError`` for a wrong value: an odd ``blocksize``, a ``skip`` entry that matches no linear
    layer, a merged adapter, a DoRA adapter, whose magnitudes need the full-precision weight), then
    every layer is quantized, and only then are the layers swapped in. If quantizing one fails, the
    model is left as it was. Like every function of minilora that changes a model, it returns the model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}.")
    if isinstance(model, (nn.Linear, LoRALinear)):
        raise ValueError("model is itself a single layer; use LinearNF4.from_linear(layer) instead.")
    check_int(blocksize, "blocksize", minimum=2, hint="NF4 uses 64, as QLoRA.")
    check_blocksize(blocksize)
    check_bool(double_quant, "double_quant")
    if compute_dtype is not None and not (isinstance(compute_dtype, torch.dtype) and compute_dtype.is_floating_point):
        raise TypeError(f"compute_dtype must be a floating-point torch.dtype (e.g. torch.bfloat16) or None, got "
                        f"{compute_dtype!r}.")
    check_not_merged(model, "quantizing (which would make the merge permanent)")
    dora = sorted({n for m in model.modules() if isinstance(m, LoRALayer)
                   for n in getattr(m, "lora_magnitude_vector", {})})
    if dora:
        raise ValueError(f"adapters {dora} use DoRA, whose magnitudes are computed from the full-precision base "
                         "weight, which NF4 does not keep; QLoRA uses plain LoRA (use_dora=False).")
    replaced, skipped = nf4_plan(model, skip)
    report = QuantizeReport(replaced, skipped, bytes_before=model_nbytes(model))
    new = {}  # quantize every layer first: if one fails, nothing has been swapped yet
    for name in replaced:
        old = model.get_submodule(name)
        try:
            new[name] = LinearNF4.from_linear(old, blocksize, double_quant, compute_dtype).train(old.training)
        except (TypeError, ValueError) as e:
            raise type(e)(f"cannot quantize {name}: {e} The model was left as it was.") from None
    for name, layer in new.items():
        _set_module(model, name, layer)
    report.bytes_after = model_nbytes(model)
    model.nf4_report = report
    return model


def dequantize_model_nf4(model: nn.Module, dtype: Optional[torch.dtype] = None) -> nn.Module:
    r"""Replace, in place, every ``LinearNF4`` of ``model`` (a LoRA layer's ``base_layer`` too) by a frozen
    ``nn.Linear`` holding :math:`\mathrm{dequant}(W^{NF4})` in ``dtype`` (default: the weight's dtype before
    quantizing); return the model, without its ``nf4_report`` (transformers: ``model.dequantize()``).

    How to merge a QLoRA adapter: ``merge_and_unload(dequantize_model_nf4(model))`` computes
    :math:`\mathrm{dequant}(W^{NF4}) + sBA`, the weights the adapter was trained with; then ``.to(torch.bfloat16)``
    stores 16 bits, rounding once. To serve 4-bit weights instead, keep the adapter unmerged.

    Checked first, the model unchanged on refusal: ``TypeError`` for a model that is not an ``nn.Module`` or a
    ``dtype`` that is not a floating-point torch.dtype; ``ValueError`` for a model with no ``LinearNF4`` or one that
    is a single ``LinearNF4``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}.")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype (e.g. torch.float32) or None, got {dtype!r}.")
    if isinstance(model, LinearNF4):
        raise ValueError("model is itself a single LinearNF4 layer; use layer.to_linear(dtype) instead.")
    names = [n for n, m in model.named_modules() if isinstance(m, LinearNF4)]
    if not names:
        raise ValueError("this model has no LinearNF4 layer, so there is nothing to dequantize; "
                         "quantize_model_nf4(model) is what makes them.")
    new = {n: model.get_submodule(n).to_linear(dtype).requires_grad_(False) for n in names}  # all, then swap
    for name, layer in new.items():
        _set_module(model, name, layer.train(model.get_submodule(name).training))
    model.__dict__.pop("nf4_report", None)
    return model
