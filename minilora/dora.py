r"""DoRA: a LoRA update split into a magnitude and a direction.  (Chapter 09)

DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", section 4.1) writes the adapted
weight of a linear layer as a magnitude times a unit direction, row by row (one row per output
feature, in PEFT's (out, in) layout):

.. math::   W' = m \odot \frac{W_0 + sBA}{\lVert W_0 + sBA \rVert_c}, \qquad m \in \mathbb{R}^{d_{out}},

with :math:`s` the LoRA scaling and :math:`\lVert\cdot\rVert_c` the norm of each row. LoRA trains the
direction (B, A) and DoRA adds the magnitude :math:`m` (``d_out`` numbers per layer, so an adapter has
:math:`r (d_{in} + d_{out}) + d_{out}`). :math:`m` starts at :math:`\lVert W_0 + sBA \rVert_c`, which
is :math:`\lVert W_0 \rVert_c` when B = 0, so the layer starts as the base layer.

Section 4.3: the norm is treated as a constant in the backward pass ("detached"), which saves memory
and, the paper reports, costs no accuracy. As PEFT's ``DoraLinearLayer``, the output is computed
without forming :math:`W'`: with :math:`g = m / \lVert W_0 + sBA \rVert_c` (detached) and ``base``
the base layer's output :math:`W_0 x + b`,

.. math::   W' x + b = \text{base} + (g - 1) \odot (\text{base} - b) + g \odot s B A x .

With dropout while training, the LoRA path sees dropout(x), and :math:`W_0\,\text{dropout}(x)` is
computed again for the first term, as in PEFT. With several active adapters (stacking), a DoRA
adapter rescales the output summed so far (base and earlier adapters), as PEFT does; merging agrees.

Merging writes :math:`W \leftarrow g \odot (W + sBA)`, with the norm taken on the base weight without
any merged adapter. The norm cannot be recomputed from the merged weight, so it is kept (as PEFT
caches it) and unmerging is :math:`W \leftarrow W / g - sBA`.

In a ``LoRALinear`` the magnitude of adapter ``name`` is ``lora_magnitude_vector[name].weight`` (out,),
PEFT's name and layout; adapter files hold it under ``<layer>.lora_magnitude_vector``. DoRA reaches the
layer only through its extension point (``minilora.layers``): ``DoraVariant`` is the variant of every
adapter added with ``use_dora=True``, and overrides ``check``, ``init``, ``forward``, ``merge`` and ``unmerge``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .variants import LoraVariant

__all__ = ["DoraVariant", "DoraLinearLayer", "refuse_dora"]


def _t(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    """(out, in) from a weight stored (in, out) (GPT-2's Conv1D), and back: PEFT's ``transpose``."""
    return weight.T if fan_in_fan_out else weight


def refuse_dora(base_layer: nn.Module, name: str = "this layer") -> None:
    """Raise a clear error for a base layer minilora's DoRA does not handle."""
    if getattr(base_layer, "is_quantized", False):
        raise ValueError(f"use_dora=True on {name}, a quantized (NF4) base: minilora's DoRA needs the full-precision "
                         "weight for its row norms. Use use_dora=False (QLoRA), or dequantize the base first "
                         "(minilora.qlora.dequantize_model_nf4(model), chapter 08).")
    if isinstance(base_layer, nn.Embedding):
        raise ValueError(f"use_dora=True on {name}, an embedding: minilora implements DoRA for linear layers only "
                         "(PEFT has it for embeddings too). Leave embeddings out of target_modules (or "
                         "exclude_modules=[...]), pass use_dora=False for them, or use PEFT.")


class DoraLinearLayer(nn.Module):
    """The magnitude of one DoRA adapter: ``weight`` is m (out,). PEFT's ``DoraLinearLayer``."""

    def __init__(self, fan_in_fan_out: bool) -> None:
        super().__init__()
        self.fan_in_fan_out = fan_in_fan_out
        self.merged_weight_norm: torch.Tensor | None = None  # kept by DoraVariant.merge for unmerge; not saved

    def get_weight_norm(self, weight: torch.Tensor, lora_weight: torch.Tensor, scaling: float) -> torch.Tensor:
        r""":math:`\lVert W + s\,\text{lora\_weight} \rVert_c` (out,): ``weight`` in the base layer's layout,
        ``lora_weight`` (out, in)."""
        weight = _t(weight, self.fan_in_fan_out) + scaling * lora_weight  # (out, in)
        return torch.linalg.norm(weight, dim=1).to(weight.dtype)  # (out,)

    def update_layer(self, *, base_layer: nn.Module, lora_A: torch.Tensor, lora_B: torch.Tensor,
                     scaling: float) -> None:
        r"""Create m = :math:`\lVert W_0 + sBA \rVert_c` from the adapter's initial A (r, in) and B (out, r)."""
        with torch.no_grad():
            norm = self.get_weight_norm(base_layer.weight.to(lora_A.device), lora_B @ lora_A, scaling)
        self.weight = nn.Parameter(norm, requires_grad=True)  # (out,)

    def forward(self, x: torch.Tensor, *, lora_A: nn.Module, lora_B: nn.Module, scaling: float,
                base_layer: nn.Module, base_result: torch.Tensor | None = None) -> torch.Tensor:
        """What DoRA adds to the output: ``(g - 1) * (base_result - bias) + g * s * B A x``. Without
        ``base_result`` (dropout in training), ``W_0 x`` is computed from ``x``."""
        lora_weight = (lora_B.weight @ lora_A.weight).to(x.dtype)  # (out, in)
        weight = base_layer.weight.to(x.dtype)
        weight_norm = self.get_weight_norm(weight, lora_weight.detach(), scaling).detach()  # section 4.3
        mag_norm_scale = (self.weight / weight_norm).view(1, -1)  # g, (1, out)
        lora_result = lora_B(lora_A(x))  # (..., out)
        if base_result is not None:
            if base_layer.bias is not None:
                base_result = base_result - base_layer.bias
        else:
            base_result = F.linear(x, _t(weight, self.fan_in_fan_out))
        return (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling


class DoraVariant(LoraVariant):
    """DoRA through the layer's extension point (PEFT's ``DoraLinearVariant``): the magnitude is made by
    ``init`` after A and B are drawn, and ``forward``, ``merge`` and ``unmerge`` apply it. The update,
    ``get_delta_weight``, stays plain LoRA's :math:`sBA`, which merging rescales. Linear layers only."""

    def check(self, layer, adapter_name: str, **kwargs) -> None:
        refuse_dora(layer.base_layer)
        super().check(layer, adapter_name, **kwargs)

    def init(self, layer, adapter_name: str, **kwargs) -> None:
        """A and B first (plain LoRA's draw, or PiSSA's in ``PissaDoraVariant``), then m = ||W_0 + sBA||
        row-wise from them, as PEFT."""
        super().init(layer, adapter_name, **kwargs)
        magnitude = DoraLinearLayer(layer.fan_in_fan_out)
        magnitude.update_layer(base_layer=layer.base_layer, lora_A=layer.lora_A[adapter_name].weight,
                               lora_B=layer.lora_B[adapter_name].weight, scaling=layer.scaling[adapter_name])
        layer.lora_magnitude_vector[adapter_name] = magnitude

    def forward(self, layer, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result`` plus the DoRA output of the adapter: dropout, when it acts, changes the input of
        both terms."""
        x = x.to(layer.lora_A[adapter_name].weight.dtype)
        dropout = layer.lora_dropout[adapter_name]
        if isinstance(dropout, nn.Identity) or not layer.training:
            base_result = result
        else:
            x, base_result = dropout(x), None
        return result + layer.lora_magnitude_vector[adapter_name](
            x, lora_A=layer.lora_A[adapter_name], lora_B=layer.lora_B[adapter_name],
            scaling=layer.scaling[adapter_name], base_layer=layer.base_layer, base_result=base_result)

    def merge(self, layer, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        r""":math:`g \odot (W + \Delta)`, in the layout of ``weight``, with the norm taken on the weight
        without any merged adapter and kept for ``unmerge``."""
        magnitude, fan = layer.lora_magnitude_vector[adapter_name], layer.fan_in_fan_out
        base = layer.unmerged_weight(weight)
        delta = self.get_delta_weight(layer, adapter_name).to(weight.dtype)  # sBA, in the layout of weight
        weight_norm = magnitude.get_weight_norm(base, _t(delta, fan), scaling=1).detach()  # (out,)
        magnitude.merged_weight_norm = weight_norm
        factor = _t((magnitude.weight / weight_norm).view(-1, 1), fan)  # (out, 1), or (1, out) for Conv1D
        return (factor * (weight + delta)).to(weight.dtype)

    def unmerge(self, layer, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        r""":math:`W / g - \Delta`, with the norm ``merge`` kept: exactly the weight before the merge (up to
        rounding)."""
        magnitude = layer.lora_magnitude_vector[adapter_name]
        if magnitude.merged_weight_norm is None:
            raise ValueError(f"DoRA adapter {adapter_name!r} was not merged by its variant, so the weight norm to "
                             "divide by is unknown; merge() it before unmerge().")
        delta = self.get_delta_weight(layer, adapter_name).to(weight.dtype)
        factor = _t((magnitude.weight / magnitude.merged_weight_norm).view(-1, 1), layer.fan_in_fan_out)
        return (weight / factor - delta).to(weight.dtype)
