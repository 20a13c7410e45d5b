r"""``LoraVariant``: the one extension point of a LoRA layer.  (Chapters 02 and 09; the seam: ``minilora.layers``)

Every adapter of a ``LoRALayer`` has a variant, ``layer.lora_variant[name]`` (PEFT's attribute), and the
layer does nothing adapter-specific itself: it asks the variant. This base class *is* plain LoRA,

.. math::   h = W_0 x + b + s\,B A\,\text{dropout}(x), \qquad W \leftarrow W \pm s\,BA \text{ (merge, unmerge)},

written with the layer's own plain-LoRA primitives (``layer.reset_lora_parameters``,
``layer.plain_output``, ``layer.plain_delta_weight``), so that it serves linear layers and embeddings alike.
A variant overrides only what it changes: DoRA (``minilora.dora.DoraVariant``) the forward pass and
merging, PiSSA (``minilora.pissa.PissaVariant``) the initialisation. Variants combine as mixins
(``class PissaDoraVariant(DoraVariant, PissaVariant)``): each hook calls ``super()`` to add to what the
next class does, or does not, to replace it.

The hooks are methods of an instance, so a variant may carry settings (``ScaledVariant(k=2.0)``); what
it learns belongs in the layer's containers (modules that ``state_dict`` and ``.to()`` see), not in the
variant. This module imports nothing from minilora: ``layers``, ``dora`` and ``pissa`` all build on it.
"""
from __future__ import annotations

import torch

__all__ = ["LoraVariant"]


class LoraVariant:
    """Plain LoRA, and the base class of every variant (PEFT's ``LoraVariant``).

    The layer calls, for adapter ``adapter_name`` (every ``kwargs`` holds ``update_layer``'s arguments:
    ``r``, ``lora_alpha``, ``lora_dropout``, ``init_lora_weights``, ``use_rslora``, ``use_dora``):

    * ``check(layer, adapter_name, **kwargs)`` before ``update_layer`` changes anything: raise to refuse;
    * ``init(layer, adapter_name, **kwargs)`` once the adapter's hyper-parameters, dropout and freshly
      allocated A and B exist: initialise them (and create what else the variant trains);
    * ``forward(layer, adapter_name, x, result)``: ``result`` (the output so far) plus this adapter's part;
    * ``get_delta_weight(layer, adapter_name)``: the update in the base weight's layout;
    * ``merge(layer, adapter_name, weight)`` / ``unmerge(...)``: a *new* tensor, ``weight`` with the adapter
      folded in / taken out again; the layer writes it (after its NaN check with ``safe_merge``).
    """

    def check(self, layer, adapter_name: str, **kwargs) -> None:
        """Refuse, by raising, an adapter this variant cannot add to ``layer``. Plain LoRA fits any layer."""

    def init(self, layer, adapter_name: str, **kwargs) -> None:
        """Initialise A and B as ``kwargs["init_lora_weights"]`` says (True, "gaussian" or False)."""
        layer.reset_lora_parameters(adapter_name, kwargs.get("init_lora_weights", True))

    def forward(self, layer, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result + s B A dropout(x)``, the update cast to ``result``'s dtype before the sum."""
        return result + layer.plain_output(adapter_name, x).to(result.dtype)

    def get_delta_weight(self, layer, adapter_name: str) -> torch.Tensor:
        """``s B A``, in the base weight's layout (transposed for Conv1D and embeddings)."""
        return layer.plain_delta_weight(adapter_name)

    def merge(self, layer, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        """``weight + get_delta_weight`` (a new tensor, in ``weight``'s dtype)."""
        return weight + self.get_delta_weight(layer, adapter_name).to(weight.dtype)

    def unmerge(self, layer, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        """``weight - get_delta_weight``: the inverse of ``merge`` (up to rounding)."""
        return weight - self.get_delta_weight(layer, adapter_name).to(weight.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
